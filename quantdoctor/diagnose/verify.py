"""Prove causes: counterfactuals measured at the model output, and adaptive group testing to locate the ops that carry
the loss.

`Counterfactuals` evaluates two kinds, both by running one model in segments with some ops computed by the other
(`Runner.splice`, a backend primitive), so neither needs a re-conversion and both work for a quantized model made
elsewhere:

- *op exact*: the quantized model, with the chosen ops computed by the float model's ops on the inputs the quantized
  model gives them (an integer output is stored on its tensor's grid again). This is the keep-this-op-in-float fix,
  measured without a rebuild: it removes the op's own quantization and nothing upstream of it, so a late op does not
  "recover" errors it only passes on.
- *alone quantized*: the float model, with only the chosen ops computed by their quantized versions (on float inputs,
  quantized into integer input tensors as the quantized model stores them).

`locate_causes` finds a small set of ops whose exactness recovers at least `target` of the loss without two
evaluations per op (AIMET/Hailo-style sweeps): candidates are ordered by the diagnosis's proxies (isolated error, share
of the output error, expected vs observed); the prefix of that order is grown by doubling until it recovers (gallop),
the shortest recovering prefix is found by bisection, and a small set is then pruned one op at a time. Proxies only
choose what to test first; what is reported is measured.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from quantdoctor.backends.base import Graph
from quantdoctor.diagnose.counterfactual import Outcome, Sensitivity, Verification, recovery
from quantdoctor.matching.match import Matching, through_conversions
from quantdoctor.stats.classification import ClassificationAccumulator

_INTEGER = ("int8", "uint8", "int16", "uint16")
TARGET = 0.5  # a cause set must win back at least half of the lost decisions
MIN_LOSS = 0.03  # below 3 % of decisions lost there is nothing worth locating...
MIN_LOST_SAMPLES = 3  # ...nor in fewer lost decisions than this (one or two flips are sampling noise)
MAX_CHAIN = 3  # float ops a fused quantized op may stand for (Conv + Relu, Conv + Clip, ...)
PRUNE_AT_MOST = 6  # prune a recovering prefix one op at a time only when it is this small
SHRINK_BUDGET = 12  # evaluations spent shrinking a galloped set by delta debugging
TABLE_ROWS = 4  # cause members measured one by one in the sensitivity table...
TABLE_OTHERS = 1  # ...plus the best proxies outside the set


class Counterfactuals:
    """Evaluates counterfactuals of the quantized model against the float model on a fixed verification subset.

    Args:
        float_runner, quant_runner: backend runners (`backends/base.Runner`) of the float and the quantized model.
        matching: the float ↔ quantized tensor pairs.
        dataset: the evaluation set; its first `samples` samples verify.
    """

    def __init__(self, float_runner, quant_runner, matching: Matching, dataset, samples: int, *,
                 batch_size: int = 16, top_k: int = 3) -> None:
        self.fr, self.qr = float_runner, quant_runner
        self.fg: Graph = float_runner.graph
        self.qg: Graph = quant_runner.graph
        self.f_ops, self.q_ops = float_runner.op_runner(), quant_runner.op_runner()
        self.top_k = top_k
        subset = dataset if len(dataset) <= samples else dataset.subset(np.arange(samples))
        self.samples = len(subset)
        labels = subset.labels
        self.batches = [(x, None if labels is None else labels[idx]) for x, idx in subset.batches(batch_size)]
        self.float_out = [float_runner.run(x).reshape(len(x), -1).copy() for x, _ in self.batches]
        self.num_classes = self.float_out[0].shape[1]
        self.matching = matching
        self._q_to_f = matching.q_to_f
        self._f_to_q = {p.float_index: p.quant_index for p in matching.pairs}
        self.twins = self._twins()  # quantized op -> (float ops, input permutation)
        self.candidates = tuple(sorted(self.twins))
        self.count = 0
        self.seconds = 0.0
        self._done: dict[tuple[str, tuple[int, ...]], Outcome] = {}  # each counterfactual is measured once
        self.baseline = self._measure("quantized", ())

    def _float_source(self, t: int) -> int | None:
        """The float tensor a quantized tensor stands for (through inserted (de)quantize ops)."""
        f = self.matching.float_of(self.qg, t)
        if f is not None:
            return f
        frontier = [t]
        for _ in range(3):  # a graph output read through its (quantize and) dequantize ops
            frontier = [op.outputs[0] for f in frontier for c in self.qg.tensors[f].consumers
                        for op in [self.qg.op(c)] if self.qg.is_conversion(op) and op.outputs]
            found = [self._q_to_f[f] for f in frontier if f in self._q_to_f]
            if found:
                return found[0]
        return None

    def _twins(self) -> dict[int, tuple[tuple[int, ...], tuple[int, ...]]]:
        """Quantized op → (float ops that compute its output from the paired inputs, input permutation).

        Usually one float op of the same type. A QDQ quantizer may fold an activation into the op before it (ORT:
        Conv+Relu → Conv whose output grid clips); its twin is then that chain of float ops (at most `MAX_CHAIN`,
        each after the first reading only the one before). Float input k of the first op is quantized input perm[k].
        """
        out = {}
        for op in self.qg.ops:
            if self.qg.is_conversion(op) or not op.outputs or op.outputs[0] < 0:
                continue
            f_t = self._float_source(op.outputs[0])
            f_prod = None if f_t is None else self.fg.tensors[f_t].producer
            if f_prod is None:
                continue
            chain = [f_prod]
            while self.qg.qdq and self.fg.op(chain[0]).type != op.type and len(chain) < MAX_CHAIN:
                ins = self.f_ops.io(chain[0]).inputs
                prev = self.fg.tensors[ins[0]].producer if len(ins) == 1 else None
                if prev is None:
                    break
                chain.insert(0, prev)
            first = self.fg.op(chain[0])
            if first.type != op.type or len(self.fg.op(chain[-1]).outputs) != len(op.outputs):
                continue
            if any(self.f_ops.io(c).inputs != tuple(t for t in self.fg.op(b).outputs if t >= 0)
                   for b, c in zip(chain, chain[1:])):
                continue
            q_in = [through_conversions(self.qg, t) for t in self.q_ops.io(op.index).inputs]
            f_in = self.f_ops.io(chain[0]).inputs
            perm = []
            for t in f_in:
                q = self._f_to_q.get(t)
                q = None if q is None else through_conversions(self.qg, q)
                if q not in q_in:
                    break
                perm.append(q_in.index(q))
            if len(perm) == len(f_in) == len(q_in) and len(set(perm)) == len(perm):
                out[op.index] = (tuple(chain), tuple(perm))
        return out

    def _fused(self, q_op: int) -> bool:
        """A quantized op that stands for several float ops (an activation folded into its output grid)."""
        return q_op in self.twins and len(self.twins[q_op][0]) > 1

    def _quantized_op(self, q_op: int, args: list[np.ndarray]) -> list[np.ndarray]:
        """The quantized op alone on float inputs, its outputs on the grid of the quantize op that follows them (in a
        QDQ graph that grid is part of the op: it clips for the activation a quantizer folded into it)."""
        values = self.q_ops.run_outputs(q_op, args)
        out = []
        for t, v in zip(self.qg.op(q_op).outputs, values):
            g = self.qg.tensors[self.qg.quantized_form(t)] if t >= 0 else None
            out.append(v if g is None or g.index == t or g.quant is None else _on_grid(v, g))
        return out

    def _float_twin(self, q_op: int, args: list[np.ndarray]) -> list[np.ndarray]:
        """The float twin of quantized op `q_op` on its (float) input values."""
        chain, perm = self.twins[q_op]
        values = self.f_ops.run_outputs(chain[0], [args[j] for j in perm])
        for f_op in chain[1:]:
            values = self.f_ops.run_outputs(f_op, values[:1])
        return values

    def _with_conversions(self, ops: Sequence[int]) -> list[int]:
        """`ops` plus the (de)quantize ops that keeping them in float removes: a dequantize fed by an exact op, any
        conversion whose readers are all exact (or that returns a graph output from an exact op). A quantize op whose
        reader still computes quantized stays: that reader needs its input on the grid."""
        chosen = set(ops)
        outputs = set(self.qg.outputs)
        conversions = [op for op in self.qg.ops if self.qg.is_conversion(op) and not self.qg.is_weight_dequantize(op)]
        grew = True
        while grew:
            grew = False
            for op in conversions:
                if op.index in chosen:
                    continue
                src = self.qg.tensors[op.inputs[0]].producer
                from_exact = src is not None and src in chosen
                readers = [c for t in op.outputs for c in self.qg.tensors[t].consumers]
                to_float = all(self.qg.tensors[t].dtype not in _INTEGER for t in op.outputs)
                returned = not readers and any(t in outputs for t in op.outputs)
                # The quantize op after a fused op (Conv whose Relu/Clip the quantizer folded) is that activation:
                # it stays unless the fused op itself is computed in float.
                carries_activation = not to_float and src is not None and not from_exact and self._fused(src)
                if carries_activation:
                    continue
                if (readers and all(c in chosen for c in readers)) or (from_exact and (to_float or returned)):
                    chosen.add(op.index)
                    grew = True
        return sorted(chosen)

    def op_exact(self, ops: Sequence[int]) -> Outcome:
        """The quantized model with `ops` computed by their float twins on the inputs the quantized model gives."""
        return self._measure("op_exact", tuple(sorted(set(int(o) for o in ops))))

    def alone_quantized(self, ops: Sequence[int]) -> Outcome:
        """The float model with only `ops` computed by their quantized versions."""
        return self._measure("alone_quantized", tuple(sorted(set(int(o) for o in ops))))

    def _measure(self, kind: str, ops: tuple[int, ...]) -> Outcome:
        if (kind, ops) in self._done:
            return self._done[(kind, ops)]
        start = time.perf_counter()
        if kind == "alone_quantized":
            by_float = {self.twins[q][0][0]: q for q in ops}  # the first float op of each twin computes it all
            rest = {f for q in ops for f in self.twins[q][0][1:]}  # the others pass its value on
            splice = self.fr.splice(sorted(set(by_float) | rest))

            def compute(f_op, args):
                if f_op not in by_float:
                    return [np.asarray(args[0], dtype=np.float32)]
                q_op = by_float[f_op]
                perm = self.twins[q_op][1]
                q_args = [None] * len(perm)
                for k, j in enumerate(perm):
                    q_args[j] = args[k]
                return self._quantized_op(q_op, q_args)
        else:
            splice = self.qr.splice(self._with_conversions(ops))

            def compute(q_op, args):
                if q_op not in self.twins:  # a (de)quantize next to exact ops: float in, float out
                    return [np.asarray(args[0], dtype=np.float32)]
                return self._float_twin(q_op, args)

        acc = ClassificationAccumulator(self.num_classes, self.top_k)
        for (x, y), f_out in zip(self.batches, self.float_out):
            out = splice.run(x, compute)[0].reshape(len(x), -1)
            acc.update(f_out, out, y)
        m = acc.result()
        base = getattr(self, "baseline", None)
        rec = math.nan if base is None else recovery(base.top1_agreement, m.top1_agreement)
        self.count += 1
        self.seconds += time.perf_counter() - start
        accuracy = m.quant_top1 if m.num_labelled else None
        self._done[(kind, ops)] = Outcome(kind, ops, m.top1_agreement, m.topk_agreement, accuracy, m.logit_sqnr_db, rec)
        return self._done[(kind, ops)]


def _on_grid(value: np.ndarray, tensor) -> np.ndarray:
    """`value` quantized to `tensor`'s integer grid and back (round half to even, saturate)."""
    q = tensor.quant
    info = np.iinfo(np.dtype(tensor.dtype))
    s = np.asarray(q.scales, dtype=np.float32)
    z = np.asarray(q.zero_points or (0,), dtype=np.float32)
    if s.size > 1 and q.axis is not None:
        shape = [1] * value.ndim
        shape[q.axis] = s.size
        s, z = s.reshape(shape), z.reshape(shape)
    return ((np.clip(np.rint(value / s) + z, info.min, info.max) - z) * s).astype(np.float32)


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
        if members and cf.op_exact(members).recovery >= target:
            order, lo, k = members, 0, len(members)
            break
    else:
        galloped = True
        k = 1
        while k < len(order) and not cf.op_exact(order[:k]).recovery >= target:  # gallop: 1, 2, 4, ... until it recovers
            k *= 2
        k = min(k, len(order))
        lo = k // 2  # prefix(lo) failed (or lo == 0)

    def prefix(n: int) -> Outcome:
        return cf.op_exact(order[:n])

    while k - lo > 1:  # bisect for the shortest recovering prefix
        mid = (lo + k) // 2
        if prefix(mid).recovery >= target:
            k = mid
        else:
            lo = mid
    causes, outcome = list(order[:k]), prefix(k)
    if galloped and len(causes) > PRUNE_AT_MOST:  # the proxies may have ranked the cause late: drop what is not needed
        causes, outcome = _shrink(cf, causes, outcome, target)
    if 1 < len(causes) <= PRUNE_AT_MOST:  # drop members the rest does not need, least suspect first
        for op in reversed(list(causes)):
            if len(causes) == 1:
                break
            rest = [c for c in causes if c != op]
            trial = cf.op_exact(rest)
            if trial.recovery >= target:
                causes, outcome = rest, trial

    rows = []
    members = causes[:TABLE_ROWS]
    others = [o for o in ranked if o in cf.twins and o not in set(causes)][:TABLE_OTHERS]  # for contrast
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
            trial = cf.op_exact(rest)
            if trial.recovery >= target:
                causes, outcome, dropped = rest, trial, True
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
    checked = []
    for i, f in enumerate(findings):
        ops = tuple(sorted(p for p in f.positions if p in cf.candidates))
        info = f.severity is Severity.INFO and not CHECK_INFO
        if not lost or f.mechanism in NOT_OP_CAUSES or not ops or i >= VERIFY_FINDINGS or info:
            checked.append(f)
            continue
        outcome = cf.op_exact(ops)
        ok = outcome.recovery >= target
        checked.append(replace(f, check=outcome, verified=ok, role="cause" if ok else f.role,
                               severity=_verified_severity(f, outcome, verification) if ok else f.severity))
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
