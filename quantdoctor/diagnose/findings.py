"""Findings: the ranked suspects of a diagnosis, each a mechanism from a documented catalogue with its evidence.

A finding is data (STYLE rule 8): the layers, the mechanism, the numbers that support it, the fix it suggests and
whether that fix was verified. Sentences for humans are rendered from it in `report/findings_text.py`, nowhere else.

The catalogue (one detector each, registered in `DETECTORS`; thresholds are module constants, stated with the rule):

- `kernel_defect` — the runtime is far worse than the op's own quantization parameters predict: isolated SQNR at least
  `EXCESS_DB` below the expected SQNR (simulated from the dequantized weights and the scheme's activation quantization).
  Not quantization noise: the converter or the kernel does not compute what the parameters say.
- `weight_range_disparity` — per-tensor weights whose output channels span very different ranges (widest / median
  channel range ≥ `WEIGHT_RANGE_RATIO`), so one scale leaves the small channels few levels; per-channel would gain ≥
  `GAIN_DB` of weight SQNR.
- `activation_outliers` — a quantized activation whose range is set by a few channels or values: range ratio of the
  live channels ≥ `RANGE_RATIO`, or max |x| ≥ `OUTLIER_RATIO` × its 99.9th percentile, and it matters: a typical sample
  is left ≤ `CRUSHED_LEVELS` levels, or the op builds up ≥ `WARNING_SHARE` of the output error; and it costs something:
  the tensor or an op reading it ends below `SUFFERS_BELOW_DB` SQNR (as for `low_grid_coverage`).
- `calibration_clipping` — the float activation falls outside the quantized range for ≥ `CLIP_SHARE` of values: the
  calibration data did not cover what the model sees.
- `low_grid_coverage` — a typical sample occupies ≤ `FEW_LEVELS` levels of the grid (the checklist's "two or three
  levels"), without an outlier to blame.
- `output_margins` — the float model's top-1 margins are small against the quantization noise at the logits: the
  Gaussian margin model predicts at least half of the observed flips; also the output grid's step against the margins.
- `float_ops` — ops left in float, or (de)quantize pairs inserted inside an integer model: not an error by themselves,
  but they cost speed and mark where the converter gave up.
- `accumulated_drift` — the output error is large but no op stands out: many small errors add up.
- `mixed_ranges` (`diagnose/mixed_ranges.py`) — a concatenation, addition or model output whose parts (inputs, or runs
  of channels of similar range) span ranges ≥ `RANGE_RATIO` (20) apart share one scale, so the narrow part spans ≤
  `FEW_LEVELS` (16) steps (box coordinates in pixels next to class scores). Activation-outlier and grid-coverage
  findings on the same ops are its symptoms and drop to info.

Each finding's `score` estimates the share of the output error it accounts for (the `output_error_share` of its layers,
or the margin model's explained share); severity: `critical` when the model measurably loses (top-1 agreement below
1 − `LOSS`) and the finding accounts for ≥ `CRITICAL_SHARE` of it, or a kernel defect that destroys the op's output;
`warning` when it accounts for ≥ `WARNING_SHARE`; `info` otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable

from quantdoctor.backends.base import Graph
from quantdoctor.diagnose.results import Diagnosis, Finding, LayerResult, Severity
from quantdoctor.registry import Registry

__all__ = ["DETECTORS", "Finding", "Severity", "find_all"]

SEVERITY_RANK = {Severity.CRITICAL: 0, Severity.WARNING: 1, Severity.INFO: 2}

EXCESS_DB = 10.0
DESTROYED_DB = 10.0  # an isolated SQNR below this means the op's output is mostly noise
RANGE_RATIO = 10.0
WEIGHT_RANGE_RATIO = 5.0  # widest / median channel: a ×100 end-to-end spread is ~×10 to the median
GAIN_DB = 6.0
OUTLIER_RATIO = 10.0
CLIP_SHARE = 0.01  # below this, a small calibration set's sampling explains the clipping
FEW_LEVELS = 16
SUFFERS_BELOW_DB = 30.0  # ...and it or its consumer has an SQNR below this
CRUSHED_LEVELS = 64  # an outlier matters when it leaves a typical sample at most this many levels...
LOSS = 0.05
CRITICAL_SHARE = 0.25
WARNING_SHARE = 0.05
DRIFT_BELOW_DB = 15.0


@dataclass(frozen=True)
class Context:
    """What a detector reads: the diagnosis and the quantized graph."""

    diagnosis: Diagnosis
    graph: Graph | None

    @property
    def loss(self) -> float:
        """Share of samples whose top-1 changed; for another task, 1 − its headline (e.g. 1 − detection F1)."""
        d = self.diagnosis
        a = d.model.top1_agreement if d.model is not None else (d.task.value if d.task is not None else None)
        return math.nan if a is None or math.isnan(a) else 1.0 - a


Detector = Callable[[Context], list[Finding]]
DETECTORS: Registry[Detector] = Registry("finding mechanism")


def find_all(diagnosis: Diagnosis, graph: Graph | None = None) -> tuple[Finding, ...]:
    """Every detector's findings, ranked: severity, then score, then depth (earlier first)."""
    ctx = Context(diagnosis, graph)
    found = _mixed.absorb_symptoms([f for _, detect in DETECTORS.items() for f in detect(ctx)])
    upstream = [f for f in found if f.mechanism != "output_margins" and f.severity is Severity.CRITICAL]
    if upstream:  # the noise at the logits comes from a critical op upstream: the margins are not the cause
        found = [
            replace(f, severity=Severity.WARNING,
                    evidence={**f.evidence, "noise_from": upstream[0].layers[0] if upstream[0].layers else ""})
            if f.mechanism == "output_margins" and f.severity is Severity.CRITICAL else f
            for f in found
        ]
    return tuple(sorted(found, key=lambda f: (SEVERITY_RANK[f.severity], -_num(f.score), min(f.positions, default=1 << 30))))


