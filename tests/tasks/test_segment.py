"""segment: pixel agreement and mIoU by hand, both layouts, labels, the worst example, merge."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantdoctor.errors import UserInputError
from quantdoctor.tasks.base import TaskOptions
from quantdoctor.tasks.segment import SegmentAccumulator, class_axis
from tests.tasks.conftest import assert_same_metrics, specs


def _scores(mask: list[list[int]], classes: int = 3) -> np.ndarray:
    """(H, W, C) one-hot scores of a mask."""
    return np.eye(classes)[np.asarray(mask)]


FLOAT_MASK = [[0, 1], [1, 2]]
QUANT_MASK = [[0, 1], [2, 2]]


def _run(f: np.ndarray, q: np.ndarray, labels=None, options: TaskOptions = TaskOptions()):
    acc = SegmentAccumulator(specs(f.shape[1:]), options)
    acc.update([f], [q], labels)
    return acc.result()


@pytest.mark.parametrize("channels_first", [False, True])
def test_metrics_by_hand(channels_first):
    f, q = _scores(FLOAT_MASK)[None], _scores(QUANT_MASK)[None]
    if channels_first:
        f, q = f.transpose(0, 3, 1, 2), q.transpose(0, 3, 1, 2)
    r = _run(f, q)
    # IoU class 0: 1/1; class 1: float {(0,1),(1,0)} vs quant {(0,1)} = 1/2; class 2: {(1,1)} vs {(1,0),(1,1)} = 1/2
    assert r.metrics["miou"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert r.metrics["pixel_agreement"] == 0.75
    assert math.isnan(r.metrics["quant_miou_labels"])
    assert r.details["example"] == {"sample": 0, "float_mask": FLOAT_MASK, "quant_mask": QUANT_MASK}
    assert r.outputs[0].role == "mask logits"


def test_labels_ignore_out_of_range_pixels():
    labels = np.array([[[0, 1], [1, 255]]])
    r = _run(_scores(FLOAT_MASK)[None], _scores(QUANT_MASK)[None], labels)
    # valid pixels: labels 0, 1, 1; float 0, 1, 1 (mIoU 1); quantized 0, 1, 2: classes 0: 1, 1: 1/2, 2: 0/1
    assert r.metrics["float_miou_labels"] == 1.0
    assert r.metrics["quant_miou_labels"] == pytest.approx(0.5)
    assert r.pair("miou_labels") == (1.0, pytest.approx(0.5))


def test_example_is_the_worst_sample_strided_to_128():
    rng = np.random.default_rng(4)
    f = rng.normal(size=(3, 300, 300, 2))
    q = f.copy()
    q[1, :100] = -q[1, :100]  # sample 1 flips a third of its pixels, sample 2 a tenth
    q[2, :30] = -q[2, :30]
    r = _run(f, q)
    example = r.details["example"]
    assert example["sample"] == 1
    assert np.array_equal(example["float_mask"], np.argmax(f[1], axis=-1)[::3, ::3])
    assert np.shape(example["quant_mask"]) == (100, 100)
    assert r.metrics["pixel_agreement"] == pytest.approx(1 - (100 + 30) / 900)


@pytest.mark.parametrize("shape, requested, axis", [
    ((64, 64, 21), None, 2), ((21, 64, 64), None, 0), ((120, 160, 5), None, 2), ((5, 120, 160), None, 0),
    ((8, 8, 8), None, 2), ((21, 64, 64), -1, 2),
])
def test_class_axis_rule(shape, requested, axis):
    assert class_axis(shape, requested) == axis


def test_one_class_channel_is_refused():
    with pytest.raises(UserInputError, match="--task regress"):
        SegmentAccumulator(specs((64, 64, 1)), TaskOptions())


def test_merge_equals_all_at_once():
    rng = np.random.default_rng(6)
    f = rng.normal(size=(7, 16, 16, 4))
    q = f + rng.normal(scale=0.4, size=f.shape)
    y = rng.integers(0, 5, size=(7, 16, 16))  # 4 = ignored
    whole = _run(f, q, y)
    a, b = SegmentAccumulator(specs((16, 16, 4)), TaskOptions()), SegmentAccumulator(specs((16, 16, 4)), TaskOptions())
    a.update([f[:3]], [q[:3]], y[:3])
    b.update([f[3:]], [q[3:]], y[3:])
    merged = a.merge(b).result()
    assert_same_metrics(merged.metrics, whole.metrics)
    assert merged.details == whole.details and merged.float_values == whole.float_values
    assert 0 < whole.metrics["miou"] < 1
