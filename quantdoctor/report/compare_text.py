"""A `Comparison` in words: one sentence per explanation (built from its evidence only), and the terminal view."""

from __future__ import annotations

import io
import math
from typing import Any

from quantdoctor.report.findings_text import mechanism_title
from quantdoctor.report.sentences import fmt_db, fmt_num, fmt_ratio

METRIC_TITLES = {
    "top1_agreement": "top-1 agreement with float",
    "topk_agreement": "top-k agreement with float",
    "float_top1": "float top-1 accuracy",
    "quant_top1": "quantized top-1 accuracy",
    "float_topk": "float top-k accuracy",
    "quant_topk": "quantized top-k accuracy",
    "logit_sqnr_db": "logit SQNR (dB)",
}


def _pct(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    return f"{100.0 * v:.1f}%"


def _pts(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "nan"
    return f"{100.0 * v:+.1f} points"


def _margins(e: dict[str, Any]) -> str:
    return (
        f"{e['worse']}'s float margins are smaller: median top-1 − top-2 logit margin {fmt_num(e['median_worse'])} "
        f"({e['num_classes_worse']} classes) against {fmt_num(e['median_better'])} "
        f"({e['num_classes_better']} classes), "
        f"10th percentile {fmt_num(e['p10_worse'])} against {fmt_num(e['p10_better'])}. With {e['better']}'s noise, "
        f"{e['worse']}'s margins alone would flip {_pct(e['predicted_swap'])} of samples against "
        f"{_pct(e['predicted_better'])} for {e['better']}: {_pts(e['margin_part'])} of the observed "
        f"{_pts(e['observed_gap'])} gap in flip rate ({_share(e['margin_part'], e['observed_gap'])} of it)."
    )


def _noise(e: dict[str, Any]) -> str:
    head = ""
    if "head" in e:
        head = (
            f" The head ({e['head']}) has {fmt_db(e['head_sqnr_worse'])} dB SQNR in {e['worse']} against "
            f"{fmt_db(e['head_sqnr_better'])} dB in {e['better']}."
        )
    return (
        f"{e['worse']} has more quantization noise on its decisive logit difference: "
        f"std {fmt_num(e['noise_std_worse'])} "
        f"against {fmt_num(e['noise_std_better'])} (noise RMS per logit {fmt_num(e['noise_rms_worse'])} against "
        f"{fmt_num(e['noise_rms_better'])}); on {e['worse']}'s margins it adds {_pts(e['noise_part'])} of predicted "
        f"flips ({_share(e['noise_part'], e['observed_gap'])} of the observed gap).{head} Together the margin model "
        f"predicts flip rates {_pct(e['predicted_worse'])} ({e['worse']}) and {_pct(e['predicted_better'])} "
        f"({e['better']}) against observed {_pct(e['observed_worse'])} and {_pct(e['observed_better'])}."
    )


def _parting(e: dict[str, Any]) -> str:
    return (
        f"The two part at {e['layer']} ({e['op_type']}): {e['worse']}'s accumulated SQNR there is "
        f"{fmt_db(e['sqnr_worse'])} dB against {fmt_db(e['sqnr_better'])} dB ({fmt_db(e['deficit_db'])} dB lower, "
        f"threshold {fmt_db(e['threshold_db'])} dB); at the head ({e['head']}) {e['worse']} is "
        f"{fmt_db(e['head_deficit_db'])} dB lower."
    )


def _layer_only(e: dict[str, Any]) -> str:
    return (
        f"{e['layer']} ({e['op_type']}) adds more error of its own in {e['worse']} only: "
        f"{fmt_db(e['own_sqnr_worse'])} dB "
        f"against {fmt_db(e['own_sqnr_better'])} dB ({fmt_db(e['deficit_db'])} dB worse)."
    )


def _finding_only(e: dict[str, Any]) -> str:
    layers = ", ".join(e["layers"][:3]) + (f" and {len(e['layers']) - 3} more" if len(e["layers"]) > 3 else "")
    score = e.get("finding_score")
    # output_margins and accumulated_drift score an explained share of flips, not a share of the output error.
    plain = score is None or math.isnan(score) or e["mechanism"] in ("output_margins", "accumulated_drift")
    share = "" if plain else f", accounting for about {_pct(score)} of its output error"
    return (
        f"Only {e['worse']} has the finding '{mechanism_title(e['mechanism'])}' ({e['severity']}) at {layers}{share}; "
        f"the other model has no such finding there."
    )


def _no_gap(e: dict[str, Any]) -> str:
    return (
        f"No gap to explain: A flips {_pct(e['flip_rate_a'])} and B {_pct(e['flip_rate_b'])} of samples, less than one "
        f"sample's worth apart ({e['num_samples']} samples)."
    )


def _share(part: float, whole: float) -> str:
    if not whole or math.isnan(part) or math.isnan(whole):
        return "an unknown share"
    return f"{100.0 * part / whole:.0f}%"


def _verified(e: dict[str, Any]) -> str:
    from quantdoctor.report.findings_text import mechanism_title

    layers = ", ".join(e["layers"][:3]) + (f" and {len(e['layers']) - 3} more" if len(e["layers"]) > 3 else "")
    other = {"no cause located": f"{e['better']} has no such op (its agreement is {e['better_agreement']:.2f} and "
                                 "no set of its ops recovers a loss)",
             "other causes": f"{e['better']} has no verified cause on these layers"}.get(
        e["better_note"], f"{e['better']} has no verified cause there")
    return (
        f"Fixing {layers} in {e['worse']} ({mechanism_title(e['mechanism'])}; the op computed by its float twin on the "
        f"inputs the quantized model gives it) brings {e['worse']}'s top-1 agreement from {e['before']:.2f} to "
        f"{e['after']:.2f} on {e['samples']} samples ({_pct(e['recovery'])} of its loss recovered); {other}."
    )


_BUILDERS = {
    "verified_cause": _verified,
    "margins": _margins,
    "logit_noise": _noise,
    "parting_layer": _parting,
    "layer_only_in": _layer_only,
    "finding_only_in": _finding_only,
    "no_gap": _no_gap,
}


def explanation_sentence(kind, evidence: dict[str, Any]) -> str:
    """The sentence a human reads for one explanation, from its evidence numbers only."""
    return _BUILDERS[getattr(kind, "value", kind)](evidence)


def render_text(comparison, width: int = 100) -> str:
    """The terminal view of a comparison as plain text, `width` columns wide."""
    from rich.console import Console

    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, legacy_windows=False)
    render(comparison, console)
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


def render(c, console) -> None:
    """Print the comparison: both runs, the metrics side by side, the ranked explanations, the alignment."""
    from rich import box
    from rich.table import Table

    for side, name, d in (("A", c.name_a, c.a), ("B", c.name_b, c.b)):
        console.print(f"{side}: {name} — {d.run.quantized_model}; evaluated on {d.run.data}")
    table = Table(box=box.SIMPLE, title="quantized vs float, each model")
    for col in ("metric", "A", "B", "B − A"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for row in metric_rows(c):
        table.add_row(*row)
    console.print(table)
    console.print(gap_sentence(c))
    console.print("What explains the gap (ranked):")
    for i, e in enumerate(c.explanations, 1):
        console.print(f" {i}. {e.sentence}")
    console.print(alignment_sentence(c))


def metric_rows(c) -> list[tuple[str, str, str, str]]:
    """(metric title, A, B, B − A) as text for every metric either side has (shared by the terminal and HTML)."""
    rows = []
    # k of the classifier's top-k; a side without classifier metrics (a detector) has no top-k rows to title.
    k = next((d.model.k for d in (c.a, c.b) if d.model is not None), "k")
    for m in c.metrics:
        if m.a is None and m.b is None:
            continue
        fmt = fmt_db if m.name.endswith("_db") else fmt_ratio
        gap = m.gap_points
        gap_text = "-" if gap is None else (f"{gap:+.1f} dB" if m.name.endswith("_db") else f"{gap:+.1f} pts")
        rows.append((METRIC_TITLES[m.name].replace("top-k", f"top-{k}"), fmt(m.a), fmt(m.b), gap_text))
    return rows


def gap_sentence(c) -> str:
    """Which model loses more top-1 agreement with its float model, in points (shared by the terminal and HTML)."""
    gap = c.gap_points
    if math.isnan(gap) or gap == 0:
        return "A and B lose the same share of top-1 agreement."
    more, less = ("B", "A") if gap > 0 else ("A", "B")
    return f"{more} loses {abs(gap):.1f} points more top-1 agreement with its float model than {less}."


def alignment_sentence(c) -> str:
    """How many layers were aligned and how, and the first few unaligned ones."""
    by_label = sum(1 for p in c.layers if p.method.value == "label")
    return (
        f"Layers: {len(c.layers)} aligned ({by_label} by Keras label, {len(c.layers) - by_label} by position); "
        f"{len(c.unaligned)} unaligned" + (": " + ", ".join(f"{u.side.upper()}:{u.label}" for u in c.unaligned[:6])
                                           if c.unaligned else ".")
    )
