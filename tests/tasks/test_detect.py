"""Detection metrics on hand-built heads: raw (both orientations), post-processed, NMS, score collapse, merge."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantdoctor.errors import UserInputError
from quantdoctor.tasks import build_accumulator, resolve_task
from quantdoctor.tasks.base import TaskOptions
from quantdoctor.tasks.boxes import Detections, nms
from quantdoctor.tasks.detect import DetectAccumulator, postprocess_outputs
from tests.tasks.conftest import assert_same_metrics, specs

A = 10  # anchors; more than the 6 channels so the orientation is unambiguous


def _head(rows: list[list[float]]) -> np.ndarray:
    """One sample's raw head (A, 4+2): the given anchors [cx, cy, w, h, s0, s1], then anchors of zero score."""
    head = np.zeros((A, 6))
    head[:len(rows)] = rows
    return head


FLOAT = _head([[10, 10, 4, 4, 0.9, 0.1], [30, 30, 4, 4, 0.2, 0.8], [50, 50, 4, 4, 0.1, 0.1]])
# The quantized model shifts the first box by 1 and loses the second (its score falls under 0.25).
QUANT = _head([[11, 10, 4, 4, 0.85, 0.1], [30, 30, 4, 4, 0.2, 0.2], [50, 50, 4, 4, 0.1, 0.1]])


def _run(float_head: np.ndarray, quant_head: np.ndarray, options: TaskOptions = TaskOptions()):
    acc = DetectAccumulator(specs(float_head.shape[1:]), options)
    acc.update([float_head], [quant_head])
    return acc.result()


def test_raw_head_one_box_kept_shifted_one_lost():
    r = _run(FLOAT[None], QUANT[None])
    # float xyxy (8,8,12,12) vs quantized (9,8,13,12): intersection 3·4 = 12, union 16 + 16 − 12 = 20
    expected = {"f1": 2 / 3, "precision": 1.0, "recall": 0.5, "box_error": (1 + 0 + 1 + 0) / 4, "mean_iou": 0.6,
                "score_shift": 0.85 - 0.9, "float_detections_per_sample": 2.0, "quant_detections_per_sample": 1.0}
    assert r.metrics == pytest.approx(expected)
    assert (r.headline, r.value, r.pair()) == ("f1", pytest.approx(2 / 3), (1.0, pytest.approx(2 / 3)))
    assert r.details["example"] == {"sample": 0, "box_format": "xyxy",
                                    "float": [[8, 8, 12, 12, 0, 0.9], [28, 28, 32, 32, 1, 0.8]],
                                    "quant": [[9, 8, 13, 12, 0, 0.85]]}


def test_transposed_head_gives_the_same_metrics():
    r = _run(FLOAT.T[None], QUANT.T[None])
    assert r.metrics == _run(FLOAT[None], QUANT[None]).metrics
    (out,) = r.outputs
    assert out.role == "boxes + class scores"
    assert [(g.name, g.start, g.stop) for g in out.groups] == [("box [0:4]", 0, 4), ("scores [4:6]", 4, 6)]
    assert out.groups[1].float_min == 0.0 and out.groups[1].float_max == 0.9


def test_head_groups_give_levels_from_the_output_scale():
    acc = build_accumulator(resolve_task("detect", specs((A, 6)), TaskOptions()), specs((A, 6)), TaskOptions(),
                            scales=[0.5])
    acc.update([FLOAT[None]], [QUANT[None]])
    box, scores = acc.result().outputs[0].groups
    assert box.levels == pytest.approx((50 - 0) / 0.5)  # box channels span 0..50
    assert scores.levels == pytest.approx(0.9 / 0.5)  # scores crushed onto ~2 levels


def test_score_collapse_loses_every_detection():
    collapsed = QUANT.copy()
    collapsed[:, 4:] = 0.2  # all scores equal, under the threshold
    r = _run(FLOAT[None], collapsed[None])
    assert (r.metrics["f1"], r.metrics["recall"], r.metrics["precision"]) == (0.0, 0.0, 0.0)
    assert math.isnan(r.metrics["box_error"]) and r.details["example"]["quant"] == []


def test_no_detections_on_either_side_is_perfect():
    empty = np.zeros((1, A, 6))
    r = _run(empty, empty)
    assert (r.metrics["f1"], r.metrics["precision"], r.metrics["recall"]) == (1.0, 1.0, 1.0)
    assert "example" not in r.details


def test_nms_is_class_wise_and_greedy_by_score():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [1, 0, 11, 10], [20, 20, 30, 30]], dtype=float)
    # box 1 overlaps box 0 with IoU 90/110 > 0.5 in the same class: suppressed; box 2 is the same box in class 1
    kept = nms(Detections(boxes, np.array([0, 0, 1, 0]), np.array([0.9, 0.95, 0.6, 0.3])))
    assert kept.scores.tolist() == [0.95, 0.6, 0.3]
    assert kept.classes.tolist() == [0, 1, 0]
    # the same through decoding: two overlapping anchors of one class in the float head give one detection
    head = _head([[10, 10, 4, 4, 0.9, 0.0], [10.5, 10, 4, 4, 0.8, 0.0]])
    assert _run(head[None], head[None]).metrics["float_detections_per_sample"] == 1.0


