"""Greedy search for the smallest set of actions that meets the budget, verified by real quantized evaluation.

Each step ranks candidates by the diagnosis' proxies and evaluates the top few on the ranking subset (a real build and a
real interpreter pass each); the best one is kept if it improves the metric, ties going to the change that touches fewer
ops. A fix for a cause the diagnosis verified by a counterfactual is tried alone first. After a kept step the current
model is diagnosed again (on a small subset), so the next ranking sees the error that the fix uncovered. When no
candidate improves, the search takes one step back: it undoes the last action and tries that step's runner-up instead.
When the budget is met on the ranking subset, actions the model does not need are pruned, group actions are narrowed by
bisection, and the result is verified on the whole evaluation set; if that fails, the search resumes with the whole set
as ranking set.

The ranking subset is sized from the budget (`ranking_size`): one changed decision on it must cost less than the budget,
or meeting the budget there says little about the whole set. Every evaluation is remembered by its action list and
sample count, so a pruning or narrowing step whose answer was measured on the way costs nothing, and an evaluation that
already covered the whole set is the final one.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from quantdoctor.executors.base import Executor, WorkerMethod
from quantdoctor.repair.actions import Action, KernelWorkaround, PerChannel
from quantdoctor.repair.build import Builder
from quantdoctor.repair.candidates import Candidate, rank_candidates
from quantdoctor.repair.evaluate import Evaluation, Evaluator, model_stats
from quantdoctor.repair.result import TrajectoryRow


@dataclass
class SearchConfig:
    max_drop: float = 1.0  # points
    per_step: int = 4  # candidates evaluated per round
    rounds_per_step: int = 2  # rounds of `per_step` before giving up on a step
    max_steps: int = 8
    max_evaluations: int = 60


@dataclass
class SearchState:
    actions: list[Action] = field(default_factory=list)
    trajectory: list[TrajectoryRow] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    best: tuple[float, list[Action]] | None = None


@dataclass(frozen=True)
class Outcome:
    """A candidate's evaluation, or why the quantizer (or the runtime) rejected it; `model` = the bytes built."""

    evaluation: Evaluation | None
    error: str | None = None
    model: bytes | None = None


class CandidateWorker:
    """Evaluates candidate action lists (a build and one quantized pass each) with a builder and an evaluator made once
    per worker (on Ray: copies read from the object store, float outputs and batches included)."""

    def __init__(self, builder: Builder, evaluator: Evaluator) -> None:
        self.builder, self.evaluator = builder, evaluator

    def evaluate(self, job: tuple[tuple[Action, ...], int]) -> Outcome:
        """`job` = (actions, ranking subset size): the size travels with each job, as the search may widen it."""
        actions, rank_size = job
        self.evaluator.rank_size = rank_size
        try:
            model = self.builder.build(list(actions))
            return Outcome(self.evaluator.evaluate(model), model=model)
        except Exception as exc:  # noqa: BLE001 - a quantizer that rejects one candidate must not end the search
            return Outcome(None, str(exc) or type(exc).__name__)


def ranking_size(max_drop: float, rank_size: int, samples: int) -> int:
    """Samples the search ranks candidates on: at least `rank_size`, and enough that one changed decision (100/n points)
    costs less than the `max_drop` budget; all `samples` once that is more than half of them (a subset saves little
    then, and an evaluation on the whole set doubles as the final one)."""
    need = samples if max_drop <= 0 else math.floor(100.0 / max_drop) + 1
    n = min(max(rank_size, need), samples)
    return samples if 2 * n > samples else n


