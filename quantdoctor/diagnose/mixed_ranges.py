"""The `mixed_ranges` detector: parts of very different range that meet on one quantization scale.

A concatenation or addition gives its inputs one output grid (TFLite's int8 converter even forces a concatenation's
inputs onto the output's scale, requantizing an input with a fixed scale, such as LOGISTIC's 1/256, in a QUANTIZE op in
front of it), and a model output carries all its channels on one grid. When one part spans ×100 the range of another
(box coordinates in pixels next to class scores in [0, 1]), the grid is set by the wide part and the narrow one falls
on a handful of levels: the boxes look fine, every score rounds to zero.

Rule: the parts of a CONCATENATION / ADD (ONNX Concat / Add) are its inputs' float ranges (from their LayerResults); the
parts of a concatenation's output or a graph output without such inputs are its runs of channels of similar range
(`stats.channels.group_channels`). A finding when the widest / narrowest part's range is ≥ `RANGE_RATIO`, the narrow
part spans ≤ `FEW_LEVELS` steps of the shared per-tensor scale, and it costs something: the narrow part on that grid
(measured per channel group when the diagnosis has it, else uniform values rounded on the grid) or the op and its
readers end below `SUFFERS_BELOW_DB`. The `positions` are what a counterfactual must make exact: the op where the
scales meet, the requantize op or the producer that puts the narrow part on the shared scale, and the op's readers
(an integer reader takes its input back on the same grid). Activation-outlier and grid-coverage findings on those ops
are its symptoms: `absorb_symptoms` demotes them to info. Tensors upstream that the converter gave the shared scale and
that it crushes too (`_crushed_upstream`) join the positions with their readers, and a finding on a run of channels inside the ops of a
finding on the inputs is the same cause seen again (dropped). Score: the larger of the readers' share of the output
error and the narrow part's lost signal (noise-to-signal power ratio on the shared grid, capped at 1), since squared
error in the output's units ranks a collapsed score below a pixel of box error.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from quantdoctor.diagnose.findings import (
    DETECTORS,
    SUFFERS_BELOW_DB,
    Context,
    _severity,
    _share,
    _with_consumers,
)
from quantdoctor.diagnose.results import Finding, LayerResult, Severity

__all__ = ["FEW_LEVELS", "MERGE_OPS", "RANGE_RATIO", "absorb_symptoms", "grid_sqnr_db", "mixed_ranges"]

RANGE_RATIO = 20.0  # widest / narrowest part's range
FEW_LEVELS = 16.0  # the narrow part spans at most this many steps of the shared scale
UPSTREAM_DEPTH = 4  # ops walked back from the meeting point for tensors the shared scale was propagated to
GROUP_RATIO = 8.0  # channels whose ranges differ by this much start a new group (group_channels)
MERGE_OPS = ("CONCATENATION", "ADD", "Concat", "Add")  # TFLite, ONNX
CONCAT_OPS = ("CONCATENATION", "Concat")
SYMPTOMS = ("activation_outliers", "low_grid_coverage")
_INTEGER = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535)}


class _Part:
    """One side of the shared scale: an input tensor or a run of channels, with its float range."""

    def __init__(self, name: str, lo: float, hi: float, layer: LayerResult | None = None,
                 channels: tuple[int, int] | None = None) -> None:
        self.name, self.lo, self.hi, self.layer, self.channels = name, lo, hi, layer, channels

    @property
    def span(self) -> float:
        return self.hi - self.lo


@DETECTORS.register("mixed_ranges")
def mixed_ranges(ctx: Context) -> list[Finding]:
    by_tensor = {l.float_tensor: l for l in ctx.diagnosis.layers}
    read = {t for l in ctx.diagnosis.layers for t in l.input_tensors}
    out = []
    for l in ctx.diagnosis.layers:
        scale = _shared_scale(l)
        if scale is None:
            continue  # a float (dynamic-range) tensor or per-channel activation scales: no shared grid
        parts = _input_parts(l, by_tensor) if l.op_type in MERGE_OPS else []
        if len(parts) < 2 and (l.op_type in CONCAT_OPS or l.float_tensor not in read):
            parts = _channel_parts(l)  # a concatenation's channels, or a graph output's
        if len(parts) < 2:
            continue
        finding = _judge(ctx, l, parts, scale)
        if finding is not None:
            out.append(finding)
    return out


def _shared_scale(l: LayerResult) -> float | None:
    q = l.quant
    if q is None or len(q.scales) != 1 or not q.scales[0] > 0 or l.float_stats is None:
        return None
    return float(q.scales[0])


def _input_parts(l: LayerResult, by_tensor: dict[str, LayerResult]) -> list[_Part]:
    spans = _concat_channels(l, by_tensor)
    parts = []
    for name in dict.fromkeys(l.input_tensors):
        src = by_tensor.get(name)
        s = None if src is None else src.float_stats
        if s is not None and math.isfinite(s.min) and math.isfinite(s.max) and s.max > s.min:
            parts.append(_Part(src.label, float(s.min), float(s.max), layer=src, channels=spans.get(name)))
    return parts


def _concat_channels(l: LayerResult, by_tensor: dict[str, LayerResult]) -> dict[str, tuple[int, int]]:
    """Where each input of a concatenation along the last axis lands in its output's channels (so the output's
    per-channel error measures each input's part); empty when the op is not such a concatenation."""
    if l.op_type not in CONCAT_OPS or not l.shape or len(set(l.input_tensors)) != len(l.input_tensors):
        return {}
    srcs = [by_tensor.get(n) for n in l.input_tensors]
    if any(s is None or len(s.shape) != len(l.shape) or s.shape[:-1] != l.shape[:-1] for s in srcs):
        return {}
    widths = [s.shape[-1] for s in srcs]
    if sum(widths) != l.shape[-1]:
        return {}
    starts = np.cumsum([0, *widths])
    return {n: (int(a), int(b)) for n, a, b in zip(l.input_tensors, starts[:-1], starts[1:])}


