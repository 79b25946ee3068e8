"""ActivationAccumulator: hand-computed shares, numpy/scipy oracles, streaming == all at once, fixed memory."""

from __future__ import annotations

import json
import math
import pickle
import tracemalloc

import numpy as np
import pytest
import scipy.stats

from quantdoctor.errors import DataError, UserInputError
from quantdoctor.stats.activations import PERCENTILES, ActivationAccumulator, ActivationStats, LogHistogram


def _stream(x: np.ndarray, cuts: list[int], **kwargs) -> ActivationAccumulator:
    acc = ActivationAccumulator(**kwargs)
    for lo, hi in zip([0, *cuts], [*cuts, len(x)]):
        acc.update(x[lo:hi])
    return acc


def _footprint(acc: object) -> dict:
    """Every attribute's type and, for arrays and lists, shape: what would grow if memory grew with the data."""
    out = {}
    for name, value in vars(acc).items():
        if isinstance(value, np.ndarray):
            out[name] = ("array", value.shape)
        elif isinstance(value, (list, tuple, dict)):
            out[name] = (type(value).__name__, len(value))
        elif hasattr(value, "__dict__"):
            out[name] = _footprint(value)
        else:
            out[name] = type(value).__name__
    return out


DISTRIBUTIONS = {
    "normal": lambda rng, shape: rng.normal(0.3, 2.0, shape),
    "student_t_1.5": lambda rng, shape: rng.standard_t(1.5, shape),
    "cauchy": lambda rng, shape: rng.standard_cauchy(shape),
    "lognormal": lambda rng, shape: rng.lognormal(0.0, 2.0, shape),
    "relu6_half_zeros": lambda rng, shape: np.clip(rng.normal(0.0, 2.0, shape), 0.0, 6.0),
    "negative_skewed": lambda rng, shape: -rng.exponential(3.0, shape) + 0.5,
}


@pytest.mark.parametrize(
    "values, kwargs, clipped, zero",
    [
        # step from qrange: 2/255; |x| < 1/255 holds 0 and 0.001
        ([-2, -1, 0, 0.001, 1, 2], {"qrange": (-1, 1)}, 2 / 6, 2 / 6),
        # |x| < 1.25 holds -1, 0, 0.001, 1; no qrange, no clipped share
        ([-2, -1, 0, 0.001, 1, 2], {"step": 2.5}, None, 4 / 6),
        # zero level moved to 1.0: |x − 1| < 0.25 holds 1 only
        ([-2, -1, 0, 0.001, 1, 2], {"step": 0.5, "zero_level": 1.0}, None, 1 / 6),
        # a ReLU6 grid (zp = -128, scale 6/255): 6.5 and -0.1 are clipped, 6.0 sits on qmax; only 0 rounds to zero
        ([0, 3, 6, 6.5, -0.1], {"qrange": (0.0, 6.0)}, 2 / 5, 1 / 5),
        # neither qrange nor step: no shares
        ([1, 2, 3], {}, None, None),
    ],
)
def test_hand_computed_shares(values, kwargs, clipped, zero):
    acc = ActivationAccumulator(**kwargs)
    x = np.array(values, dtype=np.float32)
    acc.update(x)  # a 1-D batch: one value per sample, one channel
    result = acc.result()
    assert result.clipped_share == (None if clipped is None else pytest.approx(clipped))
    assert result.zero_share == (None if zero is None else pytest.approx(zero))
    assert (result.min, result.max, result.num_values) == (x.min(), x.max(), len(values))


def test_hand_computed_moments_and_channels():
    # two samples, two channels (last axis): channel 0 holds 1, 3, 5, 7; channel 1 holds 0, 0, 0, 8
    x = np.array([[[1, 0], [3, 0]], [[5, 0], [7, 8]]], dtype=np.float32)
    result = _stream(x, [1]).result()
    assert result.mean == pytest.approx(3.0)  # 24 / 8
    # deviations -2 -3 0 -3 2 -3 4 5: Σd² = 76, Σd⁴ = 1156 → m2 = 9.5, m4 = 144.5
    assert result.std == pytest.approx(math.sqrt(9.5))
    assert result.kurtosis == pytest.approx(144.5 / 9.5**2 - 3)
    assert result.channel_min == (1.0, 0.0) and result.channel_max == (7.0, 8.0)
    assert result.channel_range_ratio == pytest.approx(8 / 7)  # ranges 6 and 8: widest 8 / median 7


def test_moments_match_numpy_and_scipy_kurtosis():
    rng = np.random.default_rng(3)
    for name in ("normal", "student_t_1.5", "lognormal", "relu6_half_zeros"):
        x = DISTRIBUTIONS[name](rng, (40, 9, 7, 5)).astype(np.float32)
        result = _stream(x, [1, 13, 13, 30]).result()
        flat = x.astype(np.float64).ravel()
        assert result.mean == pytest.approx(flat.mean(), rel=1e-5, abs=1e-6), name
        assert result.std == pytest.approx(flat.std(), rel=1e-5), name
        assert result.kurtosis == pytest.approx(scipy.stats.kurtosis(flat, fisher=True, bias=True), rel=1e-4), name
        assert (result.min, result.max) == (flat.min(), flat.max())


