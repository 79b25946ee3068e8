"""The ranked explanations of a `Comparison`: which measured differences account for the gap, and how much of it.

Everything is phrased from the worse side W (the one whose top-1 agreement with its float model is lower) against the
better side B. Explanations with a measured share of the observed gap (margins, logit noise) rank first, by that share;
the layer and finding differences follow (they say where, not how much). See `diagnose/compare.py` for the catalogue.
"""

from __future__ import annotations

import math
from typing import Any

from quantdoctor.diagnose.compare import (
    DEPART_DB,
    MAX_LAYER_EXPLANATIONS,
    PART_DB,
    Comparison,
    Explanation,
    ExplanationKind,
    predicted_flip_rate,
)

_ORDER = {
    ExplanationKind.VERIFIED_CAUSE: -1,
    ExplanationKind.MARGINS: 0,
    ExplanationKind.LOGIT_NOISE: 1,
    ExplanationKind.PARTING_LAYER: 2,
    ExplanationKind.LAYER_ONLY_IN: 3,
    ExplanationKind.FINDING_ONLY_IN: 4,
    ExplanationKind.NO_GAP: 5,
}


def explain(c: Comparison) -> tuple[Explanation, ...]:
    """All explanations of `c`, ranked: measured share of the gap (descending), then kind, then depth."""
    from quantdoctor.report.compare_text import explanation_sentence

    fa, fb = 1.0 - c.a.model.top1_agreement, 1.0 - c.b.model.top1_agreement
    worse = "b" if fb >= fa else "a"
    gap = abs(fb - fa)
    n = min(c.a.model.num_samples, c.b.model.num_samples)
    found: list[tuple[ExplanationKind, dict[str, Any], float]] = []
    if math.isnan(gap) or gap * max(n, 1) < 1.0:  # less than one sample's worth apart
        found.append((ExplanationKind.NO_GAP, {"flip_rate_a": fa, "flip_rate_b": fb, "num_samples": n}, math.nan))
    else:
        found += _verified_causes(c, worse)
        found += _margin_parts(c, worse, gap)
        found += _parting(c, worse)
        found += _layers_only_in(c, worse)
        found += _findings_only_in(c, worse)
    # A proven cause leads (it names what to fix); the rest rank by their measured share of the gap.
    ranked = sorted(found, key=lambda e: (e[0] is not ExplanationKind.VERIFIED_CAUSE, -_num(e[2]), _ORDER[e[0]],
                                          e[1].get("position", 0)))
    return tuple(Explanation(kind, ev, explanation_sentence(kind, ev), score) for kind, ev, score in ranked)


def _margin_parts(c: Comparison, worse: str, gap: float) -> list:
    """Split the margin model's predicted gap into a margin part and a noise part (see the compare module docstring)."""
    mw, mb = (c.margins_b, c.margins_a) if worse == "b" else (c.margins_a, c.margins_b)
    if mw is None or mb is None:
        return []
    sw, sb = mw.pair_noise_std, mb.pair_noise_std
    uw, ub = mw.pair_noise_mean, mb.pair_noise_mean
    p_better = predicted_flip_rate(mb, sb, ub)
    p_worse = predicted_flip_rate(mw, sw, uw)
    p_swap = predicted_flip_rate(mw, sb, ub)  # the worse side's margins under the better side's noise
    observed = mw.observed_flip_rate - mb.observed_flip_rate
    base = {
        "worse": worse.upper(),
        "better": "A" if worse == "b" else "B",
        "num_classes_worse": mw.num_classes,
        "num_classes_better": mb.num_classes,
        "predicted_worse": p_worse,
        "predicted_better": p_better,
        "predicted_swap": p_swap,
        "observed_worse": mw.observed_flip_rate,
        "observed_better": mb.observed_flip_rate,
        "observed_gap": observed,
        "predicted_gap": p_worse - p_better,
        "explained_share": (p_worse - p_better) / observed if observed else math.nan,
    }
    out = []
    margin_part = p_swap - p_better
    if mw.top1_margin_median < mb.top1_margin_median or margin_part > 0:
        ev = dict(base, median_worse=mw.top1_margin_median, median_better=mb.top1_margin_median,
                  p10_worse=mw.top1_margin_p10, p10_better=mb.top1_margin_p10, margin_part=margin_part,
                  share_below_noise_worse=mw.share_below_noise, share_below_noise_better=mb.share_below_noise)
        out.append((ExplanationKind.MARGINS, ev, margin_part / observed if observed else math.nan))
    noise_part = p_worse - p_swap
    head = c.layers[-1] if c.layers else None
    head_deficit = 0.0 if head is None else (-1.0 if worse == "b" else 1.0) * head.delta_db
    if noise_part > 0 or head_deficit >= PART_DB:  # more noise that adds no flips explains nothing
        ev = dict(base, noise_std_worse=sw, noise_std_better=sb, noise_mean_worse=uw, noise_mean_better=ub,
                  noise_rms_worse=mw.noise_rms, noise_rms_better=mb.noise_rms, noise_part=noise_part)
        if head is not None:
            sq_w, sq_b = (head.sqnr_b_db, head.sqnr_a_db) if worse == "b" else (head.sqnr_a_db, head.sqnr_b_db)
            ev.update(head=head.label_b if worse == "b" else head.label_a, head_sqnr_worse=sq_w, head_sqnr_better=sq_b)
        out.append((ExplanationKind.LOGIT_NOISE, ev, noise_part / observed if observed else math.nan))
    return out


