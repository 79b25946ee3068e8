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
import numpy as np

from quantdoctor.errors import DataError, UserInputError
from quantdoctor.registry import Registry
from quantdoctor.backends.base import Batch, TensorSpec, as_inputs, batch_slice
from quantdoctor.stats.classification import ModelMetrics
from quantdoctor.tasks.base import TaskOptions, TaskResult


@dataclass(frozen=True)
class Metric:
    """A budget metric: a fraction the float model scores (1.0 unless it is accuracy on labels); a drop is in points.
    Every task (`quantdoctor.tasks`) lists the ones it accepts in `budget_metrics`."""

    name: str
    summary: str


METRICS: Registry[Metric] = Registry("repair metric")
for _m in (
    Metric("agreement", "top-1 agreement with the float model (float = 100 %)"),
    Metric("top1", "top-1 accuracy on the labels"),
    Metric("topk", "top-k accuracy on the labels"),
    Metric("f1", "detection F1 against the float model's detections (float = 100 %)"),
    Metric("recall", "share of the float model's detections the quantized model keeps"),
    Metric("precision", "share of the quantized model's detections the float model also makes"),
    Metric("miou", "mean IoU of the quantized masks against the float model's masks (float = 100 %)"),
    Metric("pixel_agreement", "share of pixels whose class matches the float model's"),
    Metric("miou_labels", "mean IoU against the label masks"),
    Metric("fidelity", "1 - relative L2 error of the outputs against the float model's (float = 100 %)"),
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
    metrics: ModelMetrics | None  # a classifier's metrics (None for other tasks)
    task: TaskResult | None = None  # every metric of the task, and each output measured on its own


class _Interp:
    """A lean LiteRT interpreter for whole-model passes (no intermediate tensors kept); `num_threads` None = every
    core (give 1 inside a worker that shares the cores with others)."""

    def __init__(self, model: bytes, batch_size: int, num_threads: int | None = None) -> None:
        from quantdoctor.backends.tflite.loader import load_interpreter

        self.interp = load_interpreter(model, num_threads=num_threads, what="the candidate model")
        for detail in self.interp.get_input_details():
            shape = list(detail["shape"])
            shape[0] = batch_size
            self.interp.resize_tensor_input(detail["index"], shape, strict=False)
        self.interp.allocate_tensors()
        self.ins = self.interp.get_input_details()
        self.outs = self.interp.get_output_details()
        self.batch_size = batch_size
        self.outputs = [TensorSpec(d["name"], tuple(int(s) for s in d["shape"][1:]), np.dtype(d["dtype"]).name)
                        for d in self.outs]

    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(d["name"], tuple(int(s) for s in d["shape"][1:]), np.dtype(d["dtype"]).name)
                for d in self.ins]

    def run(self, x: Batch) -> list[np.ndarray]:
        from quantdoctor.backends.tflite.extract import to_tensor_dtype

        arrays = as_inputs(x)
        n = len(arrays[0])
        for detail, a in zip(self.ins, arrays):
            if n < self.batch_size:
                a = np.concatenate([a, np.zeros((self.batch_size - n,) + a.shape[1:], a.dtype)])
            dtype = np.dtype(detail["dtype"])
            if dtype.kind != "f":
                scale, zp = detail["quantization"]
                a = to_tensor_dtype(a, dtype, np.array([scale]), np.array([zp]))
            self.interp.set_tensor(detail["index"], a.astype(dtype, copy=False))
        self.interp.invoke()
        out = []
        for detail in self.outs:
            y = self.interp.get_tensor(detail["index"])[:n].astype(np.float32)
            if np.dtype(detail["dtype"]).kind != "f":
                scale, zp = detail["quantization"]
                y = (y - zp) * scale
            out.append(y)
        return out


class _Whole:
    """A runtime's runner (`RUNTIMES`) for whole-model passes: every output."""

    def __init__(self, runtime: str, model: bytes, batch_size: int, num_threads: int | None = None) -> None:
        from quantdoctor.backends.runtimes import RUNTIMES

        if num_threads is None:
            self.runner = RUNTIMES.get(runtime).runner(model, batch_size)
        else:  # the registry's runner takes no thread count; the runner class does
            from quantdoctor.backends.onnx.runner import OnnxRunner  # the one runtime besides LiteRT

            self.runner = OnnxRunner(model, batch_size, num_threads=num_threads)
        self.outputs = self.runner.outputs()
        self.inputs = self.runner.inputs

    def run(self, x: Batch) -> list[np.ndarray]:
        return [np.asarray(v, np.float32) for v in self.runner.run_all(x)]