def _channel_parts(l: LayerResult) -> list[_Part]:
    from quantdoctor.stats.channels import group_channels

    s = l.float_stats
    if len(s.channel_min) < 2 or len(s.channel_min) != len(s.channel_max):
        return []
    lo, hi = np.asarray(s.channel_min, np.float64), np.asarray(s.channel_max, np.float64)
    parts = []
    for start, stop in group_channels(lo, hi, GROUP_RATIO):
        a, b = float(np.nanmin(lo[start:stop])), float(np.nanmax(hi[start:stop]))
        if math.isfinite(a) and math.isfinite(b) and b > a:
            parts.append(_Part(f"{l.label}[{start}:{stop}]", a, b, channels=(start, stop)))
    return parts


def _judge(ctx: Context, l: LayerResult, parts: list[_Part], scale: float) -> Finding | None:
    wide = max(parts, key=lambda p: p.span)
    small = min(parts, key=lambda p: p.span)
    ratio = wide.span / small.span
    levels = small.span / scale
    if ratio < RANGE_RATIO or levels > FEW_LEVELS:
        return None
    q = l.quant
    zero = q.zero_points[0] if q.zero_points else 0
    measured = _group_sqnr(l, small), _group_sqnr(l, wide)
    if all(v is not None for v in measured):
        small_db, wide_db, basis = *measured, "measured per channel group"
    else:
        small_db = grid_sqnr_db(small.lo, small.hi, scale, zero, q.dtype)
        wide_db = grid_sqnr_db(wide.lo, wide.hi, scale, zero, q.dtype)
        basis = "uniform values on the shared grid"
    readers = _with_consumers(ctx, l)
    costly = small_db < SUFFERS_BELOW_DB or min(r.accumulated.sqnr_db for r in readers) < SUFFERS_BELOW_DB
    if not costly:
        return None
    feeders = _feeders(ctx, l, small, scale)
    upstream = _crushed_upstream(ctx, l, scale)
    layers = [f for f in feeders if isinstance(f, LayerResult)] + readers
    layers += [x for u in upstream for x in _with_consumers(ctx, u) if x not in layers]
    requantize = [f for f in feeders if isinstance(f, int)]
    positions = tuple(sorted({p.position for p in layers} | set(requantize)))
    # The share of the output's squared error is the wrong yardstick when the parts are different quantities (a
    # pixel of box error outweighs a whole score): the narrow part's own lost signal counts too, as its
    # noise-to-signal power ratio 10^(−SQNR/10), capped at 1 (= its signal is gone).
    lost_signal = min(1.0, 10.0 ** (-small_db / 10.0)) if math.isfinite(small_db) else 0.0
    score = max(_share(readers), lost_signal)
    evidence = {
        "op": l.label,
        "op_type": l.op_type,
        "parts": len(parts),
        "grouped_by": "inputs" if small.layer is not None else "channels",
        "wide_part": wide.name,
        "wide_min": wide.lo,
        "wide_max": wide.hi,
        "small_part": small.name,
        "small_min": small.lo,
        "small_max": small.hi,
        "range_ratio": ratio,
        "shared_scale": scale,
        "dtype": q.dtype,
        "small_levels": levels,
        "occupied_levels": _occupied_levels(small.lo, small.hi, scale, zero, q.dtype),
        "small_sqnr_db": small_db,
        "wide_sqnr_db": wide_db,
        "sqnr_basis": basis,
        "small_input_sqnr_db": small.layer.accumulated.sqnr_db if small.layer is not None else math.nan,
        "reader_sqnr_db": min(r.accumulated.sqnr_db for r in readers),
        "requantize_op": requantize[0] if requantize else -1,
        "crushed_upstream": [u.label for u in upstream],
        "crushed_upstream_levels": [_span(u) / scale for u in upstream],
        "position": l.position,
    }
    fix = (f"keep {l.label} and the ops that read it in float, or give its output 16-bit activations; or split it "
           "into separate outputs (or inputs) with their own scales, a model change that cannot be applied "
           "automatically")
    return Finding(
        mechanism="mixed_ranges",
        severity=_severity(ctx, score),
        positions=positions,
        layers=tuple(x.label for x in sorted(layers, key=lambda x: x.position)),
        op_types=tuple(sorted({x.op_type for x in layers} | ({"QUANTIZE"} if requantize else set()))),
        evidence=evidence,
        fix=fix,
        score=score,
    )