def test_float64_batches_are_computed_in_float64():
    rng = np.random.default_rng(11)
    x = rng.lognormal(0.0, 1.0, (30, 200))
    result = _stream(x, [10]).result()
    assert result.mean == pytest.approx(x.mean(), rel=1e-12)
    assert result.std == pytest.approx(x.std(), rel=1e-12)
    assert result.kurtosis == pytest.approx(scipy.stats.kurtosis(x.ravel()), rel=1e-10)


def test_update_allocates_no_copy_of_the_batch():
    x = np.random.default_rng(12).normal(size=(32, 32, 32, 64)).astype(np.float32)  # 8 MiB
    acc = ActivationAccumulator(qrange=(-1, 1))
    tracemalloc.start()
    acc.update(x)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < x.nbytes / 4  # chunk-sized scratch only (~1.3 MiB), no float32 or float64 copy


@pytest.mark.parametrize("offset, spread", [(1000.0, 0.01), (0.0, 1.0e9), (0.0, 1e-12)])
def test_moments_survive_large_offsets_and_extreme_scales(offset, spread):
    # |mean| ≫ std cancels raw moments about 0; huge or tiny values overflow or underflow float32 x⁴.
    rng = np.random.default_rng(4)
    x = (offset + spread * rng.standard_t(5, (20, 500))).astype(np.float32)
    result = _stream(x, [7]).result()
    flat = x.astype(np.float64).ravel()
    assert result.std == pytest.approx(flat.std(), rel=1e-5)
    assert result.kurtosis == pytest.approx(scipy.stats.kurtosis(flat), rel=1e-3, abs=1e-3)


@pytest.mark.parametrize("name", sorted(DISTRIBUTIONS))
def test_percentiles_within_one_bucket_of_numpy(name):
    rng = np.random.default_rng(5)
    x = DISTRIBUTIONS[name](rng, (60, 50, 40)).astype(np.float32)
    result = _stream(x, [20, 41]).result()
    for p in PERCENTILES:
        key = f"{p:g}"
        exact = float(np.percentile(x.astype(np.float64), p))
        bound = result.percentile_error_bounds[key]
        assert abs(result.percentiles[key] - exact) <= bound + 1e-9 * abs(exact), (name, key)
        # the bound itself is tight: a bucket is at most 1/64 of its lower edge wide (two buckets when interpolating)
        assert bound <= abs(exact) / 32 + 1e-30, (name, key)


def test_percentiles_of_exact_zeros_are_exact():
    x = np.zeros((10, 100), dtype=np.float32)
    x[:, :5] = 1.0  # 5 % ones
    result = _stream(x, [4]).result()
    assert result.percentiles["1"] == 0.0 and result.percentile_error_bounds["1"] == 0.0
    assert result.percentiles["99"] == 1.0


def test_values_far_below_the_window_collapse_into_its_lowest_bucket_within_bound():
    # 64 buckets per sign span one octave, so values 2^-10 collapse into the bucket under 1.0..2.0
    x = np.concatenate([np.full(500, 2.0**-10), np.linspace(1.0, 1.99, 500)]).astype(np.float32)
    result = _stream(x[:, None], [300], bins=64).result()
    exact = float(np.percentile(x, 1))
    assert abs(result.percentiles["1"] - exact) <= result.percentile_error_bounds["1"]
    assert result.percentiles["99"] == pytest.approx(np.percentile(x, 99), rel=1 / 64)


def test_streamed_and_merged_equal_all_at_once():
    rng = np.random.default_rng(6)
    x = rng.standard_t(3, (30, 6, 6, 8)).astype(np.float32)
    kwargs = {"qrange": (-2.0, 2.0), "bins": 256}
    whole = ActivationAccumulator(**kwargs)
    whole.update(x)
    streamed = _stream(x, [2, 2, 11, 29], **kwargs)  # includes an empty batch
    first, second = _stream(x[:9], [4], **kwargs), _stream(x[9:], [], **kwargs)
    before = (first.result(), second.result())
    merged = first.merge(second)
    assert (first.result(), second.result()) == before
    expected = whole.result()
    for result in (streamed.result(), merged.result(), merged.merge(ActivationAccumulator(**kwargs)).result()):
        # the histogram, extrema and counts are identical; the float sums agree to rounding
        for field in ("percentiles", "percentile_error_bounds", "min", "max", "channel_min", "channel_max",
                      "channel_range_ratio", "clipped_share", "zero_share", "num_values"):
            assert getattr(result, field) == getattr(expected, field), field
        for field in ("mean", "std", "kurtosis"):
            assert getattr(result, field) == pytest.approx(getattr(expected, field), rel=1e-6), field


