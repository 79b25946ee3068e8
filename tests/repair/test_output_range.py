"""The output range judged by the decisions it serves (`ranges.decision_range`), and its repair of an integer output
whose range one far-off class stretches."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from quantdoctor.repair.actions import CalibrationRange, action_from_dict
from quantdoctor.repair.ranges import (
    MAX_ROWS, RangeHistogram, choose_range, decision_range, decision_score, grid_codes, top_values,
)


def _far_class(n: int = 400, classes: int = 10, offset: float = -1000.0, seed: int = 0) -> np.ndarray:
    """Logits in [-5, 8] with top-1 margins of 0.2 to 2, and class 0 `offset` below the rest."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-5.0, 5.0, size=(n, classes))
    win = rng.integers(1, classes, size=n)
    x[np.arange(n), win] = x.max(axis=1) + rng.uniform(0.2, 2.0, size=n)
    x[:, 0] += offset
    return x


def _normal(n: int = 400, classes: int = 10, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 3.0, size=(n, classes))


def _positive(n: int = 200, classes: int = 5, seed: int = 2) -> np.ndarray:
    return np.random.default_rng(seed).uniform(1.0, 9.0, size=(n, classes))


def _binary(n: int = 200, seed: int = 3) -> np.ndarray:
    x = np.random.default_rng(seed).normal(0.0, 1.0, size=(n, 2))
    x[:, 1] -= 500.0  # the second class far below: only two values per row (top-k padding with -inf)
    x[: n // 2, 1] += 1000.0  # ...half the time far above
    return x


# name: (logits, minimum top-1 rows the min-max range loses, lowest allowed min of the decision range)
CASES = {
    "one class far below": (_far_class(), 100, -5.0),
    "one class 100 below": (_far_class(offset=-100.0), 5, -5.0),
    "no far class": (_normal(), 0, None),
    "all positive": (_positive(), 0, 0.0),
    "two classes": (_binary(), 0, None),
}


@pytest.mark.parametrize("name", list(CASES))
def test_decision_range_keeps_the_argmax(name):
    logits, lost_by_minmax, lowest = CASES[name]
    n = len(logits)
    lo0, hi0 = min(logits.min(), 0.0), max(logits.max(), 0.0)
    tops = top_values(logits, 4)
    minmax_top1, minmax_topk, _ = decision_score(tops, lo0, hi0)
    lo, hi = decision_range(logits)
    top1, topk, _ = decision_score(tops, lo, hi)

    assert lo0 <= lo <= 0.0 <= hi == hi0  # inside the calibrated range, with 0; the top end is never clipped
    assert n - minmax_top1 >= lost_by_minmax  # the min-max step swallows the margins...
    assert top1 >= minmax_top1 and (top1, topk) >= (minmax_top1, minmax_topk)  # ...the decision range never does worse
    if lost_by_minmax:
        assert top1 == n  # every argmax survives the quantize-dequantize
        step_minmax, step = (hi0 - lo0) / 255, (hi - lo) / 255
        assert step < 0.2 * step_minmax
    if lowest is not None:
        assert lo >= lowest
    # the argmax of the dequantized grid agrees with the float argmax wherever the score says it does
    codes = grid_codes(logits, lo, hi)
    unique = (np.sort(codes, axis=1)[:, -1] > np.sort(codes, axis=1)[:, -2])
    assert np.sum(unique & (codes.argmax(axis=1) == logits.argmax(axis=1))) == top1


def test_grid_codes_nudge_zero_and_clip():
    lo, hi = -1.0, 2.0
    codes = grid_codes(np.array([-5.0, lo, 0.0, hi, 7.0, -np.inf]), lo, hi)
    zero = codes[2]
    assert codes[0] == codes[1] == -128 and codes[3] == codes[4] == 127  # values outside clip to the end codes
    assert zero == np.round(-128 - lo / ((hi - lo) / 255))  # 0 is exactly the zero point
    assert codes[5] == -129  # padding ranks below every real value


def test_streamed_histogram_gives_the_same_range_and_stays_bounded():
    logits = _far_class(n=3000)
    hist = RangeHistogram(logits.min(), logits.max())
    for batch in np.array_split(logits, 37):
        hist.update(batch)
    assert hist.tops.shape == (3000, 4)
    assert choose_range(hist, "decision") == decision_range(logits, logits.min(), logits.max())
    big = RangeHistogram(-1.0, 1.0)
    for _ in range(5):
        big.update(np.random.default_rng(0).normal(size=(MAX_ROWS // 2, 7)))
    assert big.tops.shape == (MAX_ROWS, 4)  # a uniform sample beyond MAX_ROWS rows
    flat = RangeHistogram(-1.0, 1.0)
    flat.update(np.linspace(-1.0, 1.0, 50))  # no rows of two or more values: min-max
    assert choose_range(flat, "decision") == (-1.0, 1.0)


def test_decision_action_round_trip():
    action = CalibrationRange(tensor="out", method="decision")
    assert action_from_dict(action.to_dict()) == action
    assert action.describe() == "decision calibration range for out"


def _fake_diagnosis(mechanism: str):
    quant = SimpleNamespace(scales=[4.0])
    acc = SimpleNamespace(sqnr_db=20.0)
    layers = [
        SimpleNamespace(position=i, float_tensor=name, quant_tensor=name, op_type=t, quant=quant, weights=None,
                        isolated=None, noise_added=0.01, sqnr_drop_db=1.0, accumulated=acc, expected=None)
        for i, (name, t) in enumerate([("fc", "FULLY_CONNECTED"), ("out", "FULLY_CONNECTED")])
    ]
    finding = SimpleNamespace(mechanism=mechanism, positions=(1,), severity="critical", score=0.9)
    return SimpleNamespace(layers=layers, findings=[finding])


@pytest.mark.parametrize("scheme, mechanism, proposed", [
    ("int8-io", "output_margins", True), ("int8", "output_margins", True),
    ("int16x8", "output_margins", False), ("dynamic", "output_margins", False), ("int8-io", "low_grid_coverage", False),
])
def test_output_margins_proposes_the_decision_range(scheme, mechanism, proposed):
    from quantdoctor.repair.candidates import rank_candidates

    ranked = rank_candidates(_fake_diagnosis(mechanism), scheme, {"fc", "out"})
    decision = CalibrationRange(tensor="out", method="decision")
    assert (decision in [c.action for c in ranked]) == proposed
    if proposed:  # ranked first: it targets the metric the budget is on
        assert ranked[0].action == decision


def test_int8_io_far_class_is_repaired_by_the_decision_range(planted_npz, tmp_path, monkeypatch):
    """One class 1000 below the rest under int8-io: MSE, KL and percentile keep the wide output range (step ~4 against
    margins of ~2); the decision range clips the low end and meets a 1-point budget. Without it the search ends
    short."""
    from quantdoctor.repair import apply_recipe, candidates, repair
    from tests.planted import planted_low_class

    path = tmp_path / "low.keras"
    planted_low_class().save(path)
    r = repair(path, planted_npz, scheme="int8-io", max_drop=1.0, calib_count=16, out=tmp_path / "out")
    assert r.baseline_metric < 0.8
    assert r.budget_met and r.final_metric >= 0.99
    assert [(a.kind, getattr(a, "method", None)) for a in r.actions] == [("calibration_range", "decision")]
    assert r.changed_ops == 1
    assert apply_recipe(tmp_path / "out" / "recipe.json", path) == (tmp_path / "out" / "repaired.tflite").read_bytes()

    monkeypatch.setattr(candidates, "DECISION_SCHEMES", frozenset())  # the search as it was before the decision range
    before = repair(path, planted_npz, scheme="int8-io", max_drop=1.0, calib_count=16)
    assert not before.budget_met and before.final_metric < 0.9
    print(f"\nagreement: baseline {r.baseline_metric:.4f}; without the decision range {before.final_metric:.4f} "
          f"({before.evaluations} evaluations); with it {r.final_metric:.4f} ({r.evaluations} evaluations)")
