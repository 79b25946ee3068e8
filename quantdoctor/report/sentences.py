"""Every piece of human text the reports show, built once from a `Diagnosis` so the terminal and HTML views agree."""

from __future__ import annotations

import math
from collections import Counter

from quantdoctor.diagnose.results import Diagnosis, LayerResult, ModelMetrics, RunInfo

DASH = "-"


def fmt_db(v: float | None) -> str:
    """A decibel value with one decimal ("inf" for an exact match, "-" for missing)."""
    return _fmt(v, ".1f")


def fmt_ratio(v: float | None) -> str:
    """A ratio (agreement, accuracy, cosine) with three decimals."""
    return _fmt(v, ".3f")


def fmt_num(v: float | None) -> str:
    """Any other number in three significant digits (scales, errors, KL)."""
    return _fmt(v, ".3g")


def fmt_pct(v: float) -> str:
    return f"{100.0 * v:.1f}%"


def _fmt(v: float | None, spec: str) -> str:
    if v is None:
        return DASH
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return format(v, spec)


def weights_label(layer: LayerResult) -> str:
    """Weight storage and granularity, e.g. "int8 per-channel"; "-" for an op without weights."""
    w = layer.weights
    if w is None:
        return DASH
    return f"{w.storage} {w.quant.granularity}" if w.quant else w.storage


def act_dtype(layer: LayerResult) -> str:
    # No quantization parameters means the converter kept this activation in float (e.g. dynamic range).
    return layer.quant.dtype if layer.quant else "float"


def header_rows(run: RunInfo) -> list[tuple[str, str]]:
    """What was compared, as (label, value) rows."""
    quantized = run.quantized_model
    if run.scheme and run.scheme not in quantized:
        quantized = f"{quantized} (scheme {run.scheme})"
    return [
        ("Float model", f"{run.float_model} ({run.float_kind})"),
        ("Quantized model", quantized),
        ("Data", run.data),
        ("Preprocess", run.preprocess),
        ("Calibration", run.calibration),
        ("Samples", f"{run.num_eval_samples} (batch {run.batch_size})"),
    ]


def metric_rows(m: ModelMetrics) -> list[tuple[str, str]]:
    """Model-level numbers as (label, value) rows; accuracy rows only when labels exist."""
    rows = [
        ("Top-1 agreement with float", fmt_ratio(m.top1_agreement)),
        (f"Top-{m.k} agreement with float", fmt_ratio(m.topk_agreement)),
    ]
    if m.num_labelled > 0:
        rows += [
            ("Top-1 accuracy (float → quantized)", f"{fmt_ratio(m.float_top1)} → {fmt_ratio(m.quant_top1)}"),
            (f"Top-{m.k} accuracy (float → quantized)", f"{fmt_ratio(m.float_topk)} → {fmt_ratio(m.quant_topk)}"),
            ("Labelled samples", f"{m.num_labelled} of {m.num_samples}"),
        ]
    rows += [
        ("Mean KL(float || quantized)", fmt_num(m.kl_mean)),
        ("Logit SQNR", f"{fmt_db(m.logit_sqnr_db)} dB"),
        ("Logit cosine", fmt_ratio(m.logit_cosine)),
    ]
    return rows


def worst_class_lines(m: ModelMetrics, n: int = 5) -> list[str]:
    """One line per class the quantized model loses most, worst first (accuracy with labels, agreement without)."""
    if m.num_labelled > 0:
        return [
            f"class {c.class_index}: accuracy {fmt_ratio(c.float_rate)} → {fmt_ratio(c.quant_rate)} "
            f"({_plural(c.support, 'sample')})"
            for c in m.worst_classes[:n]
        ]
    return [
        f"class {c.class_index}: {round(c.quant_rate * c.support)} of {_plural(c.support, 'float prediction')} kept"
        for c in m.worst_classes[:n]
    ]


WORST_COLUMNS = ("Pos", "Layer", "Op", "SQNR", "In", "Drop", "Cosine", "RMSE/scale", "Weights", "Act")


def worst_title(n: int) -> str:
    return f"Worst layers: top {n} by SQNR drop from input to output (SQNR, In, Drop in dB; capped at 60 dB)"


def worst_layer_row(layer: LayerResult) -> tuple[str, ...]:
    """One row of the worst-layers table, matching `WORST_COLUMNS`."""
    return (
        str(layer.position),
        layer.label,
        layer.op_type,
        fmt_db(layer.accumulated.sqnr_db),
        fmt_db(layer.input_sqnr_db),
        fmt_db(layer.sqnr_drop_db),
        fmt_ratio(layer.accumulated.cosine_mean),
        fmt_num(layer.rmse_over_scale),
        weights_label(layer),
        act_dtype(layer),
    )


