"""Grid coverage: hand-computed level counts, TFLite's per-sample parameters, brute-force oracles, streaming, memory."""

from __future__ import annotations

import json
import math
import pickle
import tracemalloc

import numpy as np
import pytest

import quantdoctor.stats.grid as grid
from quantdoctor.errors import DataError, UserInputError
from quantdoctor.stats.grid import (
    GridCoverage,
    GridCoverageAccumulator,
    distinct_levels,
    dynamic_params,
    round_half_away,
)


def _levels_oracle(x: np.ndarray, scale: float, zp: int, qmin: int, qmax: int) -> np.ndarray:
    """Per-sample level sets by np.unique, rounding half away from zero in float64 after a float32 division."""
    y = (x.astype(np.float32) / np.float32(scale)).astype(np.float64)
    q = np.clip(np.sign(y) * np.floor(np.abs(y) + 0.5) + zp, qmin, qmax)  # exact in float64 for float32 inputs
    return q.reshape(len(x), -1)


def _distinct_oracle(x: np.ndarray, *args) -> np.ndarray:
    return np.array([np.unique(row[~np.isnan(row)]).size for row in _levels_oracle(x, *args)])


@pytest.mark.parametrize(
    "sample, scale, zp, qmin, qmax, expected",
    [
        ([0, 0.1, 0.2, 5.0], 0.1, 0, -128, 127, 4),  # levels {0, 1, 2, 50}
        ([0, 0.1, 20.0, 50.0], 0.1, 0, -128, 127, 3),  # 200 and 500 both clip to qmax 127: {0, 1, 127}
        ([-1.0, 0.0, 0.1], 0.1, -128, -128, 127, 2),  # -138 clips to qmin: {-128, -128, -127}
        ([0.125, -0.125, 0.375], 0.25, 0, -128, 127, 3),  # ties 0.5 → 1, -0.5 → -1, 1.5 → 2 (half-even would give 2)
        ([3.0, 3.0, 3.0], 1.0, 0, -128, 127, 1),
        ([np.nan, 0.0, 1.0], 1.0, 0, -128, 127, 2),  # NaN falls on no level
        ([0, 1, 2, 3, 255, 256], 1.0, 0, 0, 255, 5),  # uint8 grid: 256 clips to 255
        ([-40000.0, 0.0, 1.0, 40000.0], 1.0, 0, -32768, 32767, 4),  # int16 grid
    ],
)
def test_distinct_levels_hand_computed(sample, scale, zp, qmin, qmax, expected):
    assert distinct_levels(np.array([sample]), scale, zp, qmin, qmax).tolist() == [expected]


def test_distinct_levels_per_sample_and_empty_samples():
    assert distinct_levels(np.array([[0, 1, 2, 3], [0, 0, 0, 0]]), 1.0).tolist() == [4, 1]
    assert distinct_levels(np.zeros((2, 0)), 1.0).tolist() == [0, 0]


@pytest.mark.parametrize(
    "y, expected",
    [(0.5, 1), (-0.5, -1), (2.5, 3), (-2.5, -3), (0.49999997, 0), (-0.49999997, 0), (1.4, 1), (-1.6, -2), (1e8, 1e8)],
)
def test_round_half_away_from_zero(y, expected):
    assert round_half_away(np.array([y], dtype=np.float32))[0] == expected


@pytest.mark.parametrize(
    "row, symmetric, scale, zero_point",
    [
        ([0.0, 1.0], False, 1 / 255, -128),  # rmin 0: zp = round(-128 - 0) = -128
        ([-1.0, 1.0], False, 2 / 255, -1),  # zp = -128 + 127.5 = -0.5, rounded away from zero
        ([-2.0, -1.0], False, 2 / 255, 127),  # rmax = max(x, 0) = 0: zp = 127 - 0
        ([0.0, 0.0], False, 1.0, 0),  # all zero: TFLite's scale 1, zp 0
        ([-1.0, 0.5], True, 1 / 127, 0),  # symmetric: max|x| / 127
        ([0.0, np.nan, 2.0], False, 2 / 255, -128),  # NaN ignored
    ],
)
def test_dynamic_params_follow_tflite(row, symmetric, scale, zero_point):
    scales, zps = dynamic_params(np.array([row]), symmetric=symmetric)
    assert scales[0] == pytest.approx(scale, rel=1e-6) and zps[0] == zero_point