def runner_for(runtime: str, model: bytes, batch_size: int, num_threads: int | None = None):
    """What runs a whole candidate model: the lean LiteRT interpreter for TFLite, else the runtime's runner.

    Args:
        num_threads: kernel threads (LiteRT) or intra-op threads (ONNX Runtime); None = one inside an executor's
            worker (`executors.base.worker_threads`: workers share the cores), else every core.
    """
    from quantdoctor.executors.base import worker_threads

    num_threads = num_threads if num_threads is not None else worker_threads()
    if runtime == "tflite":
        return _Interp(model, batch_size, num_threads)
    return _Whole(runtime, model, batch_size, num_threads)


class Evaluator:
    """Counts and runs quantized passes against cached float outputs.

    Args:
        float_model: the float model reference (.tflite or, with runtime "onnx", .onnx bytes).
        dataset: the evaluation set (a `quantdoctor.data.Dataset`).
        metric: a budget metric of the task (see `METRICS` and the task's `budget_metrics`); None = its headline.
        rank_size: samples in the ranking subset (the first ones of the evaluation set).
        runtime: a name in `backends.runtimes.RUNTIMES`.
        task: a name in `quantdoctor.tasks.TASKS`, or "auto" (decided from the outputs).
        task_options: a `quantdoctor.tasks.base.TaskOptions`; None = the defaults with `top_k`.
    """

    def __init__(self, float_model: bytes, dataset, metric: str | None = None, *, batch_size: int = 16,
                 top_k: int = 3, rank_size: int = 32, runtime: str = "tflite", task: str = "auto",
                 task_options: TaskOptions | None = None) -> None:
        from quantdoctor.tasks import resolve_task

        if len(dataset) == 0:
            raise DataError("no samples to evaluate on; give more data or a smaller --calib-count")
        from quantdoctor.diagnose.outputs import in_input_order

        self.batch_size, self.top_k, self.runtime = batch_size, top_k, runtime
        self.task_options = task_options or TaskOptions(top_k=top_k)
        runner = runner_for(runtime, float_model, batch_size)
        self.dataset = dataset = in_input_order(dataset, runner)
        self.outputs = list(runner.outputs)
        self.task = resolve_task(task, self.outputs, self.task_options)
        metric = metric or self.task.headline
        if metric not in self.task.budget_metrics:
            choices = ", ".join(self.task.budget_metrics) or "none (a user metric in the Python API)"
            raise UserInputError(f"--metric {metric} does not apply to task '{self.task.name}'; choose one of: {choices}")
        self.metric = METRICS.get(metric) if metric in METRICS else Metric(metric, metric)
        if metric in self.task.needs_labels and (dataset.labels is None or not (dataset.labels >= 0).any()):
            raise UserInputError(f"metric '{metric}' needs labelled data; give labels or use --metric "
                                 f"{self.task.headline}")
        self.x_batches = [(x, idx) for x, idx in dataset.batches(batch_size)]  # preprocessed once, reused every pass
        per_batch = [runner.run(x) for x, _ in self.x_batches]
        self.float_out = [np.concatenate(parts) for parts in zip(*per_batch)]  # one array per output
        self.rank_size = min(rank_size, len(dataset))
        self.count = 0
        self.seconds = 0.0

    def evaluate(self, model: bytes, full: bool = False) -> Evaluation:
        """One quantized pass over the ranking subset (or the whole evaluation set when `full`)."""
        from quantdoctor.tasks import build_accumulator
        from quantdoctor.tasks.classify import classification_metrics

        start = time.perf_counter()
        runner = runner_for(self.runtime, model, self.batch_size)
        acc = build_accumulator(self.task, self.outputs, self.task_options)
        labels = self.dataset.labels
        limit = len(self.dataset) if full else self.rank_size
        invoke_seconds, seen = 0.0, 0
        for x, idx in self.x_batches:
            if seen >= limit:
                break
            x, idx = batch_slice(x, limit - seen), idx[: limit - seen]
            t = time.perf_counter()
            q = runner.run(x)
            invoke_seconds += time.perf_counter() - t
            acc.update([f[idx] for f in self.float_out], q, None if labels is None else labels[idx])
            seen += len(idx)
        result = acc.result()
        ref, value = result.pair(self.metric.name)
        seconds = time.perf_counter() - start
        self.count += 1
        self.seconds += seconds
        return Evaluation(float(value), 100.0 * (float(ref) - float(value)), seen, seconds,
                          1000.0 * invoke_seconds / max(seen, 1), classification_metrics(result), result)


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
