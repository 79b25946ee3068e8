"""Metric functions against hand-computed values and their documented edge cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantdoctor.errors import DataError, UnknownNameError
from quantdoctor.stats.metrics import (
    METRICS,
    as_probabilities,
    cosine_similarity,
    is_probabilities,
    kl_divergence,
    kl_rows,
    max_abs_error,
    relative_rmse,
    rmse,
    softmax,
    sqnr_db,
)

INF, NAN = math.inf, math.nan

# reference, test, sqnr_db, cosine, relative_rmse, rmse, max_abs_error -- all worked out by hand:
CASES = [
    # Σr²=14, Σe²=1: 10·log10(14)=11.4613; ⟨r,t⟩=17, ‖r‖‖t‖=√14·√21=√294; 1/√14; √(1/3)
    ([1, 2, 3], [1, 2, 4], 11.461280, 0.991460, 0.267261, 0.577350, 1.0),
    # test = ref/2: Σr²=56, Σe²=14 -> 10·log10(4)=6.0206; same direction; rel 0.5; √(14/3)
    ([2, 4, 6], [1, 2, 3], 6.020600, 1.0, 0.5, 2.160247, 3.0),
    # sign flip: Σr²=2, Σe²=8 -> 10·log10(1/4); cosine -1; rel 2; rmse √(8/2)
    ([1, -1], [-1, 1], -6.020600, -1.0, 2.0, 2.0, 2.0),
    # test all zero: Σe² = Σr² -> 0 dB; one zero vector -> cosine 0; rmse √(25/2)
    ([3, 4], [0, 0], 0.0, 0.0, 1.0, 3.535534, 4.0),
    # identical 2-D tensors
    ([[1, 0], [0, 1]], [[1, 0], [0, 1]], INF, 1.0, 0.0, 0.0, 0.0),
    # zero reference, zero test: no error -> +inf, both zero -> cosine 1, rel 0
    ([0, 0], [0, 0], INF, 1.0, 0.0, 0.0, 0.0),
    # zero reference, non-zero test: -inf, cosine 0, rel inf, rmse √(9/2)
    ([0, 0], [0, 3], -INF, 0.0, INF, 2.121320, 3.0),
    # empty
    ([], [], NAN, NAN, NAN, NAN, NAN),
    # NaN anywhere
    ([1, NAN], [1, 2], NAN, NAN, NAN, NAN, NAN),
    ([1, 2], [NAN, 2], NAN, NAN, NAN, NAN, NAN),
]
FUNCTIONS = [sqnr_db, cosine_similarity, relative_rmse, rmse, max_abs_error]


def _same(actual: float, expected: float) -> bool:
    if math.isnan(expected):
        return math.isnan(actual)
    return actual == pytest.approx(expected, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("case", CASES, ids=lambda case: f"{case[0]}-vs-{case[1]}")
def test_metrics_match_hand_computed_values(case):
    ref, test, *expected = case
    for fn, want in zip(FUNCTIONS, expected):
        got = fn(np.array(ref, dtype=np.float32), np.array(test, dtype=np.float32))
        assert isinstance(got, float)
        assert _same(got, want), f"{fn.__name__}({ref}, {test}) = {got}, expected {want}"


def test_sqnr_and_relative_rmse_agree():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=100)
    test = ref + rng.normal(scale=0.1, size=100)
    assert relative_rmse(ref, test) == pytest.approx(10 ** (-sqnr_db(ref, test) / 20), rel=1e-12)


def test_infinite_error_gives_minus_inf_sqnr():
    assert sqnr_db([1.0], [np.inf]) == -INF
    assert relative_rmse([1.0], [np.inf]) == INF


def test_shapes_may_differ_but_sizes_must_match():
    assert sqnr_db(np.ones((1, 3)), np.ones(3)) == INF
    with pytest.raises(DataError, match="3 elements.*4"):
        rmse(np.ones(3), np.ones(4))


def test_registry_holds_every_metric():
    assert METRICS.names() == [
        "sqnr_db", "cosine_similarity", "relative_rmse", "rmse", "max_abs_error", "kl_divergence"
    ]
    assert METRICS.get("sqnr_db") is sqnr_db
    with pytest.raises(UnknownNameError, match="unknown metric 'snr'"):
        METRICS.get("snr")


def test_every_metric_docstring_states_formula_and_edge_cases():
    for _, fn in METRICS.items():
        doc = fn.__doc__ or ""
        assert "Reference" in doc and "empty" in doc and "NaN" in doc, fn.__name__


# KL by hand: KL([.5,.5]‖[.25,.75]) = .5·ln 2 + .5·ln(2/3) = 0.143841
KL_HALF_QUARTER = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)


def test_kl_divergence_hand_computed():
    assert KL_HALF_QUARTER == pytest.approx(0.143841, abs=1e-6)
    p = np.array([[0.5, 0.5], [0.9, 0.1]])
    q = np.array([[0.25, 0.75], [0.9, 0.1]])
    # mean over rows: (0.143841 + 0) / 2
    assert kl_divergence(p, q) == pytest.approx(0.0719205, rel=1e-5)
    assert kl_rows(p, q) == pytest.approx([0.143841, 0.0], abs=1e-6)
    # rows along axis 0 instead
    assert kl_divergence(p.T, q.T, axis=0) == pytest.approx(0.0719205, rel=1e-5)
    assert kl_divergence(p, p) == 0.0


def test_kl_divergence_eps_clipping():
    # p has a zero: that term is 1e-12·ln(1e-12/0.5) ≈ -2.7e-11, so KL ≈ ln 2
    assert kl_divergence([1.0, 0.0], [0.5, 0.5]) == pytest.approx(math.log(2), abs=1e-9)
    # q has a zero where p does not: .5·ln(.5) + .5·ln(.5/1e-12) = 13.122363, finite instead of +inf
    assert kl_divergence([0.5, 0.5], [1.0, 0.0]) == pytest.approx(13.122363, rel=1e-6)


def test_kl_divergence_edge_cases():
    assert math.isnan(kl_divergence(np.zeros((0, 3)), np.zeros((0, 3))))
    assert math.isnan(kl_divergence([0.5, NAN], [0.5, 0.5]))
    with pytest.raises(DataError, match="same shape"):
        kl_divergence(np.ones((2, 3)) / 3, np.ones((3, 2)) / 2)


def test_softmax_hand_computed_and_stable():
    assert softmax([0.0, math.log(2), math.log(3)]) == pytest.approx([1 / 6, 2 / 6, 3 / 6], rel=1e-12)
    # exp(1000) overflows; the max shift makes it exp(0)
    assert softmax([[1000.0, 1000.0 + math.log(3)]]) == pytest.approx(np.array([[0.25, 0.75]]), rel=1e-12)
    assert softmax([[1.0, 3.0], [3.0, 3.0]], axis=0) == pytest.approx(
        np.array([[1 / (1 + math.e**2), 0.5], [math.e**2 / (1 + math.e**2), 0.5]]), rel=1e-12
    )
    assert softmax(np.zeros((0, 4))).shape == (0, 4)


def test_as_probabilities_keeps_probabilities_and_softmaxes_logits():
    probs = np.array([[0.2, 0.3, 0.5], [0.0, 0.0, 1.0005]], dtype=np.float32)  # within 1e-3 of 1
    assert as_probabilities(probs) is probs
    logits = np.array([[0.0, math.log(3)]])
    assert as_probabilities(logits) == pytest.approx(np.array([[0.25, 0.75]]))
    # one row summing to 1.01 makes the whole batch logits
    assert not is_probabilities([[0.5, 0.5], [0.5, 0.51]])
    # non-negative is required even when the row sums to 1
    assert not is_probabilities([[1.5, -0.5]])
    assert not is_probabilities([[NAN, 1.0]])