def _verified_causes(c: Comparison, worse: str) -> list:
    """Verified causes of the worse side that the better side does not share (no verified finding on those layers).

    Score: the share of the worse side's lost decisions its fix recovers, measured by the counterfactual.
    """
    dw, db = (c.b, c.a) if worse == "b" else (c.a, c.b)
    better_causes = {l for f in db.findings if f.verified for l in f.layers}
    out = []
    for f in dw.findings:
        if not f.verified or f.check is None or any(l in better_causes for l in f.layers):
            continue
        vb = db.verification
        ev = {
            "worse": worse.upper(), "better": "A" if worse == "b" else "B", "mechanism": f.mechanism,
            "layers": list(f.layers), "position": min(f.positions, default=0),
            "before": dw.model.top1_agreement if dw.verification is None else dw.verification.baseline.top1_agreement,
            "after": f.check.top1_agreement, "recovery": f.check.recovery,
            "samples": 0 if dw.verification is None else dw.verification.samples,
            "better_agreement": db.model.top1_agreement,
            "better_note": "" if vb is None else ("no cause located" if not vb.causes else "other causes"),
        }
        out.append((ExplanationKind.VERIFIED_CAUSE, ev, f.check.recovery))
    return out[:MAX_LAYER_EXPLANATIONS]


def _parting(c: Comparison, worse: str) -> list:
    p = c.parting
    if p is None:
        return []
    sign = 1.0 if worse == "b" else -1.0
    head = c.layers[-1]
    ev = {
        "worse": worse.upper(),
        "layer": p.label_b if worse == "b" else p.label_a,
        "op_type": p.op_type,
        "position": p.position_b if worse == "b" else p.position_a,
        "sqnr_worse": p.sqnr_b_db if worse == "b" else p.sqnr_a_db,
        "sqnr_better": p.sqnr_a_db if worse == "b" else p.sqnr_b_db,
        "deficit_db": -sign * p.delta_db,
        "threshold_db": PART_DB,
        "head": head.label_b if worse == "b" else head.label_a,
        "head_deficit_db": -sign * head.delta_db,
    }
    return [(ExplanationKind.PARTING_LAYER, ev, math.nan)]


def _layers_only_in(c: Comparison, worse: str) -> list:
    """Layers whose own error is ≥ DEPART_DB worse on the worse side (the largest first, at most a few)."""
    sign = 1.0 if worse == "b" else -1.0
    rows = [(p, -sign * p.own_delta_db) for p in c.layers if p.own_delta_db is not None]
    rows = sorted((r for r in rows if r[1] >= DEPART_DB), key=lambda r: -r[1])[:MAX_LAYER_EXPLANATIONS]
    out = []
    for p, deficit in rows:
        own_w, own_b = (p.own_b_db, p.own_a_db) if worse == "b" else (p.own_a_db, p.own_b_db)
        ev = {"worse": worse.upper(), "layer": p.label_b if worse == "b" else p.label_a, "op_type": p.op_type,
              "position": p.position_b if worse == "b" else p.position_a, "own_sqnr_worse": own_w,
              "own_sqnr_better": own_b, "deficit_db": deficit, "threshold_db": DEPART_DB}
        out.append((ExplanationKind.LAYER_ONLY_IN, ev, math.nan))
    return out


def _findings_only_in(c: Comparison, worse: str) -> list:
    """Findings of the worse side with no finding of the same mechanism on a same-named layer on the better side."""
    fw, fb = (c.findings_b, c.findings_a) if worse == "b" else (c.findings_a, c.findings_b)
    better = {(f.mechanism, l) for f in fb for l in getattr(f, "layers", ())}
    out = []
    for f in fw:
        layers = tuple(getattr(f, "layers", ()))
        if any((f.mechanism, l) in better for l in layers):
            continue
        severity = getattr(f.severity, "value", f.severity)
        ev = {"worse": worse.upper(), "mechanism": f.mechanism, "severity": severity, "layers": list(layers),
              "position": min(getattr(f, "positions", ()) or (0,)), "finding_score": getattr(f, "score", math.nan),
              "finding": f.to_dict() if hasattr(f, "to_dict") else {}}
        out.append((ExplanationKind.FINDING_ONLY_IN, ev, math.nan))
    return out


def _num(v: float | None) -> float:
    return -math.inf if v is None or math.isnan(v) else v
