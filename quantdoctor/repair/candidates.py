"""Candidate repair actions, ranked by cheap proxies read from a diagnosis.

The proxy of a layer is the noise-to-signal power the op itself adds, from the best evidence the diagnosis carries:
the isolated error (the op alone on the float input) if measured, else the growth of the accumulated error across the op
(`LayerResult.noise_added`). A layer whose observed error is far above the error its quantization parameters predict
(`LayerResult.expected`, when the diagnosis has it) or that a finding names gets a bonus: such errors are defects that
one change removes, not noise spread over many layers. Findings with several positions (one mechanism in many ops)
become group candidates. An op type whose worst layer stands out also gets group candidates (per-channel weights or the
kernel workaround for every op of that type with the same weight storage), because a kernel defect hits every op that
runs the same kernel, while the accumulated error only shows the first of them. A `mixed_ranges` finding proposes its
op and readers kept in float, and 16-bit activations up to the op where the scales meet. An `output_margins` finding on an
8-bit integer output also proposes the decision range for it (`repair.ranges.decision_range`): the range judged by the
top-k decisions it keeps, where MSE or KL keep the wide range that one far-off class stretches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from quantdoctor.repair.actions import (
    CALIBRATED_SCHEMES,
    DYNAMIC_SCHEMES,
    ORT_STATIC_SCHEMES,
    Action,
    CalibrationMethod,
    CalibrationRange,
    Int16Activations,
    KeepFloat,
    KernelWorkaround,
    PerChannel,
    RangeMethod,
)

WEIGHTED = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D",  # TFLite
            "Conv", "ConvTranspose", "Gemm", "MatMul")  # ONNX
DEFECT_RATIO = 10.0  # observed / expected noise power above which an op's error counts as a defect
FINDING_BONUS = {"critical": 4.0, "warning": 2.0, "info": 1.0}
# How much a kind of action is preferred at equal proxy: the least invasive first, keeping an op float last.
PREFERENCE = {
    KernelWorkaround: 1.0, PerChannel: 0.9, CalibrationRange: 0.85, Int16Activations: 0.6, KeepFloat: 0.5,
    CalibrationMethod: 0.2,  # every range of the model at once: after the targeted changes
}
VERIFIED_BONUS = 10.0  # a finding whose counterfactual recovered the loss outranks every proxy-ranked candidate...
REFUTED_FACTOR = 0.25  # ...and one whose counterfactual was measured and did not recover it falls behind
# 8-bit integer outputs (decision_range's grid; ORT's QDQ output pair has the same 256 levels)
DECISION_SCHEMES = frozenset({"int8", "int8-io", "int8-per-tensor", "ort-qdq-int8", "ort-qdq-int8-per-tensor",
                              "ort-qdq-uint8"})
SIXTEEN_BIT_SCHEMES = frozenset({"int16x8", "ort-qdq-a16w8"})
DECISION_PREFERENCE = 1.05  # just above the output's other range candidates: the decision range targets the metric


@dataclass(frozen=True)
class Candidate:
    action: Action
    proxy: float  # larger = more promising
    reason: str
    verified: bool = False  # it fixes a cause the diagnosis proved by a counterfactual (diagnose/verify.py)


def _nsr(sqnr_db: float | None) -> float:
    if sqnr_db is None or math.isnan(sqnr_db):
        return 0.0
    return 0.0 if sqnr_db == math.inf else 10.0 ** (-min(sqnr_db, 300.0) / 10.0)


def layer_proxy(layer: Any) -> tuple[float, str]:
    """(noise power the op adds, which evidence it came from), with fallbacks for older diagnoses."""
    isolated = getattr(layer, "isolated", None)
    if isolated is not None and not math.isnan(getattr(isolated, "sqnr_db", math.nan)):
        return _nsr(isolated.sqnr_db), f"isolated SQNR {isolated.sqnr_db:.1f} dB"
    added = getattr(layer, "noise_added", math.nan)
    if added is not None and not math.isnan(added):
        return max(added, 0.0), f"SQNR drop {layer.sqnr_drop_db:.1f} dB" if layer.sqnr_drop_db is not None else "error"
    return _nsr(layer.accumulated.sqnr_db), f"accumulated SQNR {layer.accumulated.sqnr_db:.1f} dB"


def _defect_ratio(layer: Any, observed: float) -> float:
    expected = getattr(layer, "expected", None)
    exp = _nsr(getattr(expected, "sqnr_db", None)) if expected is not None else 0.0
    return observed / exp if exp > 0 else 1.0


def _per_tensor_int8(layer: Any) -> bool:
    w = getattr(layer, "weights", None)
    return w is not None and w.storage == "int8" and w.quant is not None and len(w.quant.scales) == 1


def _quantized(layer: Any, op: str, quantized: set[str] | None) -> bool:
    """Whether the layer's output has a calibrated integer grid: TFLite layers carry its parameters; in an ONNX QDQ
    graph the tensor stays float and the builder says which tensors a QuantizeLinear reads (`quantized`)."""
    return layer.quant is not None or (quantized is not None and op in quantized)


def _layer_actions(layer: Any, op: str, scheme: str, quantized: set[str] | None = None) -> list[Action]:
    actions: list[Action] = []
    if layer.op_type in WEIGHTED and _per_tensor_int8(layer):
        if scheme in DYNAMIC_SCHEMES and layer.op_type == "DEPTHWISE_CONV_2D":
            actions.append(KernelWorkaround(ops=(op,)))
        actions.append(PerChannel(ops=(op,)))
    if scheme in CALIBRATED_SCHEMES and _quantized(layer, op, quantized):
        actions.append(CalibrationRange(tensor=op, method=RangeMethod.MSE.value))
        actions.append(CalibrationRange(tensor=op, method=RangeMethod.PERCENTILE.value, percentile=99.99))
        if scheme not in SIXTEEN_BIT_SCHEMES:
            actions.append(Int16Activations(ops=(op,)))
    if layer.op_type not in ("QUANTIZE", "DEQUANTIZE"):
        actions.append(KeepFloat(ops=(op,)))
    return actions


def _group_actions(op_type: str, ops: tuple[str, ...], scheme: str, exact: bool = False) -> list[Action]:
    """Actions for several ops of one type: for every op of the type, or (`exact`) for exactly `ops` — a verified
    cause set, which the counterfactual measured as it is, so the fix needs no narrowing afterwards."""
    actions: list[Action] = []
    scope = {"ops": ops} if exact else {"op_type": op_type}
    if op_type in WEIGHTED:
        if scheme in DYNAMIC_SCHEMES and op_type == "DEPTHWISE_CONV_2D":
            actions.append(KernelWorkaround(**scope))
        actions.append(PerChannel(**scope))
    actions.append(KeepFloat(ops=ops))
    return actions


def _mixed_ranges_actions(finding: Any, members: list, scheme: str, quantized: set[str] | None) -> list[Action]:
    """A `mixed_ranges` finding: keep the op where the scales meet and its readers in float (all of them: an integer
    reader would take the float output back onto the same shared grid), or give that op's output (and the narrow
    input's producer, when it was put on the shared scale) 16-bit activations. Splitting the output into separate
    outputs is a model change no action expresses."""
    where = finding.evidence.get("position") if hasattr(finding, "evidence") else None
    merge = [(op, layer) for op, layer in members if layer.position == where] or members[:1]
    actions: list[Action] = []
    if scheme in CALIBRATED_SCHEMES and scheme not in SIXTEEN_BIT_SCHEMES:
        at = tuple(op for op, layer in members if layer.position <= merge[0][1].position and _quantized(layer, op, quantized))
        if at:
            actions.append(Int16Activations(ops=at))
    actions.append(KeepFloat(ops=tuple(op for op, _ in members)))
    return actions


def rank_candidates(diagnosis: Any, scheme: str, op_names: set[str], max_layers: int = 6,
                    quantized: set[str] | None = None) -> list[Candidate]:
    """Candidate actions for the layers the diagnosis blames most, best first.

    Args:
        diagnosis: a `Diagnosis` of the current model against the float model.
        scheme: the scheme being repaired.
        op_names: op output names the builder knows (a layer whose name is not among them cannot be targeted).
        max_layers: per-layer candidates for this many layers.
        quantized: activations with an integer grid in the current model, when the layers do not say (ONNX QDQ).
    """
    scored: list[tuple[float, str, Any, str]] = []
    by_position = {}
    for layer in diagnosis.layers:
        op = layer.float_tensor if layer.float_tensor in op_names else layer.quant_tensor
        if op not in op_names:
            continue
        noise, why = layer_proxy(layer)
        ratio = _defect_ratio(layer, noise)
        score = noise * (FINDING_BONUS["critical"] if ratio >= DEFECT_RATIO else 1.0)
        if ratio >= DEFECT_RATIO:
            why += f", {ratio:.0f}x the expected error"
        scored.append((score, op, layer, why))
        by_position[layer.position] = (op, layer)
    total = sum(s for s, *_ in scored) or 1.0
    out: list[Candidate] = []

    for finding in getattr(diagnosis, "findings", ()) or ():
        members = [by_position[p] for p in getattr(finding, "positions", ()) if p in by_position]
        if not members:
            continue
        severity = getattr(finding, "severity", "info")
        bonus = FINDING_BONUS.get(getattr(severity, "value", severity), 1.0)
        share = sum(s for s, op, *_ in scored if op in {m[0] for m in members}) / total
        score = getattr(finding, "score", math.nan)
        if score is not None and not math.isnan(score):
            share = max(share, score)  # e.g. output margins: decisive although the op's own SQNR is high
        reason = f"finding {finding.mechanism} ({len(members)} ops)"
        check = getattr(finding, "check", None)
        verified = bool(getattr(finding, "verified", False)) and check is not None
        if verified:
            # Start from the verified cause: its measured recovery, not a proxy, says how much it is worth.
            share = max(share, check.recovery)
            bonus *= VERIFIED_BONUS
            reason += f", verified: exact recovers {100 * check.recovery:.0f}% of the loss"
        elif check is not None:
            bonus *= REFUTED_FACTOR
        if getattr(finding, "mechanism", "") == "mixed_ranges":
            acts = _mixed_ranges_actions(finding, members, scheme, quantized)
        elif len(members) > 1:
            types = {layer.op_type for _, layer in members}
            acts = _group_actions(types.pop() if len(types) == 1 else "", tuple(op for op, _ in members), scheme,
                                  exact=verified)
            if len(set(l.op_type for _, l in members)) > 1:
                # Mixed op types (e.g. drift over many ops): finer weights for those that have per-tensor ones first,
                # keeping them all in float only as the last resort.
                coarse = tuple(op for op, layer in members if layer.op_type in WEIGHTED and _per_tensor_int8(layer))
                acts = ([PerChannel(ops=coarse)] if coarse else []) + [KeepFloat(ops=tuple(op for op, _ in members))]
        else:
            acts = _layer_actions(members[0][1], members[0][0], scheme, quantized)
            if getattr(finding, "mechanism", "") == "output_margins" and scheme in DECISION_SCHEMES \
                    and _quantized(members[0][1], members[0][0], quantized):
                decision = CalibrationRange(tensor=members[0][0], method=RangeMethod.DECISION.value)
                proxy = bonus * (share + 0.01) * PREFERENCE[CalibrationRange] * DECISION_PREFERENCE
                out.append(Candidate(decision, proxy, reason + ": output range by the top-k decisions"))
        for a in acts:
            out.append(Candidate(a, bonus * (share + 0.01) * PREFERENCE[type(a)], reason, verified))

    # One mechanism in several ops (e.g. weight range disparity in ten convs) gets one candidate for all of them: their
    # errors add up at the output, so fixing one at a time may show no gain on a small ranking set.
    by_mechanism: dict[str, list] = {}
    for finding in getattr(diagnosis, "findings", ()) or ():
        if getattr(finding, "mechanism", "") == "weight_range_disparity":
            by_mechanism.setdefault(finding.mechanism, []).append(finding)
    for mechanism, found in by_mechanism.items():
        members = [by_position[p] for f in found for p in f.positions if p in by_position]
        ops = tuple(dict.fromkeys(op for op, layer in members if _per_tensor_int8(layer)))
        if len(ops) > 1:
            score = sum(s for s, op, *_ in scored if op in ops) / total
            score = max(score, sum(f.score for f in found if f.score == f.score))
            out.append(Candidate(PerChannel(ops=ops), FINDING_BONUS["critical"] * (score + 0.01) * PREFERENCE[PerChannel],
                                 f"{len(ops)} {mechanism} findings"))

    scored.sort(key=lambda s: -s[0])
    for score, op, layer, why in scored[:max_layers]:
        for a in _layer_actions(layer, op, scheme, quantized):
            out.append(Candidate(a, score / total * PREFERENCE[type(a)], f"{why} ({100 * score / total:.0f}% of the error)"))

    if scored:
        worst_score, _, worst, _ = scored[0]
        same = tuple(op for _, op, l, _ in scored if l.op_type == worst.op_type and _per_tensor_int8(l) == _per_tensor_int8(worst))
        if len(same) > 1 and worst.op_type in WEIGHTED:
            share = sum(s for s, op, *_ in scored if op in same) / total
            for a in _group_actions(worst.op_type, same, scheme)[:-1]:  # no keep-float of a whole op type here
                why = f"{worst.op_type} holds the worst layer; {len(same)} ops run the same kernel"
                out.append(Candidate(a, max(share, worst_score / total) * PREFERENCE[type(a)] * 1.01, why))

    if scheme in ORT_STATIC_SCHEMES and scored:
        # ORT's other calibration methods move every range at once: tried after the targeted changes.
        share = sum(s for s, op, layer, _ in scored if _quantized(layer, op, quantized)) / total
        for method in ("percentile", "entropy"):
            out.append(Candidate(CalibrationMethod(method), share * PREFERENCE[CalibrationMethod],
                                 f"{method} calibration ({100 * share:.0f}% of the error is in calibrated activations)"))
    return _dedupe(out)


def _dedupe(cands: Sequence[Candidate]) -> list[Candidate]:
    best: dict[Action, Candidate] = {}
    for c in cands:
        if c.action not in best or c.proxy > best[c.action].proxy:
            best[c.action] = c
    return sorted(best.values(), key=lambda c: -c.proxy)
