"""Per-channel error sums, group SQNR and channel groups, against numpy on all the data at once."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from quantdoctor.errors import DataError
from quantdoctor.stats.channels import ChannelError, ChannelErrorAccumulator, group_channels, group_sqnr
from quantdoctor.stats.metrics import sqnr_db


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    ref = rng.normal(size=(12, 5, 6))
    return ref, ref + rng.normal(scale=0.1, size=ref.shape)


def _streamed(ref: np.ndarray, test: np.ndarray, cuts: list[int]) -> ChannelErrorAccumulator:
    acc = ChannelErrorAccumulator()
    for lo, hi in zip([0, *cuts], [*cuts, len(ref)]):
        acc.update(ref[lo:hi], test[lo:hi])
    return acc


def test_sums_equal_numpy_on_all_the_data(data):
    ref, test = data
    r = _streamed(ref, test, [4, 4, 9]).result()
    flat_r, flat_e = ref.reshape(-1, 6), (test - ref).reshape(-1, 6)
    assert r.count == 60 and r.num_channels == 6
    np.testing.assert_allclose(r.sum_ref_sq, (flat_r**2).sum(0))
    np.testing.assert_allclose(r.sum_err_sq, (flat_e**2).sum(0))
    np.testing.assert_allclose(r.max_abs_error, np.abs(flat_e).max(0))
    np.testing.assert_array_equal(r.min, flat_r.min(0))
    np.testing.assert_array_equal(r.max, flat_r.max(0))
    assert group_sqnr(r, 1, 4) == pytest.approx(sqnr_db(ref[..., 1:4], test[..., 1:4]), rel=1e-12)


def test_merge_equals_streamed_and_leaves_inputs_alone(data):
    ref, test = data
    a, b = _streamed(ref[:5], test[:5], [2]), _streamed(ref[5:], test[5:], [])
    before = (a.result(), b.result())
    merged, whole = a.merge(b).result().to_dict(), _streamed(ref, test, []).result().to_dict()
    assert merged.keys() == whole.keys()
    for key in merged:  # sums in another order: equal to rounding
        np.testing.assert_allclose(merged[key], whole[key], rtol=1e-12)
    assert (a.result(), b.result()) == before
    assert ChannelErrorAccumulator().merge(a).result() == a.result()


def test_group_sqnr_by_hand():
    acc = ChannelErrorAccumulator()
    # channel 0: ref 3, 4 (Σ=25), err 1, 0 (Σ=1); channel 1: ref 1, 1, err 0
    acc.update(np.array([[3.0, 1.0], [4.0, 1.0]]), np.array([[4.0, 1.0], [4.0, 1.0]]))
    r = acc.result()
    assert group_sqnr(r, 0, 1) == pytest.approx(10 * math.log10(25.0))
    assert group_sqnr(r, 0, 2) == pytest.approx(10 * math.log10(27.0))
    assert group_sqnr(r, 1, 2) == math.inf
    assert math.isnan(group_sqnr(r, 1, 1))
    assert math.isnan(group_sqnr(ChannelErrorAccumulator(2).result(), 0, 2))


def test_round_trips_through_json(data):
    r = _streamed(*data, []).result()
    assert ChannelError.from_dict(json.loads(json.dumps(r.to_dict()))) == r


def test_refuses_mismatched_batches():
    acc = ChannelErrorAccumulator()
    with pytest.raises(DataError, match="pass matching"):
        acc.update(np.zeros((2, 3)), np.zeros((2, 4)))
    acc.update(np.zeros((2, 3)), np.zeros((2, 3)))
    with pytest.raises(DataError, match="4 channels but earlier batches had 3"):
        acc.update(np.zeros((2, 4)), np.zeros((2, 4)))
    with pytest.raises(DataError, match="no channel axis"):
        acc.update(np.zeros(3), np.zeros(3))


def test_groups_found_on_a_box_plus_scores_head():
    rng = np.random.default_rng(0)
    head = np.concatenate([rng.uniform(-300, 300, size=(64, 4)), rng.uniform(0, 1, size=(64, 10))], axis=1)
    acc = ChannelErrorAccumulator()
    acc.update(head[:, None, :], head[:, None, :])
    r = acc.result()
    assert group_channels(r.min, r.max) == [(0, 4), (4, 14)]


@pytest.mark.parametrize("ranges, expected", [
    ([1.0, 2.0, 1.5, 3.0], [(0, 4)]),  # homogeneous: within 8x of the median
    ([1.0, 7.9, 1.0], [(0, 3)]),  # 7.9 < 8
    ([1.0, 8.0, 8.0], [(0, 1), (1, 3)]),  # exactly the ratio starts a group
    ([100.0, 100.0, 1.0, 1.0, 100.0], [(0, 2), (2, 4), (4, 5)]),
    ([0.0, 0.0, 5.0, 5.0, 0.0, 0.1], [(0, 5), (5, 6)]),  # constants join the group they sit in (first one at start)
    ([1.0, 1.0, 1.0, 9.0, 9.0, 9.0, 9.0], [(0, 3), (3, 7)]),
    ([0.0, 0.0], [(0, 2)]),
    ([], []),
])
def test_group_rule(ranges, expected):
    hi = np.asarray(ranges, dtype=np.float64)
    assert group_channels(-hi / 2, hi / 2) == expected
    assert group_channels(np.zeros(len(hi)), hi, ratio=8.0) == expected


def test_chunked_batches_equal_one_chunk(monkeypatch, data):
    ref, test = data
    whole = _streamed(ref, test, []).result()
    monkeypatch.setattr("quantdoctor.stats.channels.CHUNK_ELEMENTS", 7)  # 1 row of 6 channels a chunk
    chunked = _streamed(ref, test, []).result()
    assert chunked.count == whole.count
    np.testing.assert_allclose(chunked.sum_err_sq, whole.sum_err_sq, rtol=1e-12)
    assert chunked.max == whole.max and chunked.max_abs_error == whole.max_abs_error
