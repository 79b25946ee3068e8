"""Boxes in numpy: format conversion, IoU, class-wise greedy NMS, and matching two sets of detections.

A set of detections is a `Detections`: boxes (K, 4) as [x1, y1, x2, y2], classes (K,) and scores (K,).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantdoctor.errors import UserInputError

BOX_FORMATS = ("cxcywh", "xyxy", "yxyx")
NMS_IOU = 0.5
MAX_DETECTIONS = 100


@dataclass(frozen=True)
class Detections:
    boxes: np.ndarray  # (K, 4) x1, y1, x2, y2
    classes: np.ndarray  # (K,) int
    scores: np.ndarray  # (K,)

    def __len__(self) -> int:
        return len(self.scores)

    def rows(self) -> list[list[float]]:
        """[[x1, y1, x2, y2, class, score], ...] for a report."""
        return [[*map(float, b), int(c), float(s)] for b, c, s in zip(self.boxes, self.classes, self.scores)]


def to_xyxy(boxes: np.ndarray, box_format: str) -> np.ndarray:
    """Convert (K, 4) boxes from `box_format` to [x1, y1, x2, y2].

    Raises:
        UserInputError: an unknown format.
    """
    b = np.asarray(boxes, dtype=np.float64)
    if box_format == "xyxy":
        return b
    if box_format == "yxyx":
        return b[:, [1, 0, 3, 2]]
    if box_format == "cxcywh":
        half = b[:, 2:4] / 2
        return np.concatenate([b[:, :2] - half, b[:, :2] + half], axis=1)
    raise UserInputError(f"unknown box format {box_format!r}; pass --box-format {'|'.join(BOX_FORMATS)}")


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` (K, 4) with every box of `b` (M, 4), xyxy: |a ∩ b| / |a ∪ b|; 0 for an empty union."""
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=2)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=1)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def nms(dets: Detections, iou: float = NMS_IOU, limit: int = MAX_DETECTIONS) -> Detections:
    """Class-wise greedy non-maximum suppression: by descending score (ties: lower index first), keep a box unless
    it overlaps a kept box of its class with IoU > `iou`; at most `limit` boxes."""
    order = np.argsort(-dets.scores, kind="stable")
    keep: list[int] = []
    suppressed = np.zeros(len(dets), dtype=bool)
    b = dets.boxes
    areas = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        if len(keep) == limit:
            break
        # One row at a time, against the live boxes of the class: a collapsed head can pass thousands of anchors,
        # and a full IoU matrix would not fit.
        rest = np.flatnonzero(~suppressed & (dets.classes == dets.classes[i]))
        w = np.clip(np.minimum(b[i, 2], b[rest, 2]) - np.maximum(b[i, 0], b[rest, 0]), 0, None)
        h = np.clip(np.minimum(b[i, 3], b[rest, 3]) - np.maximum(b[i, 1], b[rest, 1]), 0, None)
        inter = w * h
        union = areas[i] + areas[rest] - inter
        with np.errstate(divide="ignore", invalid="ignore"):
            overlaps = np.where(union > 0, inter / union, 0.0)
        suppressed[rest[overlaps > iou]] = True
    k = np.asarray(keep, dtype=np.int64)
    return Detections(dets.boxes[k], dets.classes[k], dets.scores[k])


def decode_raw(rows: np.ndarray, box_slice: tuple[int, int], score_slice: tuple[int, int], box_format: str,
               threshold: float) -> Detections:
    """Detections of one sample of a raw head (A, channels): class = argmax of the scores, score = their max; keep
    score ≥ threshold; then `nms`."""
    scores = rows[:, score_slice[0]:score_slice[1]]
    classes = np.argmax(scores, axis=1)
    best = scores[np.arange(len(rows)), classes].astype(np.float64)
    kept = best >= threshold
    boxes = to_xyxy(rows[kept, box_slice[0]:box_slice[1]], box_format)
    return nms(Detections(boxes, classes[kept].astype(np.int64), best[kept]))


@dataclass
class Match:
    """The pairs matched between float and quantized detections of one sample."""

    float_index: np.ndarray
    quant_index: np.ndarray
    iou: np.ndarray


def match(float_dets: Detections, quant_dets: Detections, iou_threshold: float) -> Match:
    """Greedy matching: float detections by descending score each take the unmatched quantized detection of the same
    class with the highest IoU, when that IoU ≥ `iou_threshold`."""
    overlaps = iou_matrix(float_dets.boxes, quant_dets.boxes)
    same = float_dets.classes[:, None] == quant_dets.classes[None, :]
    candidates = np.where(same & (overlaps >= iou_threshold), overlaps, -1.0)
    taken = np.zeros(len(quant_dets), dtype=bool)
    fi, qi = [], []
    for i in np.argsort(-float_dets.scores, kind="stable"):
        row = np.where(taken, -1.0, candidates[i])
        if len(row) and row.max() >= 0:
            j = int(np.argmax(row))
            taken[j] = True
            fi.append(int(i))
            qi.append(j)
    f, q = np.asarray(fi, dtype=np.int64), np.asarray(qi, dtype=np.int64)
    return Match(f, q, overlaps[f, q] if len(f) else np.zeros(0))
