"""ErrorAccumulator: streamed and merged results equal the metric functions on all the data at once."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from quantdoctor.errors import DataError
from quantdoctor.stats.accumulators import ErrorAccumulator, TensorError
from quantdoctor.stats.metrics import cosine_similarity, max_abs_error, relative_rmse, rmse, sqnr_db

# Float64 batches are computed in float64; float32 batches element-wise in float32 (sums still in float64), so they
# agree with the float64 metric functions to float32 rounding only.
REL = {np.float64: 1e-9, np.float32: 2e-6}


@pytest.fixture(params=[np.float64, np.float32])
def data(request) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    ref = rng.normal(size=(10, 4, 3)).astype(request.param)
    test = (ref + rng.normal(scale=0.05, size=ref.shape)).astype(request.param)
    return ref, test


def _streamed(ref: np.ndarray, test: np.ndarray, cuts: list[int]) -> ErrorAccumulator:
    acc = ErrorAccumulator()
    for lo, hi in zip([0, *cuts], [*cuts, len(ref)]):
        acc.update(ref[lo:hi], test[lo:hi])
    return acc


def _assert_equals_all_at_once(result: TensorError, ref: np.ndarray, test: np.ndarray) -> None:
    rel = REL[ref.dtype.type]
    r, t = ref.astype(np.float64), test.astype(np.float64)
    assert result.sqnr_db == pytest.approx(sqnr_db(r, t), rel=rel)
    assert result.relative_rmse == pytest.approx(relative_rmse(r, t), rel=rel)
    assert result.rmse == pytest.approx(rmse(r, t), rel=rel)
    assert result.max_abs_error == pytest.approx(max_abs_error(r, t), rel=rel)
    assert result.cosine_mean == pytest.approx(np.mean([cosine_similarity(a, b) for a, b in zip(r, t)]), rel=rel)
    assert result.ref_rms == pytest.approx(np.sqrt(np.mean(r**2)), rel=rel)
    assert result.mean_abs_error == pytest.approx(np.mean(np.abs(r - t)), rel=rel)
    assert result.mean_error == pytest.approx(np.mean(t - r), rel=rel)
    assert result.ref_mean == pytest.approx(np.mean(r), rel=rel)
    assert (result.num_samples, result.num_elements) == (len(r), r.size)


def test_streamed_batches_equal_all_at_once(data):
    ref, test = data
    # includes an empty batch (cut 3 twice)
    _assert_equals_all_at_once(_streamed(ref, test, [3, 3, 8, 9]).result(), ref, test)


def test_merge_of_two_halves_equals_all_at_once_and_leaves_inputs_alone(data):
    ref, test = data
    first, second = _streamed(ref[:4], test[:4], [2]), _streamed(ref[4:], test[4:], [])
    before = (first.result(), second.result())
    merged = first.merge(second)
    _assert_equals_all_at_once(merged.result(), ref, test)
    assert (first.result(), second.result()) == before
    assert merged is not first and merged is not second
    # merging with an empty accumulator changes nothing
    assert merged.merge(ErrorAccumulator()).result() == merged.result()


def test_hand_computed_two_samples():
    acc = ErrorAccumulator()
    acc.update(np.array([[1, 2, 3]]), np.array([[1, 2, 4]]))
    acc.update(np.zeros((1, 3)), np.zeros((1, 3)))
    result = acc.result()
    # pooled: Σr²=14, Σe²=1 over 6 elements
    assert result.sqnr_db == pytest.approx(11.461280, abs=1e-6)
    assert result.rmse == pytest.approx(math.sqrt(1 / 6), rel=1e-12)
    assert result.ref_rms == pytest.approx(math.sqrt(14 / 6), rel=1e-12)
    # per-sample cosines 17/√294 = 0.991460 and 1.0 (both zero), mean 0.995730
    assert result.cosine_mean == pytest.approx(0.995730, abs=1e-6)
    assert result.mean_error == pytest.approx(1 / 6, rel=1e-12)  # test is higher by 1 in one element of six
    assert result.max_abs_error == 1.0


def test_empty_accumulator_gives_nan():
    result = ErrorAccumulator().result()
    assert result.num_samples == 0
    assert all(math.isnan(v) for v in (result.sqnr_db, result.cosine_mean, result.rmse, result.max_abs_error))


def test_nan_in_any_batch_poisons_the_result_whatever_the_order():
    for batches in ([[np.nan, 1.0]], [[1.0, 2.0]]), ([[1.0, 2.0]], [[np.nan, 1.0]]):
        acc = ErrorAccumulator()
        for batch in batches:
            acc.update(np.array(batch), np.ones((1, 2)))
        result = acc.result()
        assert math.isnan(result.sqnr_db) and math.isnan(result.max_abs_error) and math.isnan(result.cosine_mean)


def test_one_dimensional_batch_is_samples_of_scalars():
    acc = ErrorAccumulator()
    acc.update(np.array([3.0, 4.0]), np.array([3.0, 0.0]))
    result = acc.result()
    assert result.num_samples == 2
    assert result.sqnr_db == pytest.approx(10 * math.log10(25 / 16), rel=1e-12)
    assert result.cosine_mean == pytest.approx(0.5)  # 1.0 for (3, 3), 0.0 for (4, 0)


def test_bad_shapes_raise_data_error():
    acc = ErrorAccumulator()
    with pytest.raises(DataError, match=r"\(2, 3\).*\(2, 4\)"):
        acc.update(np.ones((2, 3)), np.ones((2, 4)))
    with pytest.raises(DataError, match="scalar"):
        acc.update(np.float32(1.0), np.float32(1.0))
    assert acc.result().num_samples == 0


def test_result_round_trips_through_json(data):
    result = _streamed(*data, [5]).result()
    assert TensorError.from_dict(json.loads(json.dumps(result.to_dict()))) == result
    with pytest.raises(DataError, match="unknown keys \\['bogus'\\]"):
        TensorError.from_dict({**result.to_dict(), "bogus": 1})
