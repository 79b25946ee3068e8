"""Run cuts of a .tflite model on inputs fed from outside: one op alone, or the model with some ops' outputs replaced.

Both are extracts (`extract.py`) loaded in LiteRT with the builtin kernels: the ops keep their kernels, parameters and
constants. A float value fed into an integer tensor is quantized with that tensor's scale and zero point, as the model
would have stored it; integer outputs come back dequantized. Tensor and op indices are the source model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from quantdoctor.backends.base import Graph
from quantdoctor.backends.splice import OpRunnerBase, SpliceBase
from quantdoctor.backends.tflite.extract import ExtractedIO, extract_isolated, extract_ops, plan, to_tensor_dtype
from quantdoctor.backends.tflite.loader import load_interpreter
from quantdoctor.errors import DataError


class Subgraph:
    """Ops of a model cut out and loaded on their own (`SubgraphRunner` of `backends/base.py`).

    The interpreter is re-allocated only when the input shapes change (a new batch size).

    Args:
        model: the source .tflite bytes.
        ops: source op indices to keep (weight-unpacking DEQUANTIZE ops that feed them are added).
        constants: float32 constants to replace (source tensor index → array), see `extract_ops`.
        outputs: source tensors to return; default as `plan` chooses.
    """

    def __init__(
        self,
        model: bytes,
        ops: Sequence[int],
        *,
        constants: dict[int, np.ndarray] | None = None,
        outputs: Sequence[int] | None = None,
        num_threads: int | None = None,
    ) -> None:
        data = bytes(model)
        io: ExtractedIO = plan(data, ops, outputs)
        self.ops, self.inputs, self.outputs = io.ops, io.inputs, io.outputs
        what = f"op {io.ops[0]} on its own" if len(io.ops) == 1 else f"a cut of {len(io.ops)} ops"
        self._load(extract_ops(data, ops, constants, outputs), num_threads, what)

    def _load(self, extract: bytes, num_threads: int | None, what: str) -> None:
        self.interp = load_interpreter(extract, num_threads=num_threads, what=what)
        self._in = self.interp.get_input_details()
        self._shapes: list[tuple[int, ...]] = []

    def _invoke(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(arrays) != len(self._in):
            raise DataError(f"the cut reads {len(self._in)} activation tensor(s); {len(arrays)} array(s) were given")
        shapes = [tuple(a.shape) for a in arrays]
        if shapes != self._shapes:
            for detail, shape in zip(self._in, shapes, strict=True):
                self.interp.resize_tensor_input(detail["index"], list(shape), strict=False)
            self.interp.allocate_tensors()
            self._shapes = shapes
        for detail, array in zip(self._in, arrays, strict=True):
            self.interp.set_tensor(detail["index"], array)
        self.interp.invoke()
        return [self.interp.get_tensor(d["index"]) for d in self.interp.get_output_details()]

    def run_raw(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Outputs as the kernels write them (integers stay integers); inputs are cast, not quantized."""
        feed = [np.asarray(a).astype(d["dtype"], copy=False) for a, d in zip(arrays, self._in, strict=False)]
        return [o.copy() for o in self._invoke(feed)]

    def run(self, float_inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Float32 outputs for float inputs (quantized into integer input tensors; integer outputs dequantized)."""
        feed = [to_detail_dtype(np.asarray(a), d) for a, d in zip(float_inputs, self._in, strict=False)]
        outs = self._invoke(feed)
        return [dequantize_detail(v, d) for v, d in zip(outs, self.interp.get_output_details(), strict=True)]


class IsolatedOps(Subgraph):
    """Ops of a model side by side in one interpreter, each on inputs of its own (`extract.extract_isolated`).

    One invoke computes what each op's own cut computes, without an interpreter per op. Inputs and outputs are float
    as in `Subgraph.run` (which takes every op's inputs, concatenated in `ops` order).

    Args:
        model: the source .tflite bytes.
        ops: source op indices.
        constants: per op index, float32 constants to replace (source tensor index → array).
    """

    def __init__(self, model: bytes, ops: Sequence[int], *, constants: dict[int, dict[int, np.ndarray]] | None = None,
                 num_threads: int | None = None) -> None:
        self.ops = tuple(int(o) for o in ops)
        data, ios = extract_isolated(bytes(model), self.ops, constants)
        self.io = dict(zip(self.ops, ios))
        self.inputs = tuple(t for io in ios for t in io.inputs)
        self.outputs = tuple(t for io in ios for t in io.outputs)
        self._load(data, num_threads, f"{len(self.ops)} ops side by side")
        self._out = self.interp.get_output_details()

    def run_each(self, float_inputs: dict[int, Sequence[np.ndarray]]) -> dict[int, list[np.ndarray]]:
        """Each op's float32 outputs for its float inputs (`float_inputs[op]`, in the order of its `io[op].inputs`).

        Raises:
            DataError: an op of the group is missing or gets the wrong number of inputs.
        """
        arrays = []
        for op in self.ops:
            given = float_inputs.get(op)
            if given is None or len(given) != len(self.io[op].inputs):
                raise DataError(f"op {op} reads {len(self.io[op].inputs)} activation tensor(s); "
                                f"{0 if given is None else len(given)} array(s) were given")
            arrays += given
        outs = self.run(arrays)
        result, k = {}, 0
        for op in self.ops:
            n = len(self.io[op].outputs)
            result[op], k = outs[k : k + n], k + n
        return result


class OpRunner(OpRunnerBase):
    """Single ops of a .tflite model, each cut out with its weight DEQUANTIZE ops and run alone (`OpRunnerBase`)."""

    def isolated(self, ops: Sequence[int]) -> IsolatedOps:
        """`ops` in one interpreter, each alone (with this runner's constants); not kept: the caller owns it."""
        return IsolatedOps(self.model, ops, constants={o: self.constants[o] for o in ops if o in self.constants},
                           num_threads=self._threads)

    def _plan(self, op_index: int) -> ExtractedIO:
        return plan(self.model, [op_index])

    def _cut_op(self, op_index: int) -> Subgraph:
        return Subgraph(self.model, [op_index], constants=self.constants.get(op_index), num_threads=self._threads)


class Splice(SpliceBase):
    """A .tflite model run in segments with the ops in `replaced` computed by the caller (see `SpliceBase`)."""

    def __init__(self, model: bytes, graph: Graph, replaced: Sequence[int], num_threads: int | None = None) -> None:
        self._data, self._threads = bytes(model), num_threads
        super().__init__(graph, replaced)

    def _cut(self, ops: list[int], outputs: list[int]) -> Subgraph:
        return Subgraph(self._data, ops, outputs=outputs, num_threads=self._threads)

    def _op_inputs(self, op: int) -> tuple[int, ...]:
        return plan(self._data, [op]).inputs

    def _on_grid(self, t: int, value: np.ndarray) -> np.ndarray:
        info = self.graph.tensors[t]
        q = info.quant
        if q is None or info.dtype not in ("int8", "uint8", "int16"):
            return np.asarray(value, dtype=np.float32)
        scales, zps = np.asarray(q.scales), np.asarray(q.zero_points)
        stored = to_tensor_dtype(np.asarray(value, dtype=np.float32), np.dtype(info.dtype), scales, zps, q.axis or 0)
        return dequantize(stored, scales, zps, q.axis or 0)


def _detail_params(detail: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, int]:
    qp = detail.get("quantization_parameters") or {}
    scales = np.asarray(qp.get("scales", ()), dtype=np.float64)
    zps = np.asarray(qp.get("zero_points", ()), dtype=np.int64)
    return scales, zps, int(qp.get("quantized_dimension", 0))


def to_detail_dtype(array: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """`array` as the interpreter tensor `detail` stores it (float quantized into integer tensors)."""
    scales, zps, axis = _detail_params(detail)
    return to_tensor_dtype(array, np.dtype(detail["dtype"]), scales, zps, axis)


def dequantize_detail(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """A tensor read from the interpreter, as float32 (a copy: the interpreter reuses its buffers)."""
    scales, zps, axis = _detail_params(detail)
    return dequantize(value, scales, zps, axis)


def dequantize(value: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, axis: int = 0) -> np.ndarray:
    """(q − zero_point) × scale as float32, per channel along `axis` when there are several scales."""
    if value.dtype.kind == "f" or scales.size == 0:
        return value.astype(np.float32)
    s = np.asarray(scales, dtype=np.float32)
    z = np.asarray(zero_points, dtype=np.float32) if np.size(zero_points) else np.zeros_like(s)
    if s.size > 1:
        shape = [1] * value.ndim
        shape[axis] = s.size
        s, z = s.reshape(shape), z.reshape(shape)
    out = value.astype(np.float32)
    if out.ndim < z.ndim:  # a scalar: broadcasting gives it the parameters' shape, which in place cannot
        return (out - z) * s
    out -= z  # in place: the same float32 arithmetic as (q - z) * s, without two more full-size temporaries
    out *= s
    return out
