"""Run a .tflite model with LiteRT and read back any tensor, dequantized to float32."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from quantdoctor.backends.base import Batch, TensorSpec, as_inputs
from quantdoctor.backends.tflite.extract import to_tensor_dtype
from quantdoctor.backends.tflite.graph import Graph, graph_from_interpreter
from quantdoctor.backends.tflite.subgraph import OpRunner, Splice, dequantize
from quantdoctor.errors import DataError, ModelLoadError


def read_tflite(path: str | Path) -> bytes:
    """The bytes of a .tflite file, checked for the TFLite flatbuffer identifier."""
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"quantized model {p} does not exist; give the path of a .tflite file")
    data = p.read_bytes()
    if data[4:8] != b"TFL3":
        raise ModelLoadError(f"{p} is not a TFLite flatbuffer (no TFL3 identifier); give a .tflite file")
    try:  # the identifier is in the first bytes: a truncated file still has it
        from quantdoctor.backends.tflite.loader import load_interpreter

        load_interpreter(data, what=str(p))
    except ModelLoadError as exc:
        raise ModelLoadError(f"{exc}; the file is truncated or damaged: export the .tflite again") from None
    return data


def _to_input(x: np.ndarray, detail: dict) -> np.ndarray:
    """A float batch as the input tensor stores it (quantized with its parameters when integer)."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype, copy=False)
    scale, zp = detail["quantization"]
    return to_tensor_dtype(x, dtype, np.array([scale]), np.array([zp]))


class TfliteRunner:
    """A LiteRT interpreter that keeps every intermediate tensor readable.

    XNNPACK is disabled on purpose: delegated ops hide their outputs (they show up as one DELEGATE op), and the builtin
    kernels are the ones whose numerics the quantization parameters describe.

    Args:
        model: .tflite bytes.
        batch_size: batches are padded to this size so the interpreter is allocated once.
    """

    def __init__(self, model: bytes, batch_size: int = 16, num_threads: int | None = None) -> None:
        self.model = bytes(model)
        self.batch_size = batch_size
        self._threads = num_threads
        self._loaded = self._load()
        self.graph: Graph = graph_from_interpreter(self._interp)
        self._op_runner: OpRunner | None = None
        # Inputs and outputs in the order of the graph (the model's signature order), not the interpreter's listing.
        by_index = {d["index"]: d for d in self._interp.get_input_details()}
        self._ins = [by_index[t] for t in self.graph.inputs if t in by_index] or list(by_index.values())
        self._in = self._ins[0]
        self._out = self._interp.get_output_details()

    def _load(self):
        from quantdoctor.backends.tflite.loader import load_interpreter

        interp = load_interpreter(self.model, preserve_all_tensors=True, num_threads=self._threads)
        try:
            for detail in interp.get_input_details():
                shape = list(detail["shape"])
                if shape and shape[0] != self.batch_size:
                    shape[0] = self.batch_size
                    interp.resize_tensor_input(detail["index"], shape, strict=False)
            interp.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"LiteRT cannot load the model: {first}") from None
        return interp

    @property
    def _interp(self):
        """The interpreter, made again after `release`."""
        if self._loaded is None:
            self._loaded = self._load()
        return self._loaded

    def release(self) -> None:
        """Drop the interpreter and its buffers (every tensor of a batch, kept readable); the next run makes it again."""
        self._loaded = None

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(d["name"], tuple(int(s) for s in d["shape"][1:]), np.dtype(d["dtype"]).name) for d in self._ins]

    def outputs(self) -> list[TensorSpec]:
        return [TensorSpec(d["name"], tuple(int(s) for s in d["shape"][1:]), np.dtype(d["dtype"]).name) for d in self._out]

    def _invoke(self, batch: Batch) -> int:
        arrays = as_inputs(batch)
        if len(arrays) != len(self._ins):
            raise DataError(f"the model has {len(self._ins)} inputs but the batch holds {len(arrays)} array(s); "
                            "give one array per input")
        n = arrays[0].shape[0]
        if n > self.batch_size:
            raise ValueError(f"batch of {n} exceeds the runner's batch size {self.batch_size}")
        for detail, x in zip(self._ins, arrays):
            if n < self.batch_size:
                x = np.concatenate([x, np.zeros((self.batch_size - n,) + x.shape[1:], dtype=x.dtype)])
            self._interp.set_tensor(detail["index"], _to_input(x, detail))
        self._interp.invoke()
        return n

    def dequantized(self, index: int, n: int, copy: bool = True) -> np.ndarray:
        """The float32 value of one tensor from the last invoke (first n samples along a batch axis).

        With copy=False a float tensor comes back as a view of the interpreter's buffer (no copy: a real model's
        activations are hundreds of MB a batch). LiteRT refuses to invoke while such a view is alive, so the caller must
        drop it before the next run.
        """
        value = self._interp.get_tensor(index) if copy else self._interp.tensor(index)()
        if value.ndim and value.shape[0] == self.batch_size and not self.graph.tensors[index].is_constant:
            value = value[:n]
        qp = self.graph.tensors[index].quant
        if qp is None or value.dtype.kind == "f":
            return value.astype(np.float32, copy=False)
        return dequantize(value, np.asarray(qp.scales), np.asarray(qp.zero_points), qp.axis or 0)

    def run(self, batch: Batch) -> np.ndarray:
        n = self._invoke(batch)
        return self.dequantized(self.graph.outputs[0], n)

    def run_all(self, batch: Batch) -> list[np.ndarray]:
        n = self._invoke(batch)
        return [self.dequantized(t, n) for t in self.graph.outputs]

    def capture(self, batch: Batch, names: Sequence[int], copy: bool = True) -> dict[int, np.ndarray]:
        """Run a batch and return the float32 values of the given tensors (see `dequantized` for `copy`)."""
        n = self._invoke(batch)
        return {i: self.dequantized(i, n, copy) for i in names}

    def splice(self, replaced: Sequence[int]) -> Splice:
        """This model run with ops `replaced` computed by the caller (see `Splice`)."""
        return Splice(self.model, self.graph, replaced)

    def op_runner(self, constants: dict[int, dict[int, np.ndarray]] | None = None) -> OpRunner:
        """Single ops of this model, each cut out and run alone (built on first use, kept); with `constants` (op →
        tensor → float32 array) a separate runner whose cuts carry those constants instead."""
        if constants is not None:
            return OpRunner(self.model, constants=constants)
        if self._op_runner is None:
            self._op_runner = OpRunner(self.model)
        return self._op_runner

    def constant(self, index: int) -> np.ndarray:
        """A constant tensor as stored (integers stay integers)."""
        return np.asarray(self._interp.get_tensor(index))
