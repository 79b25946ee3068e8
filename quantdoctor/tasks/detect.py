"""Task `detect`: the quantized model's detections matched against the float model's, per sample.

Two layouts of outputs:

- **raw**: one head (A, 4+C) per sample, or transposed (4+C, A) as YOLOv8 exports it; each anchor row holds a box
  (`box_slice`, default channels 0:4, `box_format` default cxcywh) and class scores (`score_slice`, default 4:4+C).
  Decoded here: class = argmax of the scores, score = their max, score ≥ `score_threshold`, class-wise greedy NMS.
- **postprocessed**: the four outputs of TFLite's detection post-process op: boxes (K, 4) [ymin, xmin, ymax, xmax],
  classes (K,), scores (K,), count (); the first `count` rows with score ≥ `score_threshold` are the detections.

The float detections are the reference: a quantized detection is a true positive when it matches one (same class,
IoU ≥ `iou_threshold`, greedy by float score). Labels are not used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from quantdoctor.backends.base import TensorSpec
from quantdoctor.errors import DataError, UserInputError
from quantdoctor.tasks.base import TASKS, Task, TaskOptions, TaskResult
from quantdoctor.tasks.boxes import BOX_FORMATS, Detections, decode_raw, match, to_xyxy
from quantdoctor.tasks.outputs import OutputsAccumulator, check_output_count

COUNTS = ("tp", "float_detections", "quant_detections", "num_samples")
SUMS = ("box_error", "iou", "score_shift")


def postprocess_outputs(outputs: Sequence[TensorSpec]) -> tuple[int, int, int, int] | None:
    """Indices (boxes, classes, scores, count) when the outputs are TFLite's detection post-process, else None.

    Found by shape: boxes (K, 4), count () or (1,), and two (K,); of these two, an output named "*class*" or
    "*score*" says which it is, else the first is the classes (the op's own order).
    """
    if len(outputs) != 4:
        return None
    shapes = [tuple(s.shape) for s in outputs]
    boxes = [i for i, s in enumerate(shapes) if len(s) == 2 and s[1] == 4]
    counts = [i for i, s in enumerate(shapes) if s in ((), (1,))]
    if len(boxes) != 1 or len(counts) != 1:
        return None
    k = shapes[boxes[0]][0]
    rest = [i for i in range(4) if i not in (boxes[0], counts[0]) and shapes[i] == (k,)]
    if len(rest) != 2:
        return None
    names = [outputs[i].name.lower() for i in rest]
    if "score" in names[0] or "class" in names[1]:
        rest.reverse()
    return boxes[0], rest[0], rest[1], counts[0]


def raw_layout(shape: Sequence[int], options: TaskOptions) -> tuple[int, tuple[int, int], tuple[int, int]]:
    """(channel axis, box slice, score slice) of a raw head of per-sample `shape`.

    The channel axis is the one whose size equals the end of `score_slice` when that is given (the last one when
    both do), else the smaller one (anchors outnumber channels: 8400 vs 84).

    Raises:
        UserInputError: the shape is not (A, channels) / (channels, A), the axis is unclear, or a slice does not fit.
    """
    if len(shape) != 2:
        raise UserInputError(f"a raw detection head has shape (anchors, 4+classes) per sample, not {tuple(shape)}; "
                             "pass --class-output with the head's index")
    a, b = (int(d) for d in shape)
    width = options.score_slice[1] if options.score_slice else None
    if width is not None and width in (a, b):
        axis = 1 if b == width else 0
    elif a != b:
        axis = 0 if a < b else 1
    else:
        raise UserInputError(f"cannot tell the anchors from the channels of a ({a}, {b}) head; "
                             "pass --score-slice START:STOP whose STOP is the channel count")
    channels = shape[axis]
    box = options.box_slice or (0, 4)
    score = options.score_slice or (box[1], channels)
    if box[1] - box[0] != 4 or box[0] < 0 or box[1] > channels:
        raise UserInputError(f"--box-slice {box[0]}:{box[1]} must name 4 of the head's {channels} channels")
    if not 0 <= score[0] < score[1] <= channels:
        raise UserInputError(f"--score-slice {score[0]}:{score[1]} must name ≥ 1 of the head's {channels} channels; "
                             "pass --box-slice/--score-slice for this head")
    return axis, box, score


class DetectAccumulator:
    """Streams pooled detection counts and matched-pair sums; keeps only the current worst sample as an example."""

    def __init__(self, outputs: Sequence[TensorSpec], options: TaskOptions,
                 scales: Sequence[float | None] | None = None) -> None:
        self.specs, self.options, self.scales = tuple(outputs), options, scales
        self.box_format = options.box_format or "cxcywh"
        if self.box_format not in BOX_FORMATS:
            raise UserInputError(f"unknown box format {self.box_format!r}; pass --box-format {'|'.join(BOX_FORMATS)}")
        if options.layout not in (None, "raw", "postprocessed"):
            raise UserInputError(f"unknown detection layout {options.layout!r}; pass --layout raw|postprocessed")
        self.post = postprocess_outputs(self.specs) if options.layout != "raw" else None
        roles = ["values"] * len(self.specs)
        groups, axes = {}, {}
        if self.post is not None:
            for i, role in zip(self.post, ("boxes", "classes", "scores", "count")):
                roles[i] = role
        elif options.layout == "postprocessed":
            raise UserInputError("--layout postprocessed needs 4 outputs: boxes (K, 4), classes (K,), scores (K,), "
                                 f"count (); this model has {[tuple(s.shape) for s in self.specs]}")
        else:
            self.head = self._find_head()
            self.axis, self.box_slice, self.score_slice = raw_layout(self.specs[self.head].shape, options)
            roles[self.head] = "boxes + class scores"
            groups[self.head] = _head_groups(self.box_slice, self.score_slice, self.specs[self.head].shape[self.axis])
            axes[self.head] = self.axis
        self.outputs = OutputsAccumulator(self.specs, scales, groups, roles, axes)
        self.counts = dict.fromkeys(COUNTS, 0)
        self.sums = dict.fromkeys(SUMS, 0.0)
        self.example: dict[str, Any] | None = None
        self.example_lost = 0

    def _find_head(self) -> int:
        if self.options.class_output is not None:
            if not 0 <= self.options.class_output < len(self.specs):
                raise UserInputError(f"--class-output {self.options.class_output} does not exist: the model has "
                                     f"{len(self.specs)} outputs")
            return self.options.class_output
        for i, spec in enumerate(self.specs):
            if len(spec.shape) == 2:
                return i
        raise UserInputError(f"task detect needs a raw head (anchors, 4+classes) or the 4 outputs of TFLite's "
                             f"post-process; the outputs are {[tuple(s.shape) for s in self.specs]} per sample")

    def update(self, float_outputs: Sequence[np.ndarray], quant_outputs: Sequence[np.ndarray],
               labels: np.ndarray | None = None) -> None:
        check_output_count(float_outputs, quant_outputs, len(self.specs))
        self.outputs.update(float_outputs, quant_outputs)
        float_dets, quant_dets = self._decode(float_outputs), self._decode(quant_outputs)
        if len(float_dets) != len(quant_dets):
            raise DataError(f"{len(float_dets)} float samples but {len(quant_dets)} quantized; pass the same samples")
        for f, q in zip(float_dets, quant_dets):
            self._add_sample(f, q)

    def _add_sample(self, f: Detections, q: Detections) -> None:
        m = match(f, q, self.options.iou_threshold)
        tp = len(m.float_index)
        c, s = self.counts, self.sums
        lost = len(f) - tp
        if lost > self.example_lost:  # strict: the first of equally bad samples stays
            self.example_lost = lost
            self.example = {"sample": c["num_samples"], "float": f.rows(), "quant": q.rows(), "box_format": "xyxy"}
        c["tp"] += tp
        c["float_detections"] += len(f)
        c["quant_detections"] += len(q)
        c["num_samples"] += 1
        s["box_error"] += float(np.abs(f.boxes[m.float_index] - q.boxes[m.quant_index]).sum())
        s["iou"] += float(m.iou.sum())
        s["score_shift"] += float((q.scores[m.quant_index] - f.scores[m.float_index]).sum())

    def _decode(self, outputs: Sequence[np.ndarray]) -> list[Detections]:
        if self.post is None:
            head = np.asarray(outputs[self.head])
            if self.axis == 0:
                head = np.swapaxes(head, 1, 2)
            o = self.options
            return [decode_raw(rows, self.box_slice, self.score_slice, self.box_format, o.score_threshold)
                    for rows in head]
        boxes, classes, scores, count = (np.asarray(outputs[i]) for i in self.post)
        detections = []
        for n in range(boxes.shape[0]):
            k = min(int(round(float(np.ravel(count[n])[0]))), boxes.shape[1])
            kept = np.flatnonzero(scores[n, :k] >= self.options.score_threshold)
            detections.append(Detections(to_xyxy(boxes[n, kept], "yxyx"),
                                         np.round(classes[n, kept]).astype(np.int64),
                                         scores[n, kept].astype(np.float64)))
        return detections

    def merge(self, other: DetectAccumulator) -> DetectAccumulator:
        merged = DetectAccumulator(self.specs, self.options, self.scales)
        merged.outputs = self.outputs.merge(other.outputs)
        merged.counts = {k: self.counts[k] + other.counts[k] for k in COUNTS}
        merged.sums = {k: self.sums[k] + other.sums[k] for k in SUMS}
        merged.example, merged.example_lost = self.example, self.example_lost
        if other.example_lost > self.example_lost:
            merged.example = {**other.example, "sample": other.example["sample"] + self.counts["num_samples"]}
            merged.example_lost = other.example_lost
        return merged

    def result(self) -> TaskResult:
        """Metrics, pooled over the stream (TP = matched pairs, F / Q = float / quantized detections):
        precision = TP/Q, recall = TP/F (1.0 when the denominator and the other count are both 0, else 0.0 for an
        empty denominator), f1 = 2·TP/(F + Q) (headline; 1.0 when F = Q = 0), box_error = mean |q − f| over the 4
        coordinates of matched boxes (box units), mean_iou and score_shift = mean (q − f) score of matched pairs
        (nan without a pair), and detections per sample of each model."""
        c, s = self.counts, self.sums
        tp, nf, nq, n = c["tp"], c["float_detections"], c["quant_detections"], c["num_samples"]
        metrics = {
            "f1": 2 * tp / (nf + nq) if nf + nq else 1.0,
            "precision": _ratio(tp, nq, nf),
            "recall": _ratio(tp, nf, nq),
            "box_error": s["box_error"] / (4 * tp) if tp else math.nan,
            "mean_iou": s["iou"] / tp if tp else math.nan,
            "score_shift": s["score_shift"] / tp if tp else math.nan,
            "float_detections_per_sample": nf / n if n else math.nan,
            "quant_detections_per_sample": nq / n if n else math.nan,
        }
        details = {"example": self.example} if self.example is not None else {}
        return TaskResult(task="detect", headline="f1", metrics=metrics, outputs=self.outputs.result(),
                          num_samples=n, details=details)


def _ratio(tp: int, denominator: int, other: int) -> float:
    if denominator:
        return tp / denominator
    return 1.0 if other == 0 else 0.0


def _head_groups(box: tuple[int, int], score: tuple[int, int], channels: int) -> list[tuple[int, int, str]]:
    """The head's channels as named groups: the box, the scores, and any channel between or after (objectness)."""
    named = sorted([(*box, f"box [{box[0]}:{box[1]}]"), (*score, f"scores [{score[0]}:{score[1]}]")])
    groups, at = [], 0
    for start, stop, name in named:
        if start > at:
            groups.append((at, start, f"other [{at}:{start}]"))
        groups.append((start, stop, name))
        at = max(at, stop)
    if at < channels:
        groups.append((at, channels, f"other [{at}:{channels}]"))
    return groups


def build(outputs: Sequence[TensorSpec], options: TaskOptions,
          scales: Sequence[float | None] | None = None) -> DetectAccumulator:
    return DetectAccumulator(outputs, options, scales)


TASKS.add("detect", Task(
    name="detect",
    summary="boxes: F1, precision and recall of the quantized detections against the float ones, box error",
    headline="f1",
    budget_metrics=("f1", "recall", "precision"),
    needs_labels=(),
    applies=lambda outputs: postprocess_outputs(outputs) is not None,
    build=build,
))
