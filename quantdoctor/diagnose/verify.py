"""Prove causes: counterfactuals measured at the model output, and adaptive group testing to locate the ops that carry
the loss.

The counterfactuals themselves (op exact, alone quantized) are measured by `diagnose/counterfactuals.py`.

`locate_causes` finds a small set of ops whose exactness recovers at least `target` of the loss without two
evaluations per op (AIMET/Hailo-style sweeps): candidates are ordered by the diagnosis's proxies (isolated error, share
of the output error, expected vs observed); the prefix of that order is grown by doubling until it recovers (gallop),
the shortest recovering prefix is found by bisection, a galloped set is shrunk by delta debugging, and a small set is
pruned one op at a time. A test that only decides (does this set recover?) stops as soon as its batches settle the
answer (`Counterfactuals.recovers`). Proxies only choose what to test first; what is reported is measured on every
verification sample.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence


from quantdoctor.diagnose.counterfactuals import Counterfactuals
from quantdoctor.diagnose.verification import Outcome, Sensitivity, Verification

TARGET = 0.5  # a cause set must win back at least half of the lost decisions
MIN_LOSS = 0.03  # below 3 % of decisions lost there is nothing worth locating...
MIN_LOST_SAMPLES = 3  # ...nor in fewer lost decisions than this (one or two flips are sampling noise)
PRUNE_AT_MOST = 6  # prune a recovering prefix one op at a time only when it is this small
SHRINK_BUDGET = 12  # evaluations spent shrinking a galloped set by delta debugging
TABLE_ROWS = 4  # cause members measured one by one in the sensitivity table...
TABLE_OTHERS = 1  # ...plus the best proxies outside the set


def locate_causes(cf: Counterfactuals, ranked: Sequence[int], labels: dict[int, tuple[str, str]],
                  target: float = TARGET, seeds: Sequence[Sequence[int]] = ()) -> Verification:
    """Find a small op set whose exactness recovers at least `target` of the loss, and measure its members.

    Args:
        cf: the counterfactual evaluator.
        ranked: candidate ops, most suspect first (the proxies' order); candidates missing from it follow in graph
            order.
        labels: op index → (label, op type) for the table.
        seeds: op sets to try first (the ranked findings' ops): the first that recovers is bisected in the proxies'
            order instead of galloping over the whole model.
    """
    start_count, start = cf.count, time.perf_counter()
    order = [o for o in ranked if o in cf.candidates]
    order += [o for o in cf.candidates if o not in set(order)]
    base = cf.baseline
    loss = 1.0 - base.top1_agreement

    def done(note: str = "", all_exact=None, causes=(), outcome=None, table=()) -> Verification:
        names = tuple(labels.get(op, (f"op {op}", ""))[0] for op in causes)
        return Verification(cf.samples, len(cf.candidates), target, base, all_exact, tuple(causes), outcome,
                            tuple(table), cf.count - start_count + 1, round(time.perf_counter() - start, 3), note,
                            names)

    if not order:
        return done("no op of the quantized model has a float counterpart for every output; nothing can be made exact")
    if loss < MIN_LOSS or loss * cf.samples < MIN_LOST_SAMPLES - 1e-9:
        return done(f"the quantized model keeps {base.top1_agreement:.1%} of the float top-1 decisions on "
                    f"{cf.samples} samples; no loss worth locating")
    everything = cf.op_exact(order)
    if not everything.recovery >= target:
        return done(f"making every op exact recovers only {everything.recovery:.0%} of the loss. An exact op's output is "
                    "still stored on its own tensor's grid, so the loss comes from the grids themselves (the output's, "
                    "for small margins) or from ops without a float twin", everything)

    galloped = False
    for seed in seeds:  # a finding whose ops recover: bisect inside it
        members = [o for o in order if o in set(seed)]
        if members and cf.recovers(members, target):
            order, lo, k = members, 0, len(members)
            break
    else:
        galloped = True
        k = 1
        while k < len(order) and not cf.recovers(order[:k], target):  # gallop: 1, 2, 4, ... until it recovers
            k *= 2
        k = min(k, len(order))
        lo = k // 2  # prefix(lo) failed (or lo == 0)

    while k - lo > 1:  # bisect for the shortest recovering prefix
        mid = (lo + k) // 2
        if cf.recovers(order[:mid], target):
            k = mid
        else:
            lo = mid
    causes, outcome = list(order[:k]), cf.op_exact(order[:k])
    if galloped and len(causes) > PRUNE_AT_MOST:  # the proxies may have ranked the cause late: drop what is not needed
        causes, outcome = _shrink(cf, causes, outcome, target)
    if 1 < len(causes) <= PRUNE_AT_MOST:  # drop members the rest does not need, least suspect first
        for op in reversed(list(causes)):
            if len(causes) == 1:
                break
            rest = [c for c in causes if c != op]
            if cf.recovers(rest, target):
                causes, outcome = rest, cf.op_exact(rest)

    rows = []
    members = causes[:TABLE_ROWS]
    others = [o for o in ranked if o in cf.twins and o not in set(causes)][:TABLE_OTHERS]  # for contrast
    cf.prefetch([("op_exact", [op]) for op in members + others if causes != [op]]
                + [("alone_quantized", [op]) for op in members])
    for op in members + others:
        exact = outcome if causes == [op] else cf.op_exact([op])
        alone = cf.alone_quantized([op]) if op in members else None
        label, op_type = labels.get(op, (f"op {op}", "?"))
        rows.append(Sensitivity(op, label, op_type, exact, alone, op in causes))
    return done("", everything, sorted(causes), outcome, rows)


def _shrink(cf: Counterfactuals, causes: list[int], outcome: Outcome, target: float,
            budget: int = SHRINK_BUDGET) -> tuple[list[int], Outcome]:
    """Delta-debugging reduction of a recovering set: drop chunks (halves, then quarters, ...) whose removal keeps the
    recovery at the target, least suspect chunks first, within `budget` evaluations."""
    parts = 2
    while len(causes) > 1 and budget > 0:
        size = math.ceil(len(causes) / parts)
        chunks = [causes[i:i + size] for i in range(0, len(causes), size)]
        dropped = False
        for chunk in reversed(chunks):
            rest = [c for c in causes if c not in chunk]
            if not rest or budget == 0:
                continue
            budget -= 1
            if cf.recovers(rest, target):
                causes, outcome, dropped = rest, cf.op_exact(rest), True
        if not dropped:
            if size == 1:
                break
            parts = min(len(causes), parts * 2)
        else:
            parts = max(parts - 1, 2)
    return causes, outcome


SYMPTOMS = ("output_margins", "accumulated_drift")  # describe how the damage shows; context when not verified
NOT_OP_CAUSES = ("accumulated_drift", "float_ops")  # no op to make exact (drift: all of them; float ops: speed)
VERIFY_FINDINGS = 4  # op-level findings checked one by one (the located causes cover the rest)...
DISPROVEN = 0.1  # a critical finding whose ops made exact win back less than this share is demoted to a warning
CHECK_INFO = False  # ...info-level ones only when they are among them and this is set (each check is one pass)


def proxy_order(diagnosis, findings) -> list[int]:
    """Candidate ops, most suspect first: ops of ranked findings, then by the noise each op adds by itself (its
    isolated error where measured, else the growth of the accumulated error across it), then by share of the output.

    This is only the order in which group testing tries ops; nothing is reported from it. The op's own noise comes
    before the share: a share credits amplified error downstream, so an early op that starts the damage ranks low.
    """
    order: list[int] = []
    for f in findings:
        if f.mechanism not in NOT_OP_CAUSES:
            order.extend(p for p in f.positions if p not in order)

    def key(l):
        share = l.output_error_share if l.output_error_share is not None and not math.isnan(l.output_error_share) else -1
        own = l.isolated.sqnr_db if l.isolated is not None else math.nan
        if math.isnan(own):
            own = l.accumulated.sqnr_db if l.sqnr_drop_db is None or math.isnan(l.sqnr_drop_db) else -l.sqnr_drop_db
        return (own, -share, l.position)

    order.extend(l.position for l in sorted(diagnosis.layers, key=key) if l.position not in order)
    return order


def verify_findings(findings, diagnosis, cf: Counterfactuals, verification: Verification):
    """Each op-level finding checked by making its ops exact; a located cause no finding names becomes one; ranked by
    measured recovery, with symptoms attached as context when a cause recovers the loss.

    Returns the findings, re-ranked: verified causes by recovery, then context, then the unproven rest in their order.
    """
    from dataclasses import replace

    from quantdoctor.diagnose.findings import SEVERITY_RANK, Severity

    target = verification.target
    lost = verification.loss >= MIN_LOSS and verification.loss * verification.samples >= MIN_LOST_SAMPLES - 1e-9
    def ops_to_check(i: int, f) -> tuple[int, ...]:
        ops = tuple(sorted(p for p in f.positions if p in cf.candidates))
        info = f.severity is Severity.INFO and not CHECK_INFO
        return () if not lost or f.mechanism in NOT_OP_CAUSES or i >= VERIFY_FINDINGS or info else ops

    cf.prefetch([("op_exact", ops) for i, f in enumerate(findings) if (ops := ops_to_check(i, f))])
    checked = []
    for i, f in enumerate(findings):
        ops = ops_to_check(i, f)
        if not ops:
            checked.append(f)
            continue
        outcome = cf.op_exact(ops)
        ok = outcome.recovery >= target
        severity = _verified_severity(f, outcome, verification) if ok else f.severity
        if not ok and severity is Severity.CRITICAL and outcome.recovery < DISPROVEN:
            severity = Severity.WARNING  # measured: fixing these ops wins back next to nothing
        checked.append(replace(f, check=outcome, verified=ok, role="cause" if ok else f.role, severity=severity))
    causes = set(verification.causes)
    if causes and not any(f.verified and causes <= set(f.positions) for f in checked):
        checked.append(_measured_cause(diagnosis, verification))
    verified = sorted((f for f in checked if f.verified), key=lambda f: (-f.check.recovery, len(f.positions)))
    context = []
    rest = []
    for f in checked:
        if f.verified:
            continue
        if verified and f.mechanism in SYMPTOMS:
            evidence = {**f.evidence, "cause": verified[0].layers[0] if verified[0].layers else ""}
            context.append(replace(f, role="context", evidence=evidence,
                                   severity=Severity.INFO if f.severity is Severity.CRITICAL else f.severity))
        else:
            rest.append(f)
    rest.sort(key=lambda f: SEVERITY_RANK[f.severity])  # stable: keeps the proxies' order within a severity
    return tuple(verified + context + rest)


def _verified_severity(f, outcome: Outcome, verification: Verification):
    from quantdoctor.diagnose.findings import LOSS, Severity

    if verification.loss >= LOSS and outcome.recovery >= TARGET:
        return Severity.CRITICAL
    return f.severity if f.severity is not Severity.INFO else Severity.WARNING


def _measured_cause(diagnosis, verification: Verification):
    """A finding for a located cause set that no catalogued mechanism names: what was measured, and the proxies."""
    from quantdoctor.diagnose.findings import LOSS
    from quantdoctor.diagnose.results import Finding, Severity

    layers = [diagnosis.layer_at(p) for p in verification.causes]
    layers = [l for l in layers if l is not None]
    worst = min(layers, key=lambda l: l.isolated.sqnr_db if l.isolated is not None else math.inf, default=None)
    out = verification.cause_outcome
    return Finding(
        mechanism="measured_cause",
        severity=Severity.CRITICAL if verification.loss >= LOSS else Severity.WARNING,
        positions=tuple(verification.causes),
        layers=tuple(l.label for l in layers) or tuple(f"op {p}" for p in verification.causes),
        op_types=tuple(sorted({l.op_type for l in layers})),
        evidence={
            "ops": len(verification.causes),
            "isolated_sqnr_db": math.nan if worst is None or worst.isolated is None else worst.isolated.sqnr_db,
            "worst_layer": "" if worst is None else worst.label,
            "share": sum(l.output_error_share or 0.0 for l in layers),
        },
        fix="keep these ops in higher precision (float or int16 activations), or find what quantizes them badly",
        score=sum(l.output_error_share or 0.0 for l in layers),
        verified=True,
        check=out,
        role="cause",
    )