@pytest.mark.parametrize(
    "sample, symmetric, expected",
    [
        ([0.0, 1.0], False, 2),  # levels -128 and 127
        # One outlier stretches the per-sample scale to 1000/255 = 3.92: values below 1.96 stay on -128, 1.98 and 2.0
        # reach -127, the outlier 127.
        ([*np.linspace(0.0, 2.0, 100), 1000.0], False, 3),
        ([*np.linspace(0.0, 2.0, 100), 2.0], False, 100),  # without it the 100 values take 100 levels
        ([-1.0, 0.0, 0.5, 1.0], True, 4),  # symmetric: -127, 0, 63.5 → 64, 127
        ([0.0, 0.0, 0.0], False, 1),
    ],
)
def test_dynamic_mode_hand_computed(sample, symmetric, expected):
    acc = GridCoverageAccumulator(None, mode="dynamic", symmetric=symmetric)
    acc.update(np.array([sample], dtype=np.float32))
    result = acc.result()
    assert result.levels_histogram[expected] == 1 and result.median_levels == expected


def _c_round(y: float) -> int:
    """std::round: half away from zero (exact for float32 inputs, whose |y| + 0.5 is exact in double)."""
    return int(math.copysign(math.floor(abs(y) + 0.5), y))


def _tflite_row_levels(row: np.ndarray, symmetric: bool) -> set[int]:
    """A literal, element-by-element port of TFLite's (A)SymmetricQuantizeFloats, float32 where the C++ is float."""
    f32 = np.float32
    if symmetric:
        value_range = max(abs(row.min()), abs(row.max()))
        if value_range == 0:
            return {0}
        inverse = f32(127) / f32(value_range)
        return {min(127, max(-127, _c_round(float(f32(v * inverse))))) for v in row}
    rmin, rmax = float(min(f32(0), row.min())), float(max(f32(0), row.max()))
    if rmin == rmax:
        return {0}
    scale = (rmax - rmin) / 255.0
    from_min, from_max = -128 - rmin / scale, 127 - rmax / scale
    zp_double = from_min if 128 + abs(rmin / scale) < 127 + abs(rmax / scale) else from_max
    zp = -128 if zp_double <= -128 else 127 if zp_double >= 127 else _c_round(zp_double)
    inverse = f32(1) / f32(scale)
    return {min(127, max(-128, _c_round(float(f32(f32(zp) + f32(v * inverse)))))) for v in row}


@pytest.mark.parametrize("symmetric", [False, True])
def test_dynamic_mode_matches_a_literal_port_of_the_tflite_kernels(symmetric):
    rng = np.random.default_rng(0)
    rows = [
        rng.normal(0.5, 1.0, 300),
        rng.standard_t(1.5, 300),
        rng.uniform(0.0, 6.0, 300),  # post-ReLU6: rmin = 0
        -rng.exponential(2.0, 300),  # all negative: zp anchored at 127
        np.arange(-8, 9) / 16.0,  # binary fractions: many exact ties after scaling
    ]
    for row in rows:
        row = row.astype(np.float32)
        acc = GridCoverageAccumulator(None, mode="dynamic", symmetric=symmetric)
        acc.update(row[None])
        levels = _tflite_row_levels(row, symmetric)
        result = acc.result()
        assert result.levels_histogram[len(levels)] == 1
        assert result.median_span == (max(levels) - min(levels) + 1) / result.grid_size


def test_dynamic_mode_equals_static_with_each_samples_own_parameters():
    rng = np.random.default_rng(1)
    x = rng.standard_t(2, (12, 300)).astype(np.float32)
    acc = GridCoverageAccumulator(None, mode="dynamic")
    acc.update(x)
    scales, zps = dynamic_params(x)
    expected = [distinct_levels(row[None], float(s), int(z))[0] for row, s, z in zip(x, scales, zps)]
    assert acc.result().median_levels == np.median(expected)


def test_accumulator_statistics_equal_brute_force():
    rng = np.random.default_rng(2)
    # samples of very different spreads: some sit in a few levels, some clip
    x = rng.normal(0.0, 1.0, (40, 4, 4, 8)) * rng.choice([0.01, 0.1, 1.0, 10.0], size=(40, 1, 1, 1))
    x = x.astype(np.float32)
    acc = GridCoverageAccumulator(0.05, zero_point=3)
    acc.update(x)
    result = acc.result()
    levels = _levels_oracle(x, 0.05, 3, -128, 127)
    distinct = np.array([np.unique(row).size for row in levels])
    span = (levels.max(axis=1) - levels.min(axis=1) + 1) / 256
    assert result.num_samples == 40 and result.grid_size == 256
    assert result.median_levels == np.median(distinct)
    assert result.p5_levels == pytest.approx(np.percentile(distinct, 5))
    assert result.mean_levels == pytest.approx(distinct.mean())
    assert result.median_span == pytest.approx(np.median(span))
    assert result.p5_span == pytest.approx(np.percentile(span, 5))
    assert result.few_levels_share == np.mean(distinct <= 16)
    assert result.levels_histogram == tuple(np.bincount(distinct, minlength=257))