def _num(v: float) -> float:
    return 0.0 if v is None or math.isnan(v) else v


def _share(layers: list[LayerResult]) -> float:
    return sum(l.output_error_share or 0.0 for l in layers)


def _severity(ctx: Context, score: float, critical: bool = False) -> Severity:
    if critical or (ctx.loss >= LOSS and score >= CRITICAL_SHARE):
        return Severity.CRITICAL
    return Severity.WARNING if score >= WARNING_SHARE else Severity.INFO


def _finding(ctx, mechanism, layers, evidence, fix, score=None, critical=False) -> Finding:
    score = _share(layers) if score is None else score
    return Finding(
        mechanism=mechanism,
        severity=_severity(ctx, score, critical),
        positions=tuple(l.position for l in layers),
        layers=tuple(l.label for l in layers),
        op_types=tuple(sorted({l.op_type for l in layers})),
        evidence=evidence,
        fix=fix,
        score=score,
    )


@DETECTORS.register("kernel_defect")
def kernel_defect(ctx: Context) -> list[Finding]:
    bad = [l for l in ctx.diagnosis.layers if l.excess_db is not None and l.excess_db >= EXCESS_DB]
    out = []
    for op_type in sorted({l.op_type for l in bad}):
        group = [l for l in bad if l.op_type == op_type]
        worst = min(group, key=lambda l: l.isolated.sqnr_db)
        w = worst.weights
        out.append(
            _finding(
                ctx,
                "kernel_defect",
                group,
                {
                    "ops": len(group),
                    "op_type": op_type,
                    "worst_layer": worst.label,
                    "observed_sqnr_db": worst.isolated.sqnr_db,
                    "expected_sqnr_db": worst.expected.sqnr_db,
                    "excess_db": worst.excess_db,
                    "weights": "" if w is None else f"{w.storage} {w.quant.granularity if w.quant else ''} {w.kernel}".strip(),
                },
                f"avoid this kernel configuration for {op_type} (e.g. per-channel weights, or keep the ops in float) "
                "and report it upstream with the one-op reproduction",
                critical=worst.isolated.sqnr_db < DESTROYED_DB,
            )
        )
    return out


