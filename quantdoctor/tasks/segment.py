"""Task `segment`: per-pixel class agreement and mean IoU of the quantized masks against the float masks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from quantdoctor.backends.base import TensorSpec
from quantdoctor.errors import DataError, UserInputError
from quantdoctor.tasks.base import TASKS, Task, TaskOptions, TaskResult
from quantdoctor.tasks.outputs import OutputsAccumulator, check_output_count

EXAMPLE_SIDE = 128  # the example masks are strided down to at most this many rows and columns


def class_axis(shape: Sequence[int], requested: int | None = None) -> int:
    """The per-sample axis of a (H, W, C) or (C, H, W) score map that holds the classes.

    Rule: `requested` when given; else the axis whose size differs from the two others when two are equal (a square
    map); else the smallest axis (the spatial axes are the two largest); the last axis (NHWC) when all three are equal.

    Raises:
        UserInputError: `requested` is not an axis of a rank-3 shape.
    """
    if requested is not None:
        if not -3 <= requested < 3:
            raise UserInputError(f"--class-axis {requested} is not an axis of a (H, W, C) or (C, H, W) output; "
                                 "pass 0, 2 or -1")
        return requested % 3
    dims = [int(d) if d is not None else -1 for d in shape]
    if dims[0] == dims[1] == dims[2]:
        return 2
    for axis in range(3):
        others = [dims[a] for a in range(3) if a != axis]
        if others[0] == others[1]:
            return axis
    return int(np.argmin(dims))


def find_mask_output(outputs: Sequence[TensorSpec], options: TaskOptions) -> int:
    """`options.class_output`, else the first rank-3 output.

    Raises:
        UserInputError: that output is not rank 3, or no output is.
    """
    if options.class_output is not None:
        i = options.class_output
        if not 0 <= i < len(outputs) or len(outputs[i].shape) != 3:
            raise UserInputError(f"--class-output {i} is not a (H, W, C) or (C, H, W) output of this model; pass "
                                 "the index of the per-pixel class scores")
        return i
    for i, spec in enumerate(outputs):
        if len(spec.shape) == 3:
            return i
    shapes = ", ".join(str(tuple(s.shape)) for s in outputs)
    raise UserInputError(f"task segment needs per-pixel class scores (H, W, C) or (C, H, W), but the outputs are "
                         f"{shapes} per sample; pass --task classify|detect|regress")


class IoUCounts:
    """Pooled per-class intersection and union counts of two label maps, O(classes) memory."""

    def __init__(self, num_classes: int) -> None:
        self.intersection = np.zeros(num_classes, dtype=np.int64)
        self.union = np.zeros(num_classes, dtype=np.int64)

    def update(self, a: np.ndarray, b: np.ndarray) -> None:
        """Fold in two flat arrays of class indices in 0..num_classes − 1."""
        c = len(self.union)
        inter = np.bincount(a[a == b], minlength=c)
        self.intersection += inter
        self.union += np.bincount(a, minlength=c) + np.bincount(b, minlength=c) - inter

    def merge(self, other: IoUCounts) -> IoUCounts:
        merged = IoUCounts(len(self.union))
        merged.intersection = self.intersection + other.intersection
        merged.union = self.union + other.union
        return merged

    def miou(self) -> float:
        """mean_c |A=c ∧ B=c| / |A=c ∨ B=c| over the classes present in either map (union > 0); nan when none."""
        present = self.union > 0
        return float(np.mean(self.intersection[present] / self.union[present])) if present.any() else math.nan


class SegmentAccumulator:
    """Streams pixel agreement, mIoU of quantized vs float masks and, with labels, of both against the labels."""

    def __init__(self, outputs: Sequence[TensorSpec], options: TaskOptions,
                 scales: Sequence[float | None] | None = None) -> None:
        self.specs, self.options, self.scales = tuple(outputs), options, scales
        self.index = find_mask_output(self.specs, options)
        shape = self.specs[self.index].shape
        self.axis = class_axis(shape, options.class_axis)
        self.num_classes = int(shape[self.axis])
        if self.num_classes < 2:
            raise UserInputError(f"output {self.index} has {self.num_classes} class channel(s) on axis {self.axis}; "
                                 "segment needs ≥ 2 classes (pass --class-axis, or --task regress for one mask)")
        roles = ["mask logits" if i == self.index else "values" for i in range(len(self.specs))]
        self.outputs = OutputsAccumulator(self.specs, scales, roles=roles, channel_axes={self.index: self.axis})
        self.masks = IoUCounts(self.num_classes)
        self.float_labels = IoUCounts(self.num_classes)
        self.quant_labels = IoUCounts(self.num_classes)
        self.num_samples = self.num_pixels = self.agree = self.num_labelled = 0
        self.example: dict[str, Any] | None = None
        self.example_agreement = math.inf

    def update(self, float_outputs: Sequence[np.ndarray], quant_outputs: Sequence[np.ndarray],
               labels: np.ndarray | None = None) -> None:
        """Fold in a batch; `labels` (N, H, W) class indices, where values outside 0..C−1 (255, −1) are ignored."""
        check_output_count(float_outputs, quant_outputs, len(self.specs))
        self.outputs.update(float_outputs, quant_outputs)
        f = np.argmax(np.asarray(float_outputs[self.index]), axis=self.axis + 1)
        q = np.argmax(np.asarray(quant_outputs[self.index]), axis=self.axis + 1)
        n = f.shape[0]
        if n == 0:
            return
        same = f == q
        per_sample = same.reshape(n, -1).mean(axis=1)
        self.masks.update(f.ravel(), q.ravel())
        if labels is not None:
            self._update_labels(np.asarray(labels), f, q)
        worst = int(np.argmin(per_sample))
        if per_sample[worst] < self.example_agreement:  # strict: the first of equally bad samples stays
            self.example_agreement = float(per_sample[worst])
            self.example = {"sample": self.num_samples + worst, "float_mask": _strided(f[worst]),
                            "quant_mask": _strided(q[worst])}
        self.num_samples += n
        self.num_pixels += same.size
        self.agree += int(same.sum())

    def _update_labels(self, labels: np.ndarray, f: np.ndarray, q: np.ndarray) -> None:
        if labels.shape != f.shape:
            raise DataError(f"labels have shape {labels.shape}, expected {f.shape}: one class index per pixel")
        if not np.issubdtype(labels.dtype, np.number):
            raise DataError(f"labels must be class indices, got dtype {labels.dtype}")
        valid = (labels >= 0) & (labels < self.num_classes)
        y = labels[valid].astype(np.int64)
        self.float_labels.update(f[valid], y)
        self.quant_labels.update(q[valid], y)
        self.num_labelled += int(valid.sum())

    def merge(self, other: SegmentAccumulator) -> SegmentAccumulator:
        merged = SegmentAccumulator(self.specs, self.options, self.scales)
        merged.outputs = self.outputs.merge(other.outputs)
        merged.masks = self.masks.merge(other.masks)
        merged.float_labels = self.float_labels.merge(other.float_labels)
        merged.quant_labels = self.quant_labels.merge(other.quant_labels)
        for name in ("num_samples", "num_pixels", "agree", "num_labelled"):
            setattr(merged, name, getattr(self, name) + getattr(other, name))
        merged.example, merged.example_agreement = self.example, self.example_agreement
        if other.example is not None and other.example_agreement < self.example_agreement:
            merged.example = {**other.example, "sample": other.example["sample"] + self.num_samples}
            merged.example_agreement = other.example_agreement
        return merged

    def result(self) -> TaskResult:
        """Metrics: `pixel_agreement` = share of pixels whose argmax class is the same; `miou` (headline) = the
        mean IoU of quantized vs float masks (`IoUCounts.miou`); with labels, `float_miou_labels` /
        `quant_miou_labels` and `miou_labels` (the quantized value; its float value is in `float_values`)."""
        labelled = self.num_labelled > 0
        float_miou = self.float_labels.miou() if labelled else math.nan
        quant_miou = self.quant_labels.miou() if labelled else math.nan
        metrics = {
            "miou": self.masks.miou(),
            "pixel_agreement": self.agree / self.num_pixels if self.num_pixels else math.nan,
            "float_miou_labels": float_miou,
            "quant_miou_labels": quant_miou,
            "miou_labels": quant_miou,
        }
        details = {"example": self.example} if self.example is not None else {}
        return TaskResult(task="segment", headline="miou", metrics=metrics, outputs=self.outputs.result(),
                          num_samples=self.num_samples, float_values={"miou_labels": float_miou}, details=details)


def _strided(mask: np.ndarray) -> list[list[int]]:
    """The mask with every k-th row and column kept, k the smallest step giving ≤ EXAMPLE_SIDE of each."""
    rows, cols = (max(1, math.ceil(d / EXAMPLE_SIDE)) for d in mask.shape)
    return mask[::rows, ::cols].tolist()


def build(outputs: Sequence[TensorSpec], options: TaskOptions,
          scales: Sequence[float | None] | None = None) -> SegmentAccumulator:
    return SegmentAccumulator(outputs, options, scales)


TASKS.add("segment", Task(
    name="segment",
    summary="per-pixel class scores: mean IoU and pixel agreement of the quantized masks with the float masks",
    headline="miou",
    budget_metrics=("miou", "pixel_agreement", "miou_labels"),
    needs_labels=("miou_labels",),
    applies=lambda outputs: any(len(s.shape) == 3 for s in outputs),
    build=build,
))