def test_many_short_rows_and_rows_longer_than_a_chunk(monkeypatch):
    rng = np.random.default_rng(3)
    short = rng.normal(0, 3, (5000, 3)).astype(np.float32)
    assert np.array_equal(distinct_levels(short, 0.5), _distinct_oracle(short, 0.5, 0, -128, 127))
    monkeypatch.setattr(grid, "_CHUNK", 1000)  # forces several pieces per row and groups of one row
    long = rng.normal(0, 3, (3, 4500)).astype(np.float32)
    assert np.array_equal(distinct_levels(long, 0.01), _distinct_oracle(long, 0.01, 0, -128, 127))
    many = rng.normal(0, 3, (700, 7)).astype(np.float32)
    assert np.array_equal(distinct_levels(many, 0.5), _distinct_oracle(many, 0.5, 0, -128, 127))


@pytest.mark.parametrize("mode, scale", [("static", 0.02), ("dynamic", None)])
def test_streamed_and_merged_equal_all_at_once(mode, scale):
    rng = np.random.default_rng(4)
    x = rng.standard_t(3, (30, 50)).astype(np.float32)
    whole = GridCoverageAccumulator(scale, mode=mode)
    whole.update(x)
    streamed = GridCoverageAccumulator(scale, mode=mode)
    for lo, hi in [(0, 4), (4, 4), (4, 17), (17, 30)]:
        streamed.update(x[lo:hi])
    first, second = GridCoverageAccumulator(scale, mode=mode), GridCoverageAccumulator(scale, mode=mode)
    first.update(x[:11])
    second.update(x[11:])
    before = (first.result(), second.result())
    merged = first.merge(second)
    assert (first.result(), second.result()) == before
    assert streamed.result() == whole.result() == merged.result()


def test_merge_refuses_different_grids():
    with pytest.raises(DataError, match="different grids"):
        GridCoverageAccumulator(0.1).merge(GridCoverageAccumulator(0.2))


def test_memory_does_not_grow_with_the_stream():
    rng = np.random.default_rng(5)
    acc = GridCoverageAccumulator(0.1)
    acc.update(rng.normal(size=(4, 10)))
    shapes = {k: v.shape for k, v in vars(acc).items() if isinstance(v, np.ndarray)}
    size = len(pickle.dumps(acc.levels_histogram)) + len(pickle.dumps(acc.span_histogram))
    for _ in range(10):
        acc.update(rng.normal(size=(40, 10)))
    assert {k: v.shape for k, v in vars(acc).items() if isinstance(v, np.ndarray)} == shapes
    assert len(pickle.dumps(acc.levels_histogram)) + len(pickle.dumps(acc.span_histogram)) == size
    assert acc.result().num_samples == 404


@pytest.mark.parametrize("mode, scale", [("static", 0.02), ("dynamic", None)])
def test_update_allocates_no_copy_of_the_batch(mode, scale):
    x = np.random.default_rng(6).normal(size=(8, 512, 512)).astype(np.float32)  # 8 MiB
    acc = GridCoverageAccumulator(scale, mode=mode)
    tracemalloc.start()
    acc.update(x)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < x.nbytes / 4


def test_empty_stream_and_json_round_trip():
    empty = GridCoverageAccumulator(0.1).result()
    assert empty.num_samples == 0 and np.isnan(empty.median_levels)
    acc = GridCoverageAccumulator(None, mode="dynamic", symmetric=True, few=2)
    acc.update(np.array([[0.0, 1.0], [1.0, 2.0], [-3.0, 3.0]]))
    result = acc.result()
    assert result.grid_size == 255 and result.few_levels_share == 1.0
    assert GridCoverage.from_dict(json.loads(json.dumps(result.to_dict()))) == result


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((None,), {}),  # static needs a scale
        ((0.0,), {}),
        ((0.1,), {"zero_point": 200}),
        ((0.1,), {"qmin": 5, "qmax": 5}),
        ((0.1,), {"qmin": 0, "qmax": 1 << 20}),
        ((0.1,), {"mode": "dynamic"}),  # dynamic computes its own scale
        ((None,), {"mode": "dynamic", "qmin": 0, "qmax": 255}),
        ((0.1,), {"symmetric": True}),
        ((0.1,), {"mode": "hybrid"}),
        ((0.1,), {"few": -1}),
    ],
)
def test_bad_settings_raise_user_input_error(args, kwargs):
    with pytest.raises(UserInputError):
        GridCoverageAccumulator(*args, **kwargs)