def _span(layer: LayerResult) -> float:
    s = layer.float_stats
    return float(max(s.channel_max) - min(s.channel_min)) if s is not None and s.channel_max else math.nan


def _crushed_upstream(ctx: Context, l: LayerResult, scale: float, depth: int = UPSTREAM_DEPTH) -> list[LayerResult]:
    """Tensors upstream of `l` that carry the shared scale although their own range spans ≤ `FEW_LEVELS` of its steps.

    The converter propagates a meeting point's scale backwards through ops that keep their input's scale (TFLite's
    int8 quantizer does so through a MUL by a constant in a box decode: the ADD before it, 0..8, is left 3 steps of a
    0..631 grid). Walked through inputs that carry the shared scale, at most `depth` ops deep.
    """
    by_name = {x.float_tensor: x for x in ctx.diagnosis.layers}
    found: list[LayerResult] = []
    frontier = [by_name.get(n) for n in l.input_tensors]
    for _ in range(depth):
        nxt = []
        for x in frontier:
            q = None if x is None else x.quant
            if q is None or len(q.scales) != 1 or not math.isclose(q.scales[0], scale, rel_tol=1e-3):
                continue
            if _span(x) / scale <= FEW_LEVELS and x not in found:
                found.append(x)
            nxt += [by_name.get(n) for n in x.input_tensors]
        frontier = nxt
    return sorted(found, key=lambda x: x.position)


