"""Evaluate a candidate quantized model with the real runtime against the float model's outputs.

The float outputs are computed once; every evaluation is one quantized pass over a set of samples (the ranking subset
or the whole evaluation set), counted, timed and turned into the budget metric. The runtime's runner from
`backends.runtimes.RUNTIMES` runs the model: for ONNX the `OnnxRunner` (ONNX Runtime, graph optimizations off, as in
`diagnose`); for TFLite a lean interpreter with the builtin LiteRT kernels, as in `diagnose` (XNNPACK would hide the
kernels whose numerics the diagnosis measured), that keeps no intermediate tensor (the runtime's `TfliteRunner` keeps
them all for capture, which a whole-model pass does not need).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from quantdoctor.errors import DataError, UserInputError
from quantdoctor.registry import Registry
from quantdoctor.stats.classification import ClassificationAccumulator, ModelMetrics, require_class_scores


@dataclass(frozen=True)
class Metric:
    """A budget metric: its float and quantized values (fractions) from `ModelMetrics`; the drop is in points."""

    name: str
    summary: str
    needs_labels: bool
    values: Callable[[ModelMetrics], tuple[float, float]]


METRICS: Registry[Metric] = Registry("repair metric")
for _m in (
    Metric("agreement", "top-1 agreement with the float model (float = 100 %)", False, lambda m: (1.0, m.top1_agreement)),
    Metric("top1", "top-1 accuracy on the labels", True, lambda m: (m.float_top1, m.quant_top1)),
    Metric("topk", "top-k accuracy on the labels", True, lambda m: (m.float_topk, m.quant_topk)),
):
    METRICS.add(_m.name, _m)
del _m


@dataclass(frozen=True)
class Evaluation:
    """One quantized pass: the metric (fraction), its drop against float in points, and what it cost."""

    value: float
    drop: float  # points: 100 × (float − quantized)
    samples: int
    seconds: float
    latency_ms: float  # wall time per sample of the quantized pass (builtin kernels, batches of `batch_size`)
    metrics: ModelMetrics


class _Interp:
    """A lean LiteRT interpreter for whole-model passes (no intermediate tensors kept)."""

    def __init__(self, model: bytes, batch_size: int) -> None:
        from quantdoctor.backends.tflite.loader import load_interpreter

        self.interp = load_interpreter(model, what="the candidate model")
        self.inp = self.interp.get_input_details()[0]
        shape = list(self.inp["shape"])
        shape[0] = batch_size
        self.interp.resize_tensor_input(self.inp["index"], shape, strict=False)
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]
        self.out = self.interp.get_output_details()[0]
        self.batch_size = batch_size
        self.output_shape = tuple(int(d) for d in self.out["shape"][1:])  # per sample

    def run(self, x: np.ndarray) -> np.ndarray:
        from quantdoctor.backends.tflite.extract import to_tensor_dtype

        n = len(x)
        if n < self.batch_size:
            x = np.concatenate([x, np.zeros((self.batch_size - n,) + x.shape[1:], x.dtype)])
        dtype = np.dtype(self.inp["dtype"])
        if dtype.kind != "f":
            scale, zp = self.inp["quantization"]
            x = to_tensor_dtype(x, dtype, np.array([scale]), np.array([zp]))
        self.interp.set_tensor(self.inp["index"], x.astype(dtype, copy=False))
        self.interp.invoke()
        y = self.interp.get_tensor(self.out["index"])[:n].astype(np.float32)
        if np.dtype(self.out["dtype"]).kind != "f":
            scale, zp = self.out["quantization"]
            y = (y - zp) * scale
        return y.reshape(n, -1)


class _Whole:
    """A runtime's runner (`RUNTIMES`) for whole-model passes: the first output, one row per sample."""

    def __init__(self, runtime: str, model: bytes, batch_size: int) -> None:
        from quantdoctor.backends.runtimes import RUNTIMES

        self.runner = RUNTIMES.get(runtime).runner(model, batch_size)
        self.output_shape = tuple(self.runner.outputs()[0].shape)  # per sample

    def run(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.runner.run(x), np.float32).reshape(len(x), -1)


