"""Read each conv / depthwise / dense op's weights from a float and a quantized .tflite and measure the quantization.

Ops pair across the two files by the name of their output tensor, which the converter keeps (`exact_id`); then by that
name or the weight tensor's name without the writer's de-duplication digits (`name`); then by op type and weight shape
when exactly one float op is left that fits (`shape+topology`). A quantized op without a float partner is still
reported, with nan SQNRs and a note.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from quantdoctor.backends.base import Graph, OpInfo, TensorInfo
from quantdoctor.backends.tflite.graph import graph_from_interpreter
from quantdoctor.diagnose.layers import is_dynamic_range
from quantdoctor.matching.types import MatchMethod
from quantdoctor.stats.weights import OUTPUT_CHANNEL_AXIS, WeightReport, dequantize, weight_report

_DEDUP_DIGITS = re.compile(r"\d+$")
_INTEGER_STORAGE = ("int8", "uint8", "int16", "int4")


@dataclass(frozen=True)
class _Weights:
    """An op's weights as the file stores them and as the kernel computes with them."""

    tensor: TensorInfo  # the stored constant (behind the DEQUANTIZE, if any)
    stored: np.ndarray | None  # integer values; None for float storage
    actual: np.ndarray  # float64 values the op computes with
    granularity: str  # "per-tensor", "per-channel", or the float storage dtype
    axis: int


def analyze_weights(float_model: bytes, quant_model: bytes) -> tuple[WeightReport, ...]:
    """One WeightReport per weighted op of the quantized model, in its execution order.

    Works for dynamic-range (hybrid), full-integer int8, int16x8 and float16 models: weights behind a DEQUANTIZE are
    read at their int8 / float16 source.

    Raises:
        ModelLoadError: LiteRT cannot read one of the models.
    """
    f_interp, fg = _load(float_model, "float")
    q_interp, qg = _load(quant_model, "quantized")
    q_ops = [op for op in qg.ops if _is_weighted(qg, op)]
    # Float activations alone also describe a float model; dynamic range needs some integer weights too.
    stored = [_stored_tensor(qg, op) for op in q_ops]
    dynamic = is_dynamic_range(qg) and any(t is not None and t.dtype in _INTEGER_STORAGE for t in stored)
    pairs = pair_weighted_ops(fg, qg)
    reports = []
    for op in q_ops:
        weights = read_weights(q_interp.get_tensor, qg, op)
        if weights is None:
            reports.append(_unreadable(op, qg, "weights are computed at run time, not stored; not analysed"))
            continue
        info = qg.weight_info(op, dynamic)
        notes = [info.note] if info is not None and info.note else []
        float_weights, match = None, ""
        if op.index in pairs:
            f_op, method = pairs[op.index]
            f_read = read_weights(f_interp.get_tensor, fg, f_op)
            if f_read is not None and f_read.actual.shape == weights.actual.shape:
                float_weights, match = f_read.actual, method.value
        if float_weights is None:
            notes.append("no float counterpart found; SQNRs not measured")
        reports.append(_report(op, weights, float_weights, match, "; ".join(notes)))
    return tuple(reports)


def _report(op: OpInfo, weights: _Weights, float_weights: np.ndarray | None, match: str, note: str) -> WeightReport:
    return weight_report(
        op_index=op.index,
        op_type=op.type,
        tensor=weights.tensor.name,
        storage=weights.tensor.dtype,
        granularity=weights.granularity,
        stored=weights.stored,
        actual=weights.actual,
        float_weights=float_weights,
        axis=weights.axis,
        match=match,
        note=note,
        step=_per_tensor_step(weights.tensor),
    )


def _per_tensor_step(t: TensorInfo) -> float:
    q = t.quant
    return float(q.scales[0]) if q is not None and len(q.scales) == 1 and t.dtype in _INTEGER_STORAGE else float("nan")


def _load(model: bytes, label: str):
    """An interpreter (not allocated: constants are readable without) and its graph."""
    from quantdoctor.backends.tflite.loader import load_interpreter

    # No XNNPACK (the loader never applies it): it rewrites per-tensor hybrid conv weights as per-channel.
    interp = load_interpreter(model, what=f"the {label} model")
    return interp, graph_from_interpreter(interp)


