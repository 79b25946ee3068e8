"""MarginAccumulator: hand-computed cases, streaming and merging, the Gaussian flip model, and validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from quantdoctor.errors import DataError, UserInputError
from quantdoctor.stats.margins import MarginAccumulator, OutputMargins, flip_probability

# Float margins 2 and 0 (the tie ranks class 0 first). Decisive-pair noise d = (q_a − q_b) − (f_a − f_b):
# row 0: (2 − 1.5) − 2 = −1.5; row 1: (2 − 2.5) − 0 = −0.5 → mean −1, population std 0.5.
FLOAT = np.array([[3.0, 1.0, 0.0], [2.0, 2.0, 0.0]])
QUANT = np.array([[2.0, 1.5, 0.0], [2.0, 2.5, 0.0]])
RESOLUTION = 10 ** (1 / 40) - 1  # one bucket of the default histogram, relative


def _stream(f, q, chunk=None, k=3) -> OutputMargins:
    acc = MarginAccumulator(k=k)
    for start in range(0, len(f), chunk or len(f)):
        acc.update(f[start : start + (chunk or len(f))], q[start : start + (chunk or len(f))])
    return acc.result()


def _crowded(n=20000, classes=10, sigma=0.5, seed=0, gap=0.5, shift=0.0):
    """Float logits with exponential top-1 margins (mean 0.5), other classes `gap`-spaced below; q = f + N(0, σ²).

    `shift` lowers the quantized top-1 logit, a systematic bias on the decisive difference.
    """
    rng = np.random.default_rng(seed)
    margins = rng.exponential(0.5, n)
    f = np.empty((n, classes))
    f[:, 0], f[:, 1] = 0.0, -margins
    f[:, 2:] = -margins[:, None] - np.cumsum(rng.exponential(gap, (n, classes - 2)), axis=1)
    f = np.take_along_axis(f, np.argsort(rng.random((n, classes)), axis=1), axis=1)  # top-1 anywhere
    q = f + rng.normal(0.0, sigma, f.shape)
    q[np.arange(n), np.argmax(f, axis=1)] -= shift
    return f, q, margins


def test_small_case_by_hand():
    m = _stream(FLOAT, QUANT, k=2)
    assert (m.num_samples, m.num_classes, m.k) == (2, 3, 2)
    assert (m.top1_margin_mean, m.top1_margin_min) == (1.0, 0.0)
    assert (m.pair_noise_mean, m.pair_noise_std) == (pytest.approx(-1.0), pytest.approx(0.5))
    # errors: row 0 [−1, .5, 0], row 1 [0, .5, 0] → Σe² = 1.5 over 6 logits
    assert m.noise_rms == pytest.approx(0.5)
    # top-k boundary (ranks 2, 3): float margins 1 and 2; d = (1.5 − 0) − 1 = .5 and (2.5 − 0) − 2 = .5
    assert (m.topk_margin_mean, m.topk_pair_noise_std) == (1.5, pytest.approx(0.0, abs=1e-12))
    # exit pair (ranks 1, 3): d = (2 − 0) − 3 = −1 and (2 − 0) − 2 = 0
    assert (m.exit_pair_noise_mean, m.exit_pair_noise_std) == (pytest.approx(-0.5), pytest.approx(0.5))
    assert (m.observed_flip_rate, m.observed_topk_exit_rate) == (0.5, 0.0)
    # Φ(−(0 − 1)/.5) = Φ(2) = .97725 for the tie, Φ(−(2 − 1)/.5) = .02275 → mean .5 (bucket centre ≈ 2)
    assert m.predicted_flip_rate == pytest.approx(0.5, abs=0.01)
    assert m.explained_share == pytest.approx(m.predicted_flip_rate / 0.5)
    assert m.share_below_noise == 0.5  # margin 0 < 0.5 ≤ margin 2
    assert sum(m.top1_counts) == 2 and m.top1_counts[0] == 1 and len(m.bin_edges) == len(m.top1_counts) + 1
    assert m.bin_edges[0] == 0.0 and m.bin_edges[1] == pytest.approx(1e-6)
    bucket = int(np.searchsorted(m.bin_edges, 2.0, side="right")) - 1
    assert m.top1_counts[bucket] == 1


def test_flip_probability_formula():
    got = flip_probability(np.array([0.0, 1.0, 2.0, -1.0]), 1.0)
    # Φ(0), Φ(−1), Φ(−2), Φ(1)
    np.testing.assert_allclose(got, [0.5, 0.158655, 0.022750, 0.841345], atol=1e-6)
    assert flip_probability(np.array([1.0]), 0.5, mean=-1.0)[0] == pytest.approx(0.5)
    np.testing.assert_array_equal(flip_probability(np.array([0.0, 1.0, -1.0]), 0.0), [0.0, 0.0, 1.0])
    assert math.isnan(flip_probability(np.array([1.0]), math.nan)[0])
    with pytest.raises(ValueError, match="sigma"):
        flip_probability(np.array([1.0]), -1.0)


def test_margin_statistics_match_numpy_within_a_bucket():
    f, q, margins = _crowded(n=5000)
    m = _stream(f, q)
    assert m.top1_margin_mean == pytest.approx(margins.mean(), rel=1e-9)
    assert m.top1_margin_min == pytest.approx(margins.min(), rel=1e-9)
    assert m.top1_margin_median == pytest.approx(np.median(margins), rel=RESOLUTION)
    assert m.top1_margin_p10 == pytest.approx(np.percentile(margins, 10), rel=RESOLUTION)
    assert m.noise_rms == pytest.approx(np.sqrt(np.mean((q - f) ** 2)), rel=1e-9)
    assert m.share_below_noise == pytest.approx(np.mean(margins < m.pair_noise_std), abs=2e-3)


def test_streamed_equals_all_at_once():
    f, q, _ = _crowded(n=3000)
    whole, streamed = _stream(f, q), _stream(f, q, chunk=128)
    assert streamed.top1_counts == whole.top1_counts and streamed.topk_counts == whole.topk_counts
    for name, value in whole.to_dict().items():
        if isinstance(value, float):
            assert getattr(streamed, name) == pytest.approx(value, rel=1e-9), name


def test_merge_equals_concatenation_and_leaves_inputs_alone():
    f, q, _ = _crowded(n=2000)
    a, b = MarginAccumulator(k=2), MarginAccumulator(k=2)
    a.update(f[:700], q[:700])
    b.update(f[700:], q[700:])
    before = a.result().to_dict()
    merged = a.merge(b).result()
    assert a.result().to_dict() == before
    whole = _stream(f, q, k=2)
    assert merged.top1_counts == whole.top1_counts and merged.num_samples == 2000
    for name in ("pair_noise_std", "pair_noise_mean", "exit_pair_noise_std", "noise_rms", "predicted_flip_rate"):
        assert getattr(merged, name) == pytest.approx(getattr(whole, name), rel=1e-9), name
    assert MarginAccumulator(k=2).merge(a).result().to_dict() == before  # an empty one is the identity
    with pytest.raises(ValueError, match="cannot merge"):
        a.merge(MarginAccumulator(k=3))


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_gaussian_noise_predicts_the_observed_flips(shift):
    # Runner-up alone near the top (others ≥ 20 below); σ = 0.5 per logit → σ√2 on the pair.
    f, q, _ = _crowded(gap=20.0, shift=shift)
    m = _stream(f, q, chunk=1000)
    assert m.pair_noise_std == pytest.approx(0.5 * math.sqrt(2), rel=0.02)
    assert m.pair_noise_mean == pytest.approx(-shift, abs=0.02)
    # measured (predicted vs observed): 0.2855 vs 0.2856 (shift 0), 0.4236 vs 0.4242 (shift 0.3)
    assert m.explained_share == pytest.approx(1.0, abs=0.03)
    if shift:  # without the bias term the model would miss a third of the flips
        centres = np.sqrt(np.array(m.bin_edges[1:-1]) * np.array(m.bin_edges[2:]))
        unbiased = float(np.dot(m.top1_counts[1:], flip_probability(centres, m.pair_noise_std))) / m.num_samples
        assert unbiased / m.observed_flip_rate < 0.8
    assert m.predicted_topk_exit_rate < 1e-3 and m.observed_topk_exit_rate < 1e-3


def test_crowded_top_flips_more_than_the_runner_up_explains():
    # The 200-vs-80-classes mechanism: classes 3, 4, ... are close too, so they also overtake the top-1.
    f, q, _ = _crowded(gap=0.5)
    m = _stream(f, q, chunk=1000)
    assert m.observed_flip_rate == pytest.approx(0.362, abs=0.01)
    assert 0.7 < m.explained_share < 0.85  # measured 0.79
    # top-3 exit: predicted from rank 4 overtaking alone, an overestimate (measured 0.071 vs 0.049)
    assert 1.0 < m.predicted_topk_exit_rate / m.observed_topk_exit_rate < 1.6


def test_k1_exit_is_the_flip():
    f, q, _ = _crowded(n=2000)
    m = _stream(f, q, k=1)
    assert (m.predicted_topk_exit_rate, m.observed_topk_exit_rate) == (m.predicted_flip_rate, m.observed_flip_rate)


def test_empty_accumulator_gives_nan_and_round_trips():
    m = MarginAccumulator().result()
    assert (m.num_samples, m.num_classes) == (0, 0)
    for name in ("top1_margin_median", "noise_rms", "pair_noise_std", "predicted_flip_rate", "explained_share"):
        assert math.isnan(getattr(m, name)), name
    assert sum(m.top1_counts) == 0
    empty_batch = MarginAccumulator()
    empty_batch.update(np.zeros((0, 4)), np.zeros((0, 4)))
    assert math.isnan(empty_batch.result().observed_flip_rate)


def test_no_flips_gives_nan_explained_share_and_json_round_trip():
    m = _stream(FLOAT, FLOAT + 0.01)
    assert m.observed_flip_rate == 0.0 and math.isnan(m.explained_share)
    assert m.k == 2  # k=3 clipped to num_classes − 1
    again = OutputMargins.from_dict(json.loads(json.dumps(m.to_dict())))
    assert again.top1_counts == m.top1_counts and again.bin_edges == m.bin_edges
    assert again.pair_noise_std == m.pair_noise_std
    assert all(type(v) is float for v in m.to_dict().values() if isinstance(v, float))


def test_nonfinite_rows_are_counted_and_left_out():
    f, q = FLOAT.copy(), QUANT.copy()
    acc = MarginAccumulator(k=2)
    acc.update(np.vstack([f, [[np.nan, 0, 0]]]), np.vstack([q, [[0, 0, 0]]]))
    m = acc.result()
    assert (m.num_samples, m.num_nonfinite) == (3, 1)
    assert m.pair_noise_std == pytest.approx(0.5) and m.observed_flip_rate == 0.5


@pytest.mark.parametrize(
    ("f", "q", "message"),
    [
        (np.zeros((2, 3)), np.zeros((2, 4)), r"shape \(2, 3\), quantized logits \(2, 4\)"),
        (np.zeros(3), np.zeros(3), r"expected \(N, C\)"),
        (np.zeros((2, 1)), np.zeros((2, 1)), "C >= 2"),
    ],
)
def test_bad_shapes_raise_data_error(f, q, message):
    with pytest.raises(DataError, match=message):
        MarginAccumulator().update(f, q)


def test_class_count_must_not_change_and_settings_are_checked():
    acc = MarginAccumulator()
    acc.update(FLOAT, QUANT)
    with pytest.raises(DataError, match="earlier batches had 3"):
        acc.update(np.zeros((1, 4)), np.zeros((1, 4)))
    for kwargs in ({"k": 0}, {"bins": 0}, {"k": True}, {"bins": 2.5}):
        with pytest.raises(UserInputError):
            MarginAccumulator(**kwargs)