def runner_for(runtime: str, model: bytes, batch_size: int):
    """What runs a whole candidate model: the lean LiteRT interpreter for TFLite, else the runtime's runner."""
    return _Interp(model, batch_size) if runtime == "tflite" else _Whole(runtime, model, batch_size)


class Evaluator:
    """Counts and runs quantized passes against cached float outputs.

    Args:
        float_model: the float model reference (.tflite or, with runtime "onnx", .onnx bytes).
        dataset: the evaluation set (a `quantdoctor.data.Dataset`).
        metric: a name in `METRICS`.
        rank_size: samples in the ranking subset (the first ones of the evaluation set).
        runtime: a name in `backends.runtimes.RUNTIMES`.
    """

    def __init__(self, float_model: bytes, dataset, metric: str = "agreement", *, batch_size: int = 16,
                 top_k: int = 3, rank_size: int = 32, runtime: str = "tflite") -> None:
        self.metric = METRICS.get(metric)
        if self.metric.needs_labels and (dataset.labels is None or not (dataset.labels >= 0).any()):
            raise UserInputError(f"metric '{metric}' needs labelled data; give labels or use --metric agreement")
        if len(dataset) == 0:
            raise DataError("no samples to evaluate on; give more data or a smaller --calib-count")
        self.dataset, self.batch_size, self.top_k, self.runtime = dataset, batch_size, top_k, runtime
        runner = runner_for(runtime, float_model, batch_size)
        require_class_scores(runner.output_shape, "the float model")
        self.x_batches = [(x, idx) for x, idx in dataset.batches(batch_size)]  # preprocessed once, reused every pass
        self.float_out = np.concatenate([runner.run(x) for x, _ in self.x_batches])
        self.num_classes = self.float_out.shape[1]
        self.rank_size = min(rank_size, len(dataset))
        self.count = 0
        self.seconds = 0.0

    def evaluate(self, model: bytes, full: bool = False) -> Evaluation:
        """One quantized pass over the ranking subset (or the whole evaluation set when `full`)."""
        start = time.perf_counter()
        runner = runner_for(self.runtime, model, self.batch_size)
        acc = ClassificationAccumulator(self.num_classes, self.top_k)
        labels = self.dataset.labels
        limit = len(self.dataset) if full else self.rank_size
        invoke_seconds, seen = 0.0, 0
        for x, idx in self.x_batches:
            if seen >= limit:
                break
            x, idx = x[: limit - seen], idx[: limit - seen]
            t = time.perf_counter()
            q = runner.run(x)
            invoke_seconds += time.perf_counter() - t
            acc.update(self.float_out[idx], q, None if labels is None else labels[idx])
            seen += len(x)
        metrics = acc.result()
        ref, value = self.metric.values(metrics)
        seconds = time.perf_counter() - start
        self.count += 1
        self.seconds += seconds
        return Evaluation(float(value), 100.0 * (float(ref) - float(value)), seen, seconds,
                          1000.0 * invoke_seconds / max(seen, 1), metrics)


def model_stats(model: bytes) -> tuple[int, int]:
    """(size in bytes, ops computed entirely in float: no integer tensor among their inputs and outputs)."""
    from quantdoctor.backends.tflite.extract import _opcode_name, _schema
    from quantdoctor.repair.flatbuffer import _unpack

    if bytes(model[4:8]) != b"TFL3":
        from quantdoctor.repair.build_onnx import model_stats as onnx_stats

        return onnx_stats(model)

    m = _unpack(model)
    sg = m.subgraphs[0]
    types = _schema().TensorType
    integer = {types.INT8, types.UINT8, types.INT16, types.INT32, types.INT4}
    count = 0
    for op in sg.operators:
        if _opcode_name(m.operatorCodes[op.opcodeIndex]) in ("QUANTIZE", "DEQUANTIZE"):
            continue
        tensors = [int(t) for t in list(op.inputs if op.inputs is not None else []) +
                   list(op.outputs if op.outputs is not None else []) if t >= 0]
        # INT32 alone (a bias, a shape) does not make an op integer: require an 8/16-bit tensor.
        kinds = {sg.tensors[t].type for t in tensors}
        if not (kinds & (integer - {types.INT32})):
            count += 1
    return len(model), count