@DETECTORS.register("weight_range_disparity")
def weight_range_disparity(ctx: Context) -> list[Finding]:
    out = []
    for l in ctx.diagnosis.layers:
        r = l.weight_report
        if r is None or r.granularity != "per-tensor" or (l.excess_db or 0.0) >= EXCESS_DB:
            continue  # an op the kernel breaks is explained by the kernel, not its weights
        gain = r.granularity_gain_db
        if r.channel_range_ratio >= WEIGHT_RANGE_RATIO and gain >= GAIN_DB:
            out.append(
                _finding(
                    ctx,
                    "weight_range_disparity",
                    [l],
                    {
                        "channel_range_ratio": r.channel_range_ratio,
                        "weight_sqnr_db": r.sqnr_db_actual,
                        "per_channel_sqnr_db": r.sqnr_db_per_channel,
                        "collapsed_channels": r.collapsed_channels,
                        "channels": r.num_channels,
                        "isolated_sqnr_db": l.isolated.sqnr_db if l.isolated else math.nan,
                    },
                    "quantize this op's weights per channel",
                )
            )
    return out


@DETECTORS.register("activation_outliers")
def activation_outliers(ctx: Context) -> list[Finding]:
    out = []
    for l in _consumed_grids(ctx):
        s = l.float_stats
        top = max(abs(s.percentiles.get("99.9", math.nan)), abs(s.percentiles.get("0.1", math.nan)))
        peak = max(abs(s.max), abs(s.min))
        value_ratio = peak / top if top > 0 else math.inf if peak > 0 else math.nan
        channel_ratio = live_channel_range_ratio(s)
        crushed = l.grid.median_levels <= CRUSHED_LEVELS or _num(l.output_error_share) >= WARNING_SHARE
        if crushed and _suffers(ctx, l) and (channel_ratio >= RANGE_RATIO or _num(value_ratio) >= OUTLIER_RATIO):
            out.append(
                _finding(
                    ctx,
                    "activation_outliers",
                    _with_consumers(ctx, l),
                    {
                        "channel_range_ratio": channel_ratio,
                        "max_over_p99_9": value_ratio,
                        "median_levels": l.grid.median_levels,
                        "grid_size": l.grid.grid_size,
                        "grid": l.grid_mode,
                    },
                    "give the activation a per-channel or wider-bit (int16) grid, or move the scale of the outlier "
                    "channels into the next layer's weights (cross-layer equalisation)",
                )
            )
    return out


@DETECTORS.register("calibration_clipping")
def calibration_clipping(ctx: Context) -> list[Finding]:
    """One finding for all clipped tensors, in graph order: a calibration mismatch starts at the first of them."""
    clipped = [
        l for l in ctx.diagnosis.layers
        if l.float_stats is not None and l.grid_mode == "static" and (l.float_stats.clipped_share or 0.0) >= CLIP_SHARE
    ]
    if not clipped:
        return []
    first = clipped[0]
    worst = max(clipped, key=lambda l: l.float_stats.clipped_share)
    g = first.grid
    lo, hi = g.scale * (g.qmin - g.zero_point), g.scale * (g.qmin + g.grid_size - 1 - g.zero_point)
    evidence = {
        "tensors": len(clipped),
        "first_layer": first.label,
        "clipped_share": first.float_stats.clipped_share,
        "float_min": first.float_stats.min,
        "float_max": first.float_stats.max,
        "quant_min": lo,
        "quant_max": hi,
        "worst_layer": worst.label,
        "worst_clipped_share": worst.float_stats.clipped_share,
    }
    return [_finding(ctx, "calibration_clipping", clipped, evidence,
                     "calibrate on data like what the model sees (or widen the clipped ranges)")]