class GreedySearch:
    """One search run. `diagnose(model_bytes)` returns a Diagnosis of a candidate (on a small subset).

    `executor` evaluates each round's candidates (in this process by default; on Ray actors with the "ray" executor);
    its results come back in the candidates' order, so the decisions are the same wherever they ran. `baseline`, the
    unchanged model's evaluation on the whole set, saves evaluating it again when the ranking subset is the whole set.
    The evaluator's ranking subset is widened to `ranking_size`.
    """

    def __init__(self, builder: Builder, evaluator: Evaluator, diagnose: Callable[[bytes], Any], config: SearchConfig,
                 executor: Executor | None = None, baseline: Evaluation | None = None):
        from quantdoctor.executors.local import LocalExecutor

        self.builder, self.evaluator, self.diagnose, self.cfg = builder, evaluator, diagnose, config
        self.executor = executor if executor is not None else LocalExecutor()
        self._worker = WorkerMethod(CandidateWorker, (builder, evaluator), "evaluate")
        self.state = SearchState()
        self._why: dict[Action, Any] = {}  # the diagnosis each kept action was chosen from (to order its members)
        self._verified: set[Action] = set()  # kept actions that fix a cause a counterfactual proved
        self._seen: dict[tuple[tuple[Action, ...], int], Evaluation] = {}  # (actions, samples) -> their evaluation
        evaluator.rank_size = ranking_size(config.max_drop, evaluator.rank_size, len(evaluator.dataset))
        if baseline is not None and baseline.samples == len(evaluator.dataset):
            self._seen[((), baseline.samples)] = baseline
        self.start = time.perf_counter()
        self.names = {name for _, name in builder.ops}
        self._base_weights = _int8_weight_ops(builder.build([]))

    # -- public --------------------------------------------------------------------------------------------------------
    def run(self) -> tuple[list[Action], Evaluation]:
        """Search; returns (actions, their evaluation on the whole evaluation set)."""
        for full in (False, True):
            if full:
                self.evaluator.rank_size = len(self.evaluator.dataset)
            current = self._eval(self.state.actions)
            self._row(len(self.state.trajectory), "baseline" if not full else "resume on the whole set",
                      self.state.actions, current, full)
            if not self._within(current):
                current = self._greedy(current)
            if self._within(current):
                self._prune()
            final, fresh = self._eval_full(self.state.actions)
            self._row(len(self.state.trajectory), "final (fresh evaluation)" if fresh else "final (the whole set, above)",
                      self.state.actions, final, True)
            if self._within(final) or full or self.evaluator.rank_size >= len(self.evaluator.dataset):
                return self.state.actions, final
        raise AssertionError("unreachable")

    def changed_ops(self, actions: list[Action]) -> int:
        """How many ops the actions touch (an op-type action counts the ops of that type with int8 weights)."""
        touched: set[str] = set()
        for a in actions:
            touched.update(a.targets())
            op_type = getattr(a, "op_type", None)
            if op_type and isinstance(a, (PerChannel, KernelWorkaround)):
                touched.update(name for kind, name in self._base_weights if kind == op_type)
        return len(touched)

    # -- steps ---------------------------------------------------------------------------------------------------------
    def _greedy(self, current: Evaluation) -> Evaluation:
        diagnosis = self.diagnose(self.builder.build(self.state.actions))
        history: list[tuple[Evaluation, list[tuple[Candidate, Evaluation]]]] = []
        stepped_back = False
        excluded: set[Action] = set()
        while len(self.state.actions) < self.cfg.max_steps and self.evaluator.count < self.cfg.max_evaluations:
            quantized = self.builder.quantized_activations(self.builder.build(self.state.actions))
            ranked = [c for c in rank_candidates(diagnosis, self.builder.scheme, self.names, quantized=quantized)
                      if c.action not in self.state.actions and c.action not in excluded and self._supported(c.action)]
            tried = self._try(ranked, current.value)
            better = [(c, e) for c, e in tried if e.value > current.value]
            if better:
                cand, ev = better[0]
                self._why[cand.action] = diagnosis
                if cand.verified:
                    self._verified.add(cand.action)
                history.append((current, tried))
                self.state.actions.append(cand.action)
                current = ev
                self._row(len(self.state.trajectory), f"+ {cand.action.describe()}", self.state.actions, ev)
                if self._within(current):
                    return current
                diagnosis = self.diagnose(self.builder.build(self.state.actions))
                continue
            if not history or stepped_back:
                return current
            # One step back: undo the last action, keep its best runner-up if that beats the state before it.
            stepped_back = True
            before, alternatives = history.pop()
            undone = self.state.actions.pop()
            excluded.add(undone)
            self._row(len(self.state.trajectory), f"- {undone.describe()} (step back)", self.state.actions, before)
            current = before
            runner_up = [(c, e) for c, e in alternatives if c.action != undone and e.value > before.value]
            if runner_up:
                cand, ev = runner_up[0]
                self.state.actions.append(cand.action)
                current = ev
                self._row(len(self.state.trajectory), f"+ {cand.action.describe()}", self.state.actions, ev)
                if self._within(current):
                    return current
            diagnosis = self.diagnose(self.builder.build(self.state.actions))
        return current

    def _try(self, ranked: list[Candidate], reference: float) -> list[tuple[Candidate, Evaluation]]:
        """Evaluate rounds of candidates until one improves; results best first (ties: fewer changed ops)."""
        tried: list[tuple[Candidate, Evaluation]] = []
        if ranked and ranked[0].verified and self.evaluator.count < self.cfg.max_evaluations:
            # A fix for a proven cause is tried alone first: when it meets the budget, nothing else needs evaluating.
            # When it only improves, the other fixes of the same ops (the counterfactual made exactly these ops exact)
            # are its alternatives: one evaluation each decides between them, before any proxy-ranked candidate.
            tried = self._eval_many(ranked[:1])
            if tried and self._within(tried[0][1]):
                return tried
            ops = set(ranked[0].action.targets())
            same = [c for c in ranked[1:] if ops and c.verified and set(c.action.targets()) == ops]
            same = same[: self.cfg.per_step - 1]
            if tried and tried[0][1].value > reference:
                tried = self._best_first(tried + self._eval_many(same))
                return tried
            ranked = ranked[1:]
        for r in range(self.cfg.rounds_per_step):
            tried = self._best_first(tried + self._eval_many(ranked[r * self.cfg.per_step : (r + 1) * self.cfg.per_step]))
            if tried and tried[0][1].value > reference:
                break
        return tried

    def _best_first(self, tried: list[tuple[Candidate, Evaluation]]) -> list[tuple[Candidate, Evaluation]]:
        """Those that meet the budget first, the smallest change among them; then the best metric (stable: the
        ranking's order, least invasive first, breaks ties)."""
        return sorted(tried, key=lambda ce: (
            not self._within(ce[1]),
            self.changed_ops(self.state.actions + [ce[0].action]) if self._within(ce[1]) else 0,
            -ce[1].value,
            self.changed_ops(self.state.actions + [ce[0].action]),
        ))

    def _prune(self) -> None:
        if len(self.state.actions) >= 2:
            for action in list(reversed(self.state.actions)):
                rest = [a for a in self.state.actions if a != action]
                if self._proven_needed(action, rest):
                    continue
                if (tuple(rest), self.evaluator.rank_size) not in self._seen \
                        and self.evaluator.count >= self.cfg.max_evaluations:
                    break
                ev = self._eval(rest)  # the state before the last step was measured on the way: no evaluation
                if self._within(ev):
                    self.state.actions = rest
                    self._row(len(self.state.trajectory), f"- {action.describe()} (pruned)", rest, ev)
        for i, action in enumerate(list(self.state.actions)):
            self._narrow(i, action)

    def _proven_needed(self, action: Action, rest: list[Action]) -> bool:
        """Whether the diagnosis already answered that `action` cannot go: it fixes a cause a counterfactual proved
        (group testing found the loss carried by those ops, each one needed) and no other action touches its ops."""
        if action not in self._verified:
            return False
        others = {op for a in rest for op in self._members(a)}
        return not others & set(self._members(action))

    def _narrow(self, index: int, action: Action) -> None:
        """Shrink a group action (an op type, or several ops) to the members the budget needs.

        Members the diagnosis the action was chosen from shows as defects (observed error ≥ 10× what their parameters
        predict) or located as causes are kept without trying. The others, least suspect first (the op's own noise in
        that diagnosis), are dropped as far as the budget holds: all of them in one evaluation, else the longest
        droppable run found by bisection — one evaluation per halving, not one per member.
        """
        members = self._members(action)
        if len(members) < 2:
            return
        proxy = self._member_proxies(action)
        order = {op: i for i, op in enumerate(members)}
        free = sorted((m for m in members if not proxy.get(m, (0.0, False))[1]),
                      key=lambda m: (proxy.get(m, (0.0, False))[0], order[m]))[: len(members) - 1]

        def without(k: int) -> list[Action] | None:
            ops = tuple(o for o in members if o not in set(free[:k]))
            trial = replace(action, ops=ops, op_type=None) if hasattr(action, "op_type") else replace(action, ops=ops)
            if self.builder.unsupported(trial) is not None:
                return None
            return self.state.actions[:index] + [trial] + self.state.actions[index + 1 :]

        lo, hi, kept = 0, len(free) + 1, None  # dropping free[:lo] holds (nothing: the current state); free[:hi] fails
        probe = len(free)  # the least suspect members are often all superfluous: try that first
        while hi - lo > 1 and probe > lo:
            actions = without(probe)
            if actions is None or ((tuple(actions), self.evaluator.rank_size) not in self._seen
                                   and self.evaluator.count >= self.cfg.max_evaluations):
                break
            ev = self._eval(actions)
            if self._within(ev):
                lo, kept = probe, (actions, ev)
            else:
                hi = probe
            probe = (lo + hi) // 2
        if kept is not None:
            self.state.actions = kept[0]
            self._row(len(self.state.trajectory), f"~ {kept[0][index].describe()} (narrowed)", kept[0], kept[1])

    def _member_proxies(self, action: Action) -> dict[str, tuple[float, bool]]:
        """Member op → (proxy noise, whether it is a defect) from the diagnosis the action was chosen from."""
        from quantdoctor.repair.candidates import DEFECT_RATIO, _defect_ratio, layer_proxy

        diagnosis = self._why.get(action)
        verification = getattr(diagnosis, "verification", None)
        causes = set(verification.causes) if verification is not None else set()
        out: dict[str, tuple[float, bool]] = {}
        for layer in getattr(diagnosis, "layers", ()):
            op = layer.float_tensor if layer.float_tensor in self.names else layer.quant_tensor
            noise, _ = layer_proxy(layer)
            # Members of the located cause set are kept untried, as defects are: the counterfactual needed each.
            out[op] = (noise, _defect_ratio(layer, noise) >= DEFECT_RATIO or layer.position in causes)
        return out

    def _members(self, action: Action) -> list[str]:
        """The ops a group action touches, in execution order (the order `_narrow` breaks proxy ties by: earlier ops
        are dropped first, deeper ones, which see more error, stay)."""
        op_type = getattr(action, "op_type", None)
        if op_type:
            return [name for kind, name in self._base_weights if kind == op_type]
        return list(getattr(action, "ops", ()))

    # -- helpers -------------------------------------------------------------------------------------------------------
    def _supported(self, action: Action) -> bool:
        reason = self.builder.unsupported(action)
        if reason:
            self.state.skipped[action.describe()] = reason
        return reason is None

    def _eval(self, actions: list[Action]) -> Evaluation:
        """The actions' evaluation on the ranking subset: remembered, or one build and one quantized pass."""
        key = (tuple(actions), self.evaluator.rank_size)
        if key not in self._seen:
            self._seen[key] = self.evaluator.evaluate(self.builder.build(actions))
        return self._seen[key]

    def _eval_full(self, actions: list[Action]) -> tuple[Evaluation, bool]:
        """(the actions' evaluation on the whole set, whether it was made now): one made earlier in the search was a
        real build of the same actions on the same samples."""
        key = (tuple(actions), len(self.evaluator.dataset))
        fresh = key not in self._seen
        if fresh:
            self._seen[key] = self.evaluator.evaluate(self.builder.build(actions), full=True)
        return self._seen[key], fresh

    def _eval_many(self, candidates: list[Candidate]) -> list[tuple[Candidate, Evaluation]]:
        """Each candidate added to the current actions, evaluated through the executor, as a loop would evaluate them
        one by one: while the evaluation budget lasts (a rejected candidate costs none, so the next one takes its
        place), rejections recorded as skipped; the evaluations in the candidates' order."""
        known = {c: self._seen.get((tuple(self.state.actions + [c.action]), self.evaluator.rank_size)) for c in candidates}
        pending = [c for c in candidates if known[c] is None]
        while pending and self.evaluator.count < self.cfg.max_evaluations:
            batch, pending = pending[: self.cfg.max_evaluations - self.evaluator.count], \
                pending[self.cfg.max_evaluations - self.evaluator.count :]
            jobs = [(tuple(self.state.actions + [c.action]), self.evaluator.rank_size) for c in batch]
            # Counted here from the outcomes: in this process the worker's evaluator is this one and has counted
            # already; on Ray it is a copy. Setting (not adding) is right either way, and sums in the same order.
            count, seconds = self.evaluator.count, self.evaluator.seconds
            for cand, (actions, _), out in zip(batch, jobs, self.executor.map(self._worker, jobs)):
                if out.evaluation is None:
                    self.state.skipped[cand.action.describe()] = f"the quantizer failed: {out.error.splitlines()[0][:160]}"
                    continue
                count, seconds = count + 1, seconds + out.evaluation.seconds
                _remember(self.builder, actions, out.model)
                self._seen[(actions, out.evaluation.samples)] = known[cand] = out.evaluation
            self.evaluator.count, self.evaluator.seconds = count, seconds
        return [(c, known[c]) for c in candidates if known[c] is not None]

    def _within(self, ev: Evaluation) -> bool:
        return ev.drop <= self.cfg.max_drop + 1e-9

    def _row(self, step: int, change: str, actions: list[Action], ev: Evaluation, full: bool = False) -> None:
        size, float_ops = model_stats(self.builder.build(actions))
        self.state.trajectory.append(TrajectoryRow(
            step=step, change=change, metric=round(ev.value, 6), drop=round(ev.drop, 4), size_bytes=size,
            float_ops=float_ops, latency_ms=round(ev.latency_ms, 3), evaluations=self.evaluator.count,
            seconds=round(time.perf_counter() - self.start, 2), full=full or ev.samples == len(self.evaluator.dataset),
        ))