def _stored_tensor(g: Graph, op: OpInfo) -> TensorInfo | None:
    """The constant holding the op's weights: inputs[1], or the source of the DEQUANTIZE that feeds it."""
    w = g.tensors[op.inputs[1]]
    if w.producer is not None and g.is_weight_dequantize(g.op(w.producer)):
        w = g.tensors[g.op(w.producer).inputs[0]]
    return w if w.is_constant else None


def read_weights(constant, g: Graph, op: OpInfo) -> _Weights | None:
    """The op's weights as stored and as computed with; None when they are not a constant.

    `constant(index)` returns a constant tensor as stored (`Runner.constant`, or a LiteRT interpreter's `get_tensor`).
    """
    t = _stored_tensor(g, op)
    if t is None:
        return None
    values = np.asarray(constant(t.index))
    default_axis = OUTPUT_CHANNEL_AXIS.get(op.type, 0) % max(values.ndim, 1)
    if t.quant is None or t.dtype not in _INTEGER_STORAGE:
        return _Weights(t, None, values.astype(np.float64), t.dtype, default_axis)
    axis = default_axis if t.quant.axis is None else t.quant.axis
    actual = dequantize(values, np.array(t.quant.scales), axis, np.array(t.quant.zero_points or (0,)))
    return _Weights(t, values, actual, t.quant.granularity, axis)


def _unreadable(op: OpInfo, g: Graph, note: str) -> WeightReport:
    nan = float("nan")
    w = g.tensors[op.inputs[1]]
    axis = OUTPUT_CHANNEL_AXIS.get(op.type, 0) % max(len(w.shape), 1)
    return WeightReport(
        op_index=op.index,
        op_type=op.type,
        tensor=w.name,
        shape=w.shape,
        axis=axis,
        storage=w.dtype,
        granularity=w.dtype,
        sqnr_db_actual=nan,
        sqnr_db_per_tensor=nan,
        sqnr_db_per_channel=nan,
        worst_channel_sqnr_db=nan,
        collapsed_channels=0,
        num_channels=w.shape[axis] if w.shape else 0,
        min_channel_levels=None,
        channel_range_ratio=nan,
        note=note,
    )


def pair_weighted_ops(fg: Graph, qg: Graph) -> dict[int, tuple[OpInfo, MatchMethod]]:
    """Map each weighted op of the quantized graph to the float op with the same weights, and how it was found.

    Candidates must have the same op type and weight shape; each float op is used once. Name keys are tried for
    all ops before the next, looser key, so a loose key never steals an op that a stricter one would pair.
    """
    f_ops = [op for op in fg.ops if _is_weighted(fg, op)]
    q_ops = [op for op in qg.ops if _is_weighted(qg, op)]
    pairs: dict[int, tuple[OpInfo, MatchMethod]] = {}
    used: set[int] = set()
    keys = (
        (MatchMethod.EXACT_ID, lambda g, op: g.tensors[op.outputs[0]].name),
        (MatchMethod.NAME, lambda g, op: _DEDUP_DIGITS.sub("", g.tensors[op.outputs[0]].name)),
        (MatchMethod.NAME, lambda g, op: _DEDUP_DIGITS.sub("", _weight_name(g, op))),
        (MatchMethod.SHAPE_TOPOLOGY, lambda g, op: ""),
    )
    for method, key in keys:
        for q_op in q_ops:
            if q_op.index in pairs:
                continue
            fits = [
                f_op
                for f_op in f_ops
                if f_op.index not in used
                and f_op.type == q_op.type
                and _weight_shape(fg, f_op) == _weight_shape(qg, q_op)
                and key(fg, f_op) == key(qg, q_op)
            ]
            if len(fits) == 1:  # ambiguous keys pair nothing rather than guess
                pairs[q_op.index] = (fits[0], method)
                used.add(fits[0].index)
    return pairs


def _is_weighted(g: Graph, op: OpInfo) -> bool:
    return g.is_weighted(op) and bool(op.outputs)


def _weight_name(g: Graph, op: OpInfo) -> str:
    t = _stored_tensor(g, op)
    return (t or g.tensors[op.inputs[1]]).name


def _weight_shape(g: Graph, op: OpInfo) -> tuple[int, ...]:
    return g.tensors[op.inputs[1]].shape