def test_histogram_merge_equals_one_histogram_of_both():
    rng = np.random.default_rng(7)
    a = rng.normal(0, 1, 5000).astype(np.float32)
    b = rng.normal(0, 1e6, 5000).astype(np.float32)  # pushes the window up: a's small values collapse
    ha, hb, hab = LogHistogram(128), LogHistogram(128), LogHistogram(128)
    ha.add_raw(LogHistogram.raw_counts(a))
    hb.add_raw(LogHistogram.raw_counts(b))
    hab.add_raw(LogHistogram.raw_counts(np.concatenate([a, b])))
    merged = ha.merge(hb)
    assert np.array_equal(merged.counts, hab.counts)
    assert (merged.zeros, merged.top, merged.collapsed) == (hab.zeros, hab.top, hab.collapsed)
    assert merged.collapsed == [True, True]


def test_memory_does_not_grow_with_the_stream():
    rng = np.random.default_rng(8)
    acc = ActivationAccumulator(qrange=(-1, 1))
    acc.update(rng.normal(size=(4, 5, 3)).astype(np.float32))
    footprint, size = _footprint(acc), len(pickle.dumps(acc))
    for i in range(10):
        acc.update((rng.standard_cauchy(size=(40, 5, 3)) * 10**i).astype(np.float32))
    assert _footprint(acc) == footprint
    assert len(pickle.dumps(acc)) <= size + 64  # a few bigger Python ints at most


def test_channel_range_ratio_flags_a_channel_scaled_by_100():
    rng = np.random.default_rng(9)
    x = rng.uniform(-1, 1, (8, 5, 5, 4)).astype(np.float32)
    x[..., 2] *= 100
    ranges = x.max(axis=(0, 1, 2)) - x.min(axis=(0, 1, 2))
    nhwc = _stream(x, [3]).result()
    assert nhwc.channel_range_ratio == pytest.approx(ranges.max() / np.median(ranges), rel=1e-6)
    assert 95 < nhwc.channel_range_ratio < 105
    nchw = _stream(np.moveaxis(x, -1, 1), [5], channel_axis=1).result()  # channels first: same per-channel result
    assert (nchw.channel_min, nchw.channel_max) == (nhwc.channel_min, nhwc.channel_max)


@pytest.mark.parametrize(
    "x, expected",
    [
        (np.arange(12, dtype=np.float32).reshape(3, 4, 1), 1.0),  # one channel
        (np.stack([np.zeros(6), np.zeros(6), np.arange(6.0)], axis=1), math.inf),  # median range 0, widest 5
        (np.ones((4, 3)), 1.0),  # every range 0
    ],
)
def test_channel_range_ratio_edge_cases(x, expected):
    assert _stream(x, []).result().channel_range_ratio == expected


def test_nonfinite_values_are_counted_and_left_out():
    x = np.array([[1.0, np.nan, 3.0], [np.inf, 2.0, -np.inf]], dtype=np.float32)
    result = _stream(x, [1], qrange=(0.0, 2.5)).result()
    assert (result.num_values, result.num_nonfinite) == (6, 3)
    assert (result.min, result.max, result.mean) == (1.0, 3.0, pytest.approx(2.0))
    assert result.clipped_share == pytest.approx(3 / 6)  # 3.0, +inf and -inf lie outside [0, 2.5]
    assert result.channel_min[1] == 2.0 and result.channel_max[0] == 1.0  # NaN dropped; ±inf dropped
    assert math.isnan(ActivationAccumulator().result().mean)


def test_result_round_trips_through_json():
    rng = np.random.default_rng(10)
    result = _stream(rng.normal(size=(5, 3, 2)).astype(np.float32), [2], qrange=(-1, 1)).result()
    assert ActivationStats.from_dict(json.loads(json.dumps(result.to_dict()))) == result


@pytest.mark.parametrize(
    "kwargs",
    [{"qrange": (1.0, -1.0)}, {"qrange": (0, math.inf)}, {"qrange": "wide"}, {"step": 0.0}, {"zero_level": 0.5},
     {"bins": 10}],
)
def test_bad_settings_raise_user_input_error(kwargs):
    with pytest.raises(UserInputError):
        ActivationAccumulator(**kwargs)


def test_bad_batches_raise_data_error():
    acc = ActivationAccumulator()
    with pytest.raises(DataError, match="scalar"):
        acc.update(np.float32(1.0))
    with pytest.raises(DataError, match="channel_axis"):
        ActivationAccumulator(channel_axis=0).update(np.zeros((2, 3)))
    acc.update(np.zeros((2, 3)))
    with pytest.raises(DataError, match="channels"):
        acc.update(np.zeros((2, 4)))
    with pytest.raises(DataError, match="settings"):
        acc.merge(ActivationAccumulator(qrange=(-1, 1)))