def _remember(builder: Builder, actions: tuple[Action, ...], model: bytes | None) -> None:
    """Put a model a worker built into this process' build cache, so keeping the candidate does not build it again.

    The cache is private to `Builder` (its key for plain actions is the action tuple); a builder without one rebuilds.
    """
    cache = getattr(builder, "_cache", None)
    if isinstance(cache, dict) and model is not None:
        cache.setdefault(tuple(actions), model)


def _int8_weight_ops(model: bytes) -> list[tuple[str, str]]:
    """(op type, output name) of the ops whose weight input is int8 in `model` (quantized, for an ONNX model)."""
    from quantdoctor.backends.tflite.extract import _opcode_name, _schema
    from quantdoctor.repair.flatbuffer import _name, _unpack

    if bytes(model[4:8]) != b"TFL3":
        from quantdoctor.repair.build_onnx import weighted_ops

        return weighted_ops(model)

    m = _unpack(model)
    sg = m.subgraphs[0]
    out = []
    for op in sg.operators:
        inputs = list(op.inputs if op.inputs is not None else [])
        outputs = [int(t) for t in (op.outputs if op.outputs is not None else []) if t >= 0]
        if len(inputs) > 1 and inputs[1] >= 0 and outputs and sg.tensors[int(inputs[1])].type == _schema().TensorType.INT8:
            out.append((_opcode_name(m.operatorCodes[op.opcodeIndex]), _name(sg.tensors[outputs[0]])))
    return out