def test_nms_keeps_at_most_100():
    boxes = np.array([[i * 20, 0, i * 20 + 10, 10] for i in range(150)], dtype=float)
    assert len(nms(Detections(boxes, np.zeros(150, int), np.linspace(1, 0.5, 150)))) == 100


POST = specs((3, 4), (3,), (3,), ())


def _post(boxes, classes, scores, count):
    return [np.asarray([boxes], float), np.asarray([classes], float), np.asarray([scores], float),
            np.asarray([count], float)]


def test_postprocessed_layout():
    f = _post([[0, 0, 10, 10], [20, 20, 40, 40], [5, 5, 6, 6]], [1, 2, 1], [0.9, 0.7, 0.95], 2)
    # yxyx [0,1,10,11] is xyxy (1,0,11,10): IoU 90/110 with the float box; the second changes class
    q = _post([[0, 1, 10, 11], [20, 20, 40, 40], [0, 0, 0, 0]], [1, 3, 0], [0.8, 0.7, 0.0], 2)
    acc = DetectAccumulator(POST, TaskOptions())
    acc.update(f, q)
    r = acc.result()
    assert r.metrics == pytest.approx({
        "f1": 0.5, "precision": 0.5, "recall": 0.5, "box_error": 0.5, "mean_iou": 9 / 11, "score_shift": -0.1,
        "float_detections_per_sample": 2.0, "quant_detections_per_sample": 2.0})
    assert [o.role for o in r.outputs] == ["boxes", "classes", "scores", "count"]
    assert r.details["example"]["float"][1] == [20, 20, 40, 40, 2, 0.7]


def test_postprocessed_outputs_found_by_shape_and_name():
    assert postprocess_outputs(POST) == (0, 1, 2, 3)
    tf2 = specs((10,), (10, 4), (1,), (10,), names=("scores", "boxes", "num", "classes"))
    assert postprocess_outputs(tf2) == (1, 3, 0, 2)
    assert postprocess_outputs(specs((10, 4), (10,), (10,))) is None


def test_streamed_and_merged_equal_all_at_once():
    rng = np.random.default_rng(5)
    n = 12
    f = np.concatenate([rng.uniform(0, 100, (n, 50, 2)), rng.uniform(5, 20, (n, 50, 2)),
                        rng.uniform(0, 0.6, (n, 50, 3))], axis=2)
    q = f + rng.normal(scale=[1, 1, 1, 1, 0.1, 0.1, 0.1], size=f.shape)
    whole = _run(f, q)
    assert whole.metrics["recall"] < 1.0 and whole.metrics["f1"] > 0.3  # a stream that tests something
    parts = []
    for lo, hi in ((0, 5), (5, 6), (6, 12)):
        acc = DetectAccumulator(specs((50, 7)), TaskOptions())
        acc.update([f[lo:hi]], [q[lo:hi]])
        parts.append(acc)
    merged = parts[0].merge(parts[1]).merge(parts[2]).result()
    assert_same_metrics(merged.metrics, whole.metrics)
    assert merged.details == whole.details
    assert merged.outputs[0].sqnr_db == pytest.approx(whole.outputs[0].sqnr_db)


@pytest.mark.parametrize("shape, options, message", [
    ((84, 84), TaskOptions(), "--score-slice"),
    ((8400, 84), TaskOptions(box_slice=(0, 3)), "--box-slice 0:3 must name 4"),
    ((8400, 84), TaskOptions(score_slice=(4, 90)), "--score-slice 4:90"),
    ((8400, 84), TaskOptions(box_format="xywh"), "--box-format"),
    ((8400, 84), TaskOptions(layout="postprocessed"), "needs 4 outputs"),
    ((64, 64, 3), TaskOptions(), "raw head"),
])
def test_heads_that_do_not_fit_say_what_to_pass(shape, options, message):
    with pytest.raises(UserInputError, match=message):
        resolve_task("detect", specs(shape), options)


def test_score_slice_picks_the_orientation_and_skips_objectness():
    # YOLOv5 style: box 0:4, objectness 4, scores 5:7, here transposed (7, A): --score-slice says which axis
    head = np.zeros((A, 7))
    head[0] = [10, 10, 4, 4, 0.99, 0.1, 0.7]
    options = TaskOptions(score_slice=(5, 7))
    acc = DetectAccumulator(specs((7, A)), options)
    acc.update([head.T[None]], [head.T[None]])
    r = acc.result()
    assert acc.axis == 0 and r.metrics["float_detections_per_sample"] == 1.0
    assert r.details == {}  # nothing lost
    assert [g.name for g in r.outputs[0].groups] == ["box [0:4]", "other [4:5]", "scores [5:7]"]
    # a square head is read channels-last once the score slice is given
    assert DetectAccumulator(specs((7, 7)), options).axis == 1