def _feeders(ctx: Context, l: LayerResult, small: _Part, scale: float) -> list:
    """What puts the narrow input on the shared scale: the requantize op in front of `l` (an op index), or the
    producer whose own output grid is the shared one (its LayerResult). Nothing for a run of channels."""
    src = small.layer
    if src is None or src.position < 0:
        return []
    g = ctx.graph
    if g is not None and l.position >= 0:
        try:
            op = g.op(l.position)
        except KeyError:
            op = None
        for t in () if op is None else op.inputs:
            producer = g.tensors[t].producer if t >= 0 and t in g.tensors else None
            if producer is None or not g.is_conversion(g.op(producer)):
                continue
            conv = g.op(producer)
            upstream = g.tensors[conv.inputs[0]] if conv.inputs else None
            if upstream is not None and upstream.name == src.quant_tensor:
                return [producer]  # the requantize op in front of the concatenation
    sq = src.quant
    if sq is not None and len(sq.scales) == 1 and math.isclose(sq.scales[0], scale, rel_tol=1e-3):
        return [src]  # the converter gave the producer the shared scale: the crush is at its own output
    return []


def _group_sqnr(l: LayerResult, part: _Part) -> float | None:
    """The part's measured SQNR when the layer carries per-channel errors (`channel_error`), else None."""
    err = getattr(l, "channel_error", None)
    if err is None or part.channels is None:
        return None
    from quantdoctor.stats.channels import group_sqnr

    v = group_sqnr(err, *part.channels)
    return None if math.isnan(v) else v


def grid_sqnr_db(lo: float, hi: float, scale: float, zero_point: int = 0, dtype: str = "int8",
                 points: int = 4097) -> float:
    """SQNR (dB) of values spread uniformly over [lo, hi] rounded to the grid scale·(q − zero_point), q in dtype's range.

    10·log10(mean x² / mean (x − x̂)²) over `points` evenly spaced values: the cost a grid puts on a part of a tensor
    when its per-group error was not measured. +inf when every value lies on the grid, nan for an empty range.
    """
    if not (hi > lo) or not scale > 0:
        return math.nan
    qmin, qmax = _INTEGER.get(dtype, (-128, 127))
    x = np.linspace(lo, hi, points)
    xq = (np.clip(np.rint(x / scale) + zero_point, qmin, qmax) - zero_point) * scale
    noise = float(np.mean((x - xq) ** 2))
    signal = float(np.mean(x ** 2))
    if noise == 0:
        return math.inf
    return 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf


def _occupied_levels(lo: float, hi: float, scale: float, zero_point: int, dtype: str) -> int:
    """Distinct grid levels the values in [lo, hi] can round to."""
    qmin, qmax = _INTEGER.get(dtype, (-128, 127))
    a = int(np.clip(np.rint(lo / scale) + zero_point, qmin, qmax))
    b = int(np.clip(np.rint(hi / scale) + zero_point, qmin, qmax))
    return b - a + 1


def absorb_symptoms(found: list[Finding]) -> list[Finding]:
    """Demote activation-outlier and grid-coverage findings on an op a `mixed_ranges` finding names to info: the wide
    part is the "outlier" and the crushed part the low coverage; the mixed ranges are the cause (and info findings are
    not verified again, so the cause is not reported twice)."""
    mixed = [f for f in found if f.mechanism == "mixed_ranges"]
    if not mixed:
        return found
    out = []
    for f in found:
        if f.mechanism == "mixed_ranges" and any(m is not f and set(f.positions) < set(m.positions) for m in mixed):
            continue  # the same crushed part, seen again downstream (a graph output after the concatenation)
        owner = next((m for m in mixed if f.mechanism in SYMPTOMS and f.positions and f.positions[0] in m.positions),
                     None)
        if owner is not None:
            f = replace(f, severity=Severity.INFO, evidence={**f.evidence, "explained_by": owner.evidence["op"]})
        out.append(f)
    return out