@DETECTORS.register("low_grid_coverage")
def low_grid_coverage(ctx: Context) -> list[Finding]:
    flagged = {p for f in activation_outliers(ctx) for p in f.positions}
    out = []
    for l in _consumed_grids(ctx):
        possible = min(l.grid.grid_size, math.prod(l.shape) if l.shape else 1)
        if l.position in flagged or l.grid.median_levels > FEW_LEVELS or possible < 4 * FEW_LEVELS:
            continue  # a 10-element vector on 10 levels is not a crushed grid
        if not _suffers(ctx, l):
            continue  # few levels that lose nothing (e.g. an input with few distinct values)
        out.append(
            _finding(
                ctx,
                "low_grid_coverage",
                _with_consumers(ctx, l),
                {
                    "median_levels": l.grid.median_levels,
                    "p5_levels": l.grid.p5_levels,
                    "median_span": l.grid.median_span,
                    "grid_size": l.grid.grid_size,
                    "grid": l.grid_mode,
                },
                "give this activation a finer grid (int16 activations) or keep its consumer in float",
            )
        )
    return out


@DETECTORS.register("output_margins")
def output_margins(ctx: Context) -> list[Finding]:
    """Flips the margin model explains, or margins below the output grid's step (which no noise model is needed for)."""
    m = ctx.diagnosis.margins
    if m is None or m.num_samples == 0 or not m.observed_flip_rate or m.observed_flip_rate < 0.01:
        return []
    out_layer = ctx.diagnosis.layers[-1] if ctx.diagnosis.layers else None
    step = out_layer.quant.scales[0] if out_layer and out_layer.quant and len(out_layer.quant.scales) == 1 else math.nan
    below_step = share_below(m, step) if not math.isnan(step) else 0.0
    explained = min(_num(m.explained_share), 1.0)
    if explained < 0.5 and below_step < 0.5:
        return []
    layers = [out_layer] if out_layer else []
    finding = _finding(
        ctx,
        "output_margins",
        layers,
        {
            "median_margin": m.top1_margin_median,
            "p10_margin": m.top1_margin_p10,
            "pair_noise_std": m.pair_noise_std,
            "share_below_noise": m.share_below_noise,
            "predicted_flip_rate": m.predicted_flip_rate,
            "observed_flip_rate": m.observed_flip_rate,
            "explained_share": m.explained_share,
            "output_step": step,
            "share_below_step": below_step,
            "num_classes": m.num_classes,
        },
        "reduce the noise at the logits (keep the head in float or int16, float outputs) or train with a larger margin",
        score=max(explained, below_step),
    )
    return [finding]


def share_below(m, value: float) -> float:
    """Share of samples whose float top-1 margin is below `value`, read off the margin histogram (linear in a bucket)."""
    import numpy as np

    edges, counts = np.asarray(m.bin_edges, dtype=np.float64), np.asarray(m.top1_counts, dtype=np.float64)
    total = counts.sum()
    if total == 0 or not value > 0:
        return 0.0
    upper = np.minimum(edges[1:], value)
    covered = np.clip((upper - edges[:-1]) / np.maximum(edges[1:] - edges[:-1], 1e-300), 0.0, 1.0)
    return float((counts * covered).sum() / total)


