"""Findings and output margins in plain sentences: the one place a `Finding` becomes text (terminal, HTML, compare)."""

from __future__ import annotations

import math
from typing import Any, Callable

from quantdoctor.report.sentences import fmt_db, fmt_num

_Render = Callable[[dict[str, Any], str], str]


def _pct(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    return f"{100.0 * v:.1f}%" if v < 0.1 else f"{100.0 * v:.0f}%"


def _times(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    return "unbounded" if math.isinf(v) else f"{v:.0f}×" if v >= 10 else f"{v:.1f}×"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _names(layers: tuple[str, ...], n: int = 3) -> str:
    shown = ", ".join(layers[:n])
    return shown + (f" and {len(layers) - n} more" if len(layers) > n else "")


def _kernel_defect(e: dict[str, Any], where: str) -> str:
    return (
        f"{_count(e['ops'], e['op_type'] + ' op')} ({where}) compute{'s' if e['ops'] == 1 else ''} far worse than "
        f"{'its' if e['ops'] == 1 else 'their'} own quantization parameters predict: "
        f"at {e['worst_layer']} the runtime gives {fmt_db(e['observed_sqnr_db'])} dB SQNR where its dequantized weights "
        f"and input grid predict {fmt_db(e['expected_sqnr_db'])} dB ({fmt_db(e['excess_db'])} dB excess). "
        f"This is a converter or kernel defect ({e['weights'] or 'weights as stored'}), not quantization noise."
    )


def _weight_range(e: dict[str, Any], where: str) -> str:
    collapsed = e.get("collapsed_channels") or 0
    tail = f"; {collapsed} of {e['channels']} channels collapse to ≤ 2 levels" if collapsed else ""
    return (
        f"{where}: per-tensor weights whose output channels span a {_times(e['channel_range_ratio'])} range of "
        f"magnitudes, so one scale leaves the small channels few levels{tail}. Weight SQNR is "
        f"{fmt_db(e['weight_sqnr_db'])} dB; per-channel weights would give {fmt_db(e['per_channel_sqnr_db'])} dB."
    )


def _outliers(e: dict[str, Any], where: str) -> str:
    grid = "its per-sample int8 grid" if e.get("grid") == "dynamic" else "its grid"
    return (
        f"{where}: a few channels or values set the activation's range (widest / median channel range "
        f"{_times(e['channel_range_ratio'])}, max / 99.9th percentile {_times(e['max_over_p99_9'])}), so a typical "
        f"sample sits on {fmt_num(e['median_levels'])} of the {e['grid_size']} levels of {grid}."
    )


def _clipping(e: dict[str, Any], where: str) -> str:
    text = (
        f"{e['tensors']} tensor(s) clip ({where}). The first, {e['first_layer']}, has {_pct(e['clipped_share'])} of its "
        f"float values outside the quantized range [{fmt_num(e['quant_min'])}, {fmt_num(e['quant_max'])}] (they reach "
        f"[{fmt_num(e['float_min'])}, {fmt_num(e['float_max'])}])"
    )
    if e["worst_layer"] != e["first_layer"]:
        text += f"; the most clipped is {e['worst_layer']} ({_pct(e['worst_clipped_share'])})"
    return text + ": the calibration data did not cover what the model sees."


def _coverage(e: dict[str, Any], where: str) -> str:
    return (
        f"{where}: one sample's values occupy a median of {fmt_num(e['median_levels'])} levels (5th percentile "
        f"{fmt_num(e['p5_levels'])}) of the {e['grid_size']}-level grid, spanning {_pct(e['median_span'])} of it."
    )


def _margins(e: dict[str, Any], where: str) -> str:
    text = (
        f"The float model's top-1 margins are small against the quantization noise at the logits ({where}): median "
        f"margin {fmt_num(e['median_margin'])} against a noise std of {fmt_num(e['pair_noise_std'])} on the top-1 / "
        f"top-2 difference, {_pct(e['share_below_noise'])} of samples below it. A Gaussian noise model predicts "
        f"{_pct(e['predicted_flip_rate'])} flipped predictions, {_pct(e['observed_flip_rate'])} observed: the margins "
        f"explain {_pct(min(e['explained_share'], 1.0))} of the flips."
    )
    step = e.get("output_step")
    if isinstance(step, float) and not math.isnan(step):
        if step >= e["median_margin"]:
            text += (
                f" The output grid's step ({fmt_num(step)}) is larger than the median margin: "
                f"{_pct(e['share_below_step'])} of samples have a margin the quantized logits cannot resolve."
            )
        else:
            text += f" The output grid's step ({fmt_num(step)}) is {_times(e['median_margin'] / step)} below the median margin."
    if e.get("noise_from"):
        text += f" The noise itself comes from {e['noise_from']} upstream: fix that first."
    return text


def _float_ops(e: dict[str, Any], where: str) -> str:
    return (
        f"{e['float_ops']} op(s) compute in float inside the integer model and {e['inserted_conversions']} "
        f"(de)quantize op(s) were inserted between integer ops ({where or 'no matched layer'})."
    )


def _drift(e: dict[str, Any], where: str) -> str:
    return (
        f"No single op stands out (the largest builds up {_pct(e['largest_share'])} of the output error), but "
        f"{e['contributors']} ops each add a little and the output SQNR ends at {fmt_db(e['output_sqnr_db'])} dB."
    )


def _measured(e: dict[str, Any], where: str) -> str:
    iso = e.get("isolated_sqnr_db")
    proxy = (f" Its proxies did not single it out: {e['worst_layer']} alone has {fmt_db(iso)} dB isolated SQNR."
             if isinstance(iso, float) and iso >= 25 else "")
    return (f"{_count(e['ops'], 'op')} ({where}) carry the loss, located by group testing with counterfactuals at the "
            f"output; no mechanism of the catalogue names {'it' if e['ops'] == 1 else 'them'}.{proxy}")


def _mixed_ranges(e: dict[str, Any], where: str) -> str:
    part = "input" if e.get("grouped_by") == "inputs" else "channel group"
    levels = e["occupied_levels"]
    text = (
        f"{e['op_type']} '{e['op']}' shares one {e['dtype']} scale ({fmt_num(e['shared_scale'])}) between parts "
        f"spanning {fmt_num(e['wide_min'])}..{fmt_num(e['wide_max'])} ({e['wide_part']}) and "
        f"{fmt_num(e['small_min'])}..{fmt_num(e['small_max'])} ({e['small_part']}, {_times(e['range_ratio'])} "
        f"narrower): the small {part} spans {fmt_num(e['small_levels'])} steps and rounds to "
        f"{_count(levels, 'level')}; its SQNR is {fmt_db(e['small_sqnr_db'])} dB against "
        f"{fmt_db(e['wide_sqnr_db'])} dB for the other"
    )
    if e.get("sqnr_basis") != "measured per channel group":
        text += " (values spread over each range, rounded on the shared grid)"
    before = e.get("small_input_sqnr_db")
    if isinstance(before, float) and not math.isnan(before):
        text += f"; it had {fmt_db(before)} dB before {e['op']}"
    if e.get("requantize_op", -1) >= 0:
        text += f", and the QUANTIZE op {e['requantize_op']} in front of {e['op']} moves it onto the shared scale"
    upstream = list(zip(e.get("crushed_upstream", ()), e.get("crushed_upstream_levels", ())))
    if upstream:
        names = ", ".join(f"{name} ({fmt_num(steps)} steps)" for name, steps in upstream)
        text += (f". The converter gave the same scale to {names} upstream, whose own "
                 f"{'range spans' if len(upstream) == 1 else 'ranges span'} only that many steps of it")
    return text + "."


def _foreign(e: dict[str, Any], where: str) -> str:
    return (f"The quantized model was not made from this float model: {e['reason']}. Diagnosed anyway (--force); the "
            "numbers below compare two different models.")


MECHANISM_TEXT: dict[str, tuple[str, _Render]] = {
    "foreign_quantized_model": ("quantized model made from another float model", _foreign),
    "measured_cause": ("cause located by measurement", _measured),
    "kernel_defect": ("converter/kernel defect (observed ≫ expected)", _kernel_defect),
    "weight_range_disparity": ("weight range disparity under per-tensor quantization", _weight_range),
    "activation_outliers": ("activation outliers crush the grid", _outliers),
    "calibration_clipping": ("clipping from calibration mismatch", _clipping),
    "low_grid_coverage": ("low per-sample grid coverage", _coverage),
    "output_margins": ("output margins vs quantization noise", _margins),
    "float_ops": ("ops left in float / inserted (de)quantize pairs", _float_ops),
    "accumulated_drift": ("drift accumulated over many small errors", _drift),
    "mixed_ranges": ("mixed ranges on one scale", _mixed_ranges),
}
"""Mechanism → (title, sentence builder). The catalogue itself is documented in `quantdoctor.diagnose.findings`."""


def mechanism_title(mechanism: str) -> str:
    return MECHANISM_TEXT.get(mechanism, (mechanism, None))[0]


def finding_sentence(finding, diagnosis=None) -> str:
    """What the finding says, its share of the output error, and the fix — as plain sentences."""
    _, build = MECHANISM_TEXT[finding.mechanism]
    where = _names(finding.layers) if finding.layers else ""
    text = build(finding.evidence, where)
    score = finding.score
    if finding.mechanism == "mixed_ranges" and isinstance(score, float) and not math.isnan(score):
        text += f" Score {_pct(score)}: the larger of its share of the output error and the small part's lost signal."
    elif isinstance(score, float) and not math.isnan(score) and finding.mechanism not in ("output_margins", "accumulated_drift"):
        text += f" It builds up about {_pct(score)} of the output error."
    if finding.evidence.get("explained_by"):
        text += f" A symptom of the mixed ranges at {finding.evidence['explained_by']}."
    if finding.fix:
        text += f" Fix: {finding.fix}."
    check = check_sentence(finding, diagnosis)
    if finding.role == "context":
        cause = finding.evidence.get("cause")
        text = f"Context{' for ' + cause if cause else ''}: " + text + " This makes the model sensitive; it is not the cause."
    text += " " + check if check else ""
    fix = finding.fix_check
    if fix is not None:
        text += (f" Fix applied with the real quantizer ({fix.action}): {_metric(fix.outcome)} {fix.before:.2f} → "
                 f"{fix.outcome.top1_agreement:.2f} on {fix.samples} samples ({_pct(fix.outcome.recovery)} of the loss "
                 "recovered).")
    return text


def check_sentence(finding, diagnosis=None) -> str:
    """What the finding's counterfactual measured at the output, in one sentence ("" when not measured)."""
    c = finding.check
    if c is None:
        return ""
    v = getattr(diagnosis, "verification", None)
    before = f"{v.baseline.top1_agreement:.2f}" if v is not None else "the quantized value"
    samples = f" on {v.samples} samples" if v is not None else ""
    what = f"making {_names(finding.layers, 2)} exact" if finding.layers else "making its ops exact"
    if finding.verified:
        return (f"Verified: {what} brings {_metric(c)} from {before} to {c.top1_agreement:.2f}{samples} "
                f"({_pct(c.recovery)} of the loss recovered).")
    return f"Not verified: {what} gives {c.top1_agreement:.2f} ({_pct(c.recovery)} of the loss recovered{samples})."


def _metric(outcome) -> str:
    from quantdoctor.report.outputs_text import outcome_metric

    return outcome_metric(outcome)


def verification_sentence(diagnosis) -> str:
    """The located causes and the cost of locating them, or why nothing was located ("" when not run)."""
    v = getattr(diagnosis, "verification", None)
    if v is None:
        return ""
    early = f" ({v.decided_early} decided before their last batch)" if v.decided_early else ""
    plural = "" if v.evaluations == 1 else "s"
    cost = f"{v.evaluations} evaluation{plural}{early}, {v.seconds:.1f} s, {v.samples} samples"
    if not v.causes:
        return f"Verification ({cost}): {v.note}"
    labels = list(v.cause_labels) or [f"op {p}" for p in v.causes]
    return (f"Verification ({cost}): making {_names(tuple(labels), 4)} exact brings {_metric(v.baseline)} from "
            f"{v.baseline.top1_agreement:.2f} to {v.cause_outcome.top1_agreement:.2f}; every op exact gives "
            f"{v.all_exact.top1_agreement:.2f}.")


def findings_lines(diagnosis, n: int | None = None) -> list[tuple[str, str, str]]:
    """(severity, title, sentence) for the ranked findings (the first `n`)."""
    found = diagnosis.findings if n is None else diagnosis.findings[:n]
    return [(f.severity.value, mechanism_title(f.mechanism), finding_sentence(f, diagnosis)) for f in found]


def no_findings_sentence(diagnosis) -> str:
    return "No finding: no op departs from what its quantization parameters predict and no mechanism of the catalogue applies."


def margins_sentence(m) -> str:
    """The output margins against the logit noise, and how much of the flips they explain."""
    if m is None or not m.num_samples:
        return "Output margins: not measured (the model has a single output value)."
    text = (
        f"Output margins (float top-1 − top-2 logit): median {fmt_num(m.top1_margin_median)}, 10th percentile "
        f"{fmt_num(m.top1_margin_p10)}; the quantization noise on that difference has std {fmt_num(m.pair_noise_std)} "
        f"({_pct(m.share_below_noise)} of samples have a smaller margin). Predicted flip rate "
        f"{_pct(m.predicted_flip_rate)}, observed {_pct(m.observed_flip_rate)}"
    )
    if m.observed_flip_rate and not math.isnan(m.explained_share):
        text += f": the margins explain {_pct(min(m.explained_share, 1.0))} of the flips"
        if m.explained_share < 0.5:
            text += " — the flips come from more noise than the margins can absorb, not from small margins"
    return text + "."