def onset_sentence(d: Diagnosis) -> str:
    """Where the error starts, in one sentence."""
    onset = d.onset
    if onset is None:
        lowest = _lowest(d.layers)
        if lowest is None:
            return "No error onset: no tensor could be matched."
        return (
            "No error onset: no layer's SQNR drops sharply; the lowest is "
            f"{fmt_db(lowest.accumulated.sqnr_db)} dB at {lowest.label} (position {lowest.position})."
        )
    op = next((l.op_type for l in d.layers if l.position == onset.position), "?")
    where = f"Error onset: layer {onset.label} ({op}, position {onset.position})"
    if onset.input_sqnr_db is None:
        return f"{where}: SQNR is {fmt_db(onset.sqnr_db)} dB with no matched input."
    return f"{where}: SQNR falls from {fmt_db(onset.input_sqnr_db)} dB at its input to {fmt_db(onset.sqnr_db)} dB."


def depth_caption(d: Diagnosis) -> str:
    """Caption of the error-by-depth figure, computed from the plotted numbers."""
    layers = sorted((l for l in d.layers if not math.isnan(l.accumulated.sqnr_db)), key=lambda l: l.position)
    if not layers:
        return "No matched tensor has an SQNR to plot."
    last = layers[-1]
    if d.onset is None:
        lowest = _lowest(layers)
        text = (
            f"SQNR stays at or above {fmt_db(lowest.accumulated.sqnr_db)} dB over "
            f"{_plural(len(layers), 'matched tensor')} with no sharp drop (lowest at {lowest.label}, "
            f"position {lowest.position})"
        )
        tail = last is not lowest
    else:
        before = [l for l in layers if l.position < d.onset.position]
        at = f"{fmt_db(d.onset.sqnr_db)} dB at {d.onset.label}"
        if before:
            floor = _floor_phrase(min(l.accumulated.sqnr_db for l in before))
            text = f"SQNR {floor} for the first {_plural(len(before), 'tensor', one='')}, then falls to {at}"
        else:
            text = f"SQNR is already {at}, the first matched tensor"
        tail = last.position != d.onset.position
    if tail:
        text += f"; the last tensor, {last.label}, ends at {fmt_db(last.accumulated.sqnr_db)} dB"
    return text + "."


def coverage_sentence(d: Diagnosis) -> str:
    c = d.coverage
    return (
        f"Matched {c.matched}/{c.float_tensors} float tensors ({fmt_pct(c.ratio)}); "
        f"conv/dense layers {c.weighted_layers_matched}/{c.weighted_layers} ({fmt_pct(c.weighted_ratio)})."
    )


def unmatched_sentence(d: Diagnosis, n: int = 3) -> str:
    """How many tensors went unmatched and the most common reasons."""
    if not d.unmatched:
        return "Every tensor was matched."
    counts = Counter(u.reason for u in d.unmatched).most_common()
    shown = "; ".join(f"{k}x {reason}" for reason, k in counts[:n])
    rest = len(counts) - n
    more = f"; {rest} other reason{'s' if rest > 1 else ''}" if rest > 0 else ""
    return f"Unmatched: {len(d.unmatched)} ({shown}{more})."


def timing_sentence(run: RunInfo) -> str:
    if not run.seconds:
        return "No timings recorded."
    parts = ", ".join(f"{k} {v:.1f} s" for k, v in run.seconds.items())
    return f"Took {sum(run.seconds.values()):.1f} s ({parts})."


def _floor_phrase(v: float) -> str:
    """ "stays above 30 dB" for a minimum of 31.2: a round bound the reader can hold on to."""
    if math.isinf(v) and v > 0:
        return "is exact (inf dB)"
    step = 10.0 if v >= 10 else 1.0
    bound = math.floor(v / step) * step
    if bound == v:
        return f"stays at or above {bound:.0f} dB"
    return f"stays above {bound:.0f} dB"


def _plural(n: int, noun: str, one: str = "1 ") -> str:
    """ "4 tensors", and for one: "1 tensor" (or `one` + "tensor", so "the first tensor" reads right)."""
    return f"{one}{noun}" if n == 1 else f"{n} {noun}s"


def _lowest(layers) -> LayerResult | None:
    finite = [l for l in layers if not math.isnan(l.accumulated.sqnr_db)]
    return min(finite, key=lambda l: (l.accumulated.sqnr_db, l.position)) if finite else None


SENSITIVITY_COLUMNS = ("Pos", "Layer", "Op", "Exact", "Recovered", "Alone quantized", "Cause")


def sensitivity_row(row) -> tuple[str, ...]:
    """One row of the sensitivity table (`diagnose.verification.Sensitivity`), matching `SENSITIVITY_COLUMNS`."""
    rec = row.exact.recovery
    return (
        str(row.position),
        row.label,
        row.op_type,
        f"{row.exact.top1_agreement:.2f}",
        "-" if rec != rec else f"{100 * rec:.0f}%",
        "-" if row.alone is None else f"{row.alone.top1_agreement:.2f}",
        "yes" if row.in_causes else "",
    )