@DETECTORS.register("float_ops")
def float_ops(ctx: Context) -> list[Finding]:
    g = ctx.graph
    if g is None or g.qdq:  # QDQ: every op is written in float between (de)quantize pairs; the runtime fuses them
        return []
    integer = any(t.dtype in ("int8", "int16") for t in g.tensors.values() if not t.is_constant)
    if not integer:
        return []  # a dynamic-range or float model computes in float by design
    io = set(g.inputs) | set(g.outputs)
    inner = [
        op for op in g.ops
        if g.is_conversion(op) and not g.is_weight_dequantize(op)
        and not (set(op.inputs) & set(g.inputs)) and not (set(op.outputs) & io)
    ]
    floats = [
        op for op in g.ops
        if not g.is_conversion(op) and all(g.tensors[t].dtype == "float32" for t in op.outputs if t >= 0)
    ]
    if not inner and not floats:
        return []
    by_pos = {l.position: l for l in ctx.diagnosis.layers}
    layers = [by_pos[op.index] for op in floats if op.index in by_pos]
    return [
        Finding(
            mechanism="float_ops",
            severity=Severity.INFO,
            positions=tuple(op.index for op in floats + inner),
            layers=tuple(l.label for l in layers),
            op_types=tuple(sorted({op.type for op in floats + inner})),
            evidence={"float_ops": len(floats), "inserted_conversions": len(inner)},
            fix="check the converter's log for the ops it could not quantize; allow only int8 builtins to see why",
            score=math.nan,
        )
    ]


@DETECTORS.register("accumulated_drift")
def accumulated_drift(ctx: Context) -> list[Finding]:
    d = ctx.diagnosis
    if not d.layers or d.onset is not None:
        return []
    out = d.layers[-1]
    if not out.accumulated.sqnr_db < DRIFT_BELOW_DB:
        return []
    contributors = [l for l in d.layers if (l.output_error_share or 0.0) >= 0.01]
    largest = max((l.output_error_share or 0.0 for l in d.layers), default=0.0)
    if largest >= CRITICAL_SHARE:
        return []  # one op stands out: its own mechanism explains it better than drift
    return [
        Finding(
            mechanism="accumulated_drift",
            severity=_severity(ctx, 1.0 - largest),
            positions=tuple(l.position for l in contributors),
            layers=tuple(l.label for l in contributors),
            op_types=tuple(sorted({l.op_type for l in contributors})),
            evidence={"output_sqnr_db": out.accumulated.sqnr_db, "contributors": len(contributors), "largest_share": largest},
            fix="use a finer scheme throughout (per-channel weights, int16 activations) rather than fixing one op",
            score=1.0 - largest,
        )
    ]


def _consumed_grids(ctx: Context) -> list[LayerResult]:
    """Layers whose activation is quantized (static grid, or on the fly by a hybrid consumer) with statistics.

    Tensors already destroyed upstream (accumulated SQNR below `DESTROYED_DB`) are left out: their grid shows the
    upstream damage, not a property of the activation.
    """
    return [
        l for l in ctx.diagnosis.layers
        if l.grid is not None and l.float_stats is not None and l.grid.num_samples
        and not l.accumulated.sqnr_db < DESTROYED_DB
    ]


def live_channel_range_ratio(stats) -> float:
    """Widest channel range / median range of the channels that vary (dead channels, range 0, are left out)."""
    import numpy as np

    ranges = np.asarray(stats.channel_max, dtype=np.float64) - np.asarray(stats.channel_min, dtype=np.float64)
    live = ranges[np.isfinite(ranges) & (ranges > 0)]
    return float(live.max() / np.median(live)) if live.size else math.nan


def _suffers(ctx: Context, layer: LayerResult) -> bool:
    """Whether the activation or an op reading it ends up below `SUFFERS_BELOW_DB`: a grid problem that costs nothing
    measurable is not a suspect."""
    return min(l.accumulated.sqnr_db for l in _with_consumers(ctx, layer)) < SUFFERS_BELOW_DB


def _with_consumers(ctx: Context, layer: LayerResult) -> list[LayerResult]:
    """The layer plus those that read it: a crushed activation hurts where it is consumed, so their error counts too."""
    consumers = [l for l in ctx.diagnosis.layers if layer.float_tensor in l.input_tensors]
    return [layer] + consumers


from quantdoctor.diagnose import mixed_ranges as _mixed  # noqa: E402  (registers its detector; it imports from here)
