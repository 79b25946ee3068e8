"""Each quantized op's own error: run the op alone, cut out of the quantized model, on the float model's activations.

The layer-by-layer comparison measures accumulated error: what reaches an op already carries every earlier op's error.
Feeding one op the float model's input activation instead, and comparing its output with the float model's output
activation, leaves only what that op adds. This works for every kind of model, including dynamic-range (hybrid) ones
that tf.lite.experimental.QuantizationDebugger cannot take, because the op runs with its real kernel and parameters.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np

from quantdoctor.backends.tflite.extract import ExtractedIO, extract_op, plan, to_tensor_dtype
from quantdoctor.errors import DataError, ModelLoadError


class _OpInterpreter:
    """One extracted op loaded in LiteRT, re-allocated only when the input shapes change."""

    def __init__(self, model: bytes, num_threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter, OpResolverType

        self.interp = Interpreter(
            model_content=model,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            num_threads=num_threads,
        )
        self.inputs = self.interp.get_input_details()
        self.shapes: list[tuple[int, ...]] = []

    def invoke(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        shapes = [tuple(a.shape) for a in arrays]
        if shapes != self.shapes:
            for detail, shape in zip(self.inputs, shapes, strict=True):
                self.interp.resize_tensor_input(detail["index"], list(shape), strict=False)
            self.interp.allocate_tensors()
            self.shapes = shapes
        for detail, array in zip(self.inputs, arrays, strict=True):
            self.interp.set_tensor(detail["index"], array)
        self.interp.invoke()
        return [self.interp.get_tensor(d["index"]) for d in self.interp.get_output_details()]

    def output_details(self) -> list[dict[str, Any]]:
        return self.interp.get_output_details()


class IsolatedRunner:
    """Runs single ops of a quantized .tflite on inputs taken from elsewhere.

    One interpreter per op is built on first use and kept. Op and tensor indices are those of the quantized model's
    primary subgraph, as `TfliteRunner.graph` reports them.

    Args:
        quant_model: the quantized .tflite bytes.
        num_threads: threads per op interpreter; default all cores.
        constants: per op index, float32 constants of the source model to replace in that op's extract (tensor index
            → array), e.g. a float model's weights swapped for a quantized model's dequantized ones.
    """

    def __init__(
        self,
        quant_model: bytes,
        num_threads: int | None = None,
        constants: dict[int, dict[int, np.ndarray]] | None = None,
    ) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        self.model = bytes(quant_model)
        self.constants = constants or {}
        self._threads = num_threads or os.cpu_count() or 1
        self._ops: dict[int, _OpInterpreter] = {}
        self._io: dict[int, ExtractedIO] = {}

    def io(self, op_index: int) -> ExtractedIO:
        """The source tensors op `op_index` reads (the order `run` wants its inputs in) and writes."""
        if op_index not in self._io:
            self._io[op_index] = plan(self.model, [op_index])
        return self._io[op_index]

    def _op(self, op_index: int) -> _OpInterpreter:
        if op_index not in self._ops:
            extracted = extract_op(self.model, op_index, self.constants.get(op_index))
            try:
                self._ops[op_index] = _OpInterpreter(extracted, self._threads)
            except (ValueError, RuntimeError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ModelLoadError(f"LiteRT cannot load op {op_index} on its own: {first}") from None
        return self._ops[op_index]

    def run_raw(self, op_index: int, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Outputs of op `op_index` as the kernel writes them (integers stay integers), inputs cast as given."""
        op = self._op(op_index)
        self._check_count(op_index, arrays)
        feed = [np.asarray(a).astype(d["dtype"], copy=False) for a, d in zip(arrays, op.inputs, strict=True)]
        return [o.copy() for o in op.invoke(feed)]

    def run_outputs(self, op_index: int, float_inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """All float32 outputs of op `op_index` fed with float inputs.

        A float input going into an int8/int16 tensor is quantized with that tensor's scale and zero point (round to
        nearest, saturate), as the quantized model would have stored it; float tensors (hybrid and float ops) get the
        values as they are. Integer outputs are dequantized.

        Raises:
            DataError: the number of inputs is not the number the op reads.
        """
        op = self._op(op_index)
        self._check_count(op_index, float_inputs)
        feed = [_to_input(np.asarray(a), d) for a, d in zip(float_inputs, op.inputs, strict=True)]
        return [_dequantize(v, d) for v, d in zip(op.invoke(feed), op.output_details(), strict=True)]

    def run(self, op_index: int, float_inputs: Sequence[np.ndarray]) -> np.ndarray:
        """The first float32 output of op `op_index` fed with float inputs (see `run_outputs`)."""
        return self.run_outputs(op_index, float_inputs)[0]

    def _check_count(self, op_index: int, arrays: Sequence[np.ndarray]) -> None:
        want = len(self.io(op_index).inputs)
        if len(arrays) != want:
            raise DataError(f"op {op_index} reads {want} activation tensor(s); {len(arrays)} array(s) were given")


def _qparams(detail: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, int]:
    qp = detail.get("quantization_parameters") or {}
    scales = np.asarray(qp.get("scales", ()), dtype=np.float64)
    zps = np.asarray(qp.get("zero_points", ()), dtype=np.int64)
    return scales, zps, int(qp.get("quantized_dimension", 0))


def _to_input(array: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scales, zps, axis = _qparams(detail)
    return to_tensor_dtype(array, np.dtype(detail["dtype"]), scales, zps, axis)


def _dequantize(value: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scales, zps, axis = _qparams(detail)
    if value.dtype.kind == "f" or scales.size == 0:
        return value.astype(np.float32)  # a copy: the interpreter reuses its buffers on the next invoke
    s, z = scales.astype(np.float32), zps.astype(np.float32)
    if s.size > 1:
        shape = [1] * value.ndim
        shape[axis] = s.size
        s, z = s.reshape(shape), z.reshape(shape)
    return (value.astype(np.float32) - z) * s
