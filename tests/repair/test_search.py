"""The search's evaluation count: the ranking subset sized from the budget, a verified cause repaired with one
evaluation of its fix, group narrowing by bisection, evaluations remembered."""

from __future__ import annotations

import pickle

import pytest

from quantdoctor.repair import search
from quantdoctor.repair.actions import KeepFloat
from quantdoctor.repair.evaluate import Evaluation
from quantdoctor.repair.search import GreedySearch, SearchConfig, ranking_size


@pytest.mark.parametrize("max_drop, rank_size, samples, expected", [
    (5.0, 32, 400, 32),  # one flip in 32 = 3.1 points < 5
    (1.0, 32, 400, 101),  # one flip must cost < 1 point: 101 samples
    (1.0, 32, 120, 120),  # 101 of 120: the whole set
    (0.5, 32, 1000, 201),
    (0.0, 32, 400, 400),  # no flip allowed: every sample
    (10.0, 64, 400, 64),  # never fewer than asked for
    (5.0, 32, 20, 20),  # never more than there are
])
def test_ranking_size_puts_one_flip_below_the_budget(max_drop, rank_size, samples, expected):
    assert ranking_size(max_drop, rank_size, samples) == expected


def test_a_verified_cause_is_repaired_with_one_evaluation_of_its_fix(planted_npz, tmp_path):
    """The planted ×1000 outlier: the diagnosis verifies c2_relu + proj_bn (making them exact recovers the loss), so
    keeping exactly those ops float is built and evaluated once on the whole set, and that evaluation is the final one."""
    import tests.planted as planted
    from quantdoctor.repair import repair

    path = tmp_path / "outlier.keras"
    planted.planted_outlier(1000.0).save(path)
    r = repair(path, planted_npz, scheme="int8", calib_count=16, max_drop=1.0)
    assert r.baseline_metric < 0.2 and r.budget_met and r.final_metric >= 0.99
    assert r.actions == (KeepFloat(ops=r.actions[0].targets()),)
    assert r.evaluations == 3  # the baseline, one diagnosis, the verified cause's fix (on the whole set: also the final)
    assert [row.change.split(" ")[0] for row in r.trajectory] == ["baseline", "+", "final"]
    assert r.trajectory[-1].change == "final (the whole set, above)" and r.trajectory[-1].evaluations == 3


class _Builder:
    """Builds a "model" that is the pickled action list; 16 ops with weights."""

    scheme = "dynamic-per-tensor"
    ops = [("CONV_2D", f"op{i}") for i in range(16)]

    def build(self, actions):
        return pickle.dumps(list(actions))

    def unsupported(self, action):
        return None


class _Evaluator:
    """Meets a 1-point budget only while every op in `needed` is kept float."""

    def __init__(self, needed: set[str]):
        self.dataset, self.rank_size, self.count, self.seconds, self.needed = list(range(200)), 200, 0, 0.0, needed

    def evaluate(self, model: bytes, full: bool = False) -> Evaluation:
        self.count += 1
        kept = {op for a in pickle.loads(model) for op in a.targets()}
        value = 1.0 if self.needed <= kept else 0.9
        return Evaluation(value, 100 * (1 - value), len(self.dataset), 0.0, 0.0, None)


def test_a_group_is_narrowed_by_bisection_and_known_answers_cost_nothing(monkeypatch):
    monkeypatch.setattr(search, "_int8_weight_ops", lambda model: list(_Builder.ops))
    monkeypatch.setattr(search, "model_stats", lambda model: (len(model), 0))
    evaluator = _Evaluator({"op13"})
    engine = GreedySearch(_Builder(), evaluator, lambda model: None, SearchConfig(max_drop=1.0))
    every = KeepFloat(ops=tuple(name for _, name in _Builder.ops))
    engine.state.actions = [every]
    engine._narrow(0, every)
    # Dropping all 15 droppable members fails; bisection then finds the longest droppable run in 4 more evaluations
    # (one member at a time would take 15).
    assert evaluator.count == 5
    assert engine.state.actions == [KeepFloat(ops=("op13", "op14", "op15"))]
    assert engine.state.trajectory[-1].change.endswith("(narrowed)")


def test_pruning_does_not_evaluate_a_state_measured_on_the_way(monkeypatch):
    monkeypatch.setattr(search, "_int8_weight_ops", lambda model: list(_Builder.ops))
    monkeypatch.setattr(search, "model_stats", lambda model: (len(model), 0))
    evaluator = _Evaluator({"op13"})
    engine = GreedySearch(_Builder(), evaluator, lambda model: None, SearchConfig(max_drop=1.0))
    cause, extra = KeepFloat(ops=("op13",)), KeepFloat(ops=("op0",))
    engine._eval([cause])  # the greedy measured this state before it added `extra`
    engine.state.actions = [cause, extra]
    engine._prune()
    assert engine.state.actions == [cause]
    assert evaluator.count == 2  # [cause] was known; only [] (without the cause) was evaluated, and it misses