def test_scalar_batch_raises_data_error():
    with pytest.raises(DataError, match="scalar"):
        GridCoverageAccumulator(0.1).update(np.float32(1.0))


def test_occupancy_counts_values_per_level_and_keeps_the_first_sample():
    acc = GridCoverageAccumulator(scale=0.1, zero_point=0, qmin=-128, qmax=127)
    acc.update(np.array([[0.0, 0.1, 0.1, 0.2], [0.0, 0.0, 5.0, 5.0]], np.float32))
    acc.update(np.array([[0.3, 0.3, 0.3, 0.3]], np.float32))
    r = acc.result()
    occ = dict((r.qmin + i, c) for i, c in enumerate(r.occupancy) if c)
    assert occ == {0: 3, 1: 2, 2: 1, 3: 4, 50: 2}
    first = dict((r.qmin + i, c) for i, c in enumerate(r.first_sample_occupancy) if c)
    assert first == {0: 1, 1: 2, 2: 1}
    merged = GridCoverageAccumulator(0.1).merge(acc).result()
    assert merged.occupancy == r.occupancy and merged.first_sample_occupancy == r.first_sample_occupancy


def test_a_16_bit_grid_is_binned_over_its_occupied_levels():
    # levels 100..1099 (x / 0.01 for x in 1.00..10.99) in 3 samples of 1000 values; the first has 0 in place of 1.00
    x = np.tile(np.arange(100, 1100, dtype=np.float32) * np.float32(0.01), (3, 1))
    x[0, 0] = 0.0
    acc = GridCoverageAccumulator(0.01, 0, -32768, 32767)
    acc.update(x)
    r = acc.result()
    # occupied levels 0..1099: ⌈1100 / 256⌉ = 5 levels per bin, 220 bins from level 0
    assert r.grid_size == 1 << 16 and r.first_level == 0 and r.bin_width == 5
    assert len(r.occupancy) == len(r.first_sample_occupancy) == 220
    assert r.occupancy[:2] == (1, 0) and r.occupancy[19:21] == (0, 2 + 4 * 3)  # levels 0..4, 5..9, 95..99, 100..104
    assert r.first_sample_occupancy[:2] == (1, 0) and r.first_sample_occupancy[20] == 4
    assert sum(r.occupancy) == 3000 and sum(r.first_sample_occupancy) == 1000
    assert r.bin_centers()[0] == 2.0 and r.bin_centers()[-1] == 1097.0
    # distinct levels: 1000 for each sample, so 1001 bins of width ⌈1001 / 256⌉ = 4 up to the most levels seen
    assert r.levels_bin_width == 4 and len(r.levels_histogram) == 251 and r.levels_histogram[250] == 3
    assert r.median_levels == 1000 and r.first_sample_levels == 1000  # the statistics stay exact
    assert GridCoverage.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_an_8_bit_grid_keeps_every_level():
    acc = GridCoverageAccumulator(0.1)
    acc.update(np.random.default_rng(7).normal(0, 3, (5, 40)).astype(np.float32))
    r = acc.result()
    assert (r.bin_width, r.levels_bin_width, r.first_level) == (1, 1, -128)
    assert len(r.occupancy) == 256 and len(r.levels_histogram) == 257
    assert r.first_sample_levels == sum(1 for c in r.first_sample_occupancy if c)


def test_a_binned_result_does_not_grow_with_the_stream():
    rng = np.random.default_rng(8)
    acc = GridCoverageAccumulator(1e-4, 0, -32768, 32767)
    acc.update(rng.normal(0, 1, (10, 300)).astype(np.float32))
    small = acc.result()
    for _ in range(20):
        acc.update(rng.normal(0, 1, (50, 300)).astype(np.float32))
    big = acc.result()
    assert max(len(big.occupancy), len(big.levels_histogram)) <= grid.MAX_BINS
    assert len(json.dumps(big.to_dict())) < 1.3 * len(json.dumps(small.to_dict()))  # only the counts' digits grow
