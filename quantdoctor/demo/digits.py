"""Scenes of real handwritten digits on a canvas: test material for detectors and segmenters, offline.

The digits are scikit-learn's bundled `load_digits` (1797 real 8x8 digits, 0..16 ink), upscaled x2 (nearest) to 16x16
and pasted at random positions on a black canvas, one to `max_digits` per image, their 16x16 patches never
overlapping and no two digit centres in the same 8x8 cell (a stride-8 detector's grid). Everything follows from the seed.

Ground truth per digit: the tight box of its ink (`[x1, y1, x2, y2]` in pixels, x2/y2 exclusive, so a box covers
`image[y1:y2, x1:x2]`), its class, and a mask: 0 = background, 1 + class on the digit's ink pixels (ink > `INK`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIGIT_SIZE = 16  # 8x8 digits upscaled x2
GRID_STRIDE = 8  # the cell size whose centres must stay distinct
INK = 0.25  # a pixel belongs to a digit's mask (and box) above this intensity
CLASSES = 10
# Digits are split by index (of a fixed permutation) so held-out scenes can use digits no model was trained on.
_TRAIN_DIGITS = 1500
SPLITS = ("all", "train", "test")


@dataclass(frozen=True)
class DigitScenes:
    """Canvases and their ground truth.

    images: (n, size, size, 1) float32 in 0..1. boxes: per image, a list of [x1, y1, x2, y2] (ints, pixels, x2/y2
    exclusive). classes: per image, the digit of each box. masks: (n, size, size) uint8, 0 = background, 1 + digit.
    """

    images: np.ndarray
    boxes: list[list[list[int]]]
    classes: list[list[int]]
    masks: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def flat_boxes(self) -> np.ndarray:
        """All boxes as one (k, 6) int32 array of rows [image index, class, x1, y1, x2, y2] (the form saved in .npz)."""
        rows = [[i, c, *b] for i, (bs, cs) in enumerate(zip(self.boxes, self.classes)) for b, c in zip(bs, cs)]
        return np.asarray(rows, np.int32).reshape(-1, 6)


@functools.lru_cache(maxsize=1)
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """load_digits' images as (1797, 16, 16) float32 in 0..1 and their labels, in a fixed shuffled order."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.kron(d.images / 16.0, np.ones((2, 2))).astype(np.float32)
    order = np.random.default_rng(1234).permutation(len(images))
    return images[order], d.target[order].astype(np.int64)


def digit_canvases(n: int, size: int = 64, max_digits: int = 3, seed: int = 0, split: str = "all") -> DigitScenes:
    """`n` canvases of `size` x `size` with 1..`max_digits` real digits each.

    Args:
        split: which digits to draw from: "train" (the first 1500 of a fixed permutation), "test" (the other 297) or
            "all". Scenes for held-out evaluation should use "test".

    Raises:
        ValueError: a canvas too small for the digits, a non-positive count, or an unknown split.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    if n < 0 or max_digits < 1 or size < DIGIT_SIZE:
        raise ValueError(f"need n >= 0, max_digits >= 1 and size >= {DIGIT_SIZE} (got {n}, {max_digits}, {size})")
    if max_digits * DIGIT_SIZE**2 > size * size // 2:
        raise ValueError(f"{max_digits} digits of {DIGIT_SIZE}x{DIGIT_SIZE} do not fit loosely on a {size}x{size} canvas")
    pool, labels = _digits()
    lo, hi = {"all": (0, len(pool)), "train": (0, _TRAIN_DIGITS), "test": (_TRAIN_DIGITS, len(pool))}[split]
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size, 1), np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    boxes: list[list[list[int]]] = []
    classes: list[list[int]] = []
    for i in range(n):
        image_boxes, image_classes = _place(rng, images[i, ..., 0], masks[i], pool, labels, lo, hi, max_digits)
        boxes.append(image_boxes)
        classes.append(image_classes)
    return DigitScenes(images, boxes, classes, masks)


def _place(rng, image, mask, pool, labels, lo, hi, max_digits) -> tuple[list[list[int]], list[int]]:
    """Paste 1..max_digits digits into `image` and `mask` (in place); return their boxes and classes."""
    size = image.shape[0]
    count = int(rng.integers(1, max_digits + 1))
    corners: list[tuple[int, int]] = []
    cells: set[tuple[int, int]] = set()
    boxes, classes = [], []
    while len(boxes) < count:
        # Rejection sampling always ends: the digits fill at most half the canvas (checked by the caller).
        x, y = (int(v) for v in rng.integers(0, size - DIGIT_SIZE + 1, 2))
        if any(abs(x - cx) < DIGIT_SIZE and abs(y - cy) < DIGIT_SIZE for cx, cy in corners):
            continue
        k = int(rng.integers(lo, hi))
        ink = pool[k] > INK
        rows, cols = np.nonzero(ink)
        box = [x + int(cols.min()), y + int(rows.min()), x + int(cols.max()) + 1, y + int(rows.max()) + 1]
        cell = (int((box[0] + box[2]) / 2) // GRID_STRIDE, int((box[1] + box[3]) / 2) // GRID_STRIDE)
        if cell in cells:
            continue
        corners.append((x, y))
        cells.add(cell)
        image[y : y + DIGIT_SIZE, x : x + DIGIT_SIZE] = pool[k]
        mask[y : y + DIGIT_SIZE, x : x + DIGIT_SIZE][ink] = 1 + labels[k]
        boxes.append(box)
        classes.append(int(labels[k]))
    return boxes, classes


def save_npz(path: str | Path, scenes: DigitScenes) -> Path:
    """Write scenes as an .npz: `x` (images), `masks`, and `boxes` as (k, 6) int32 rows [image, class, x1, y1, x2, y2]."""
    path = Path(path)
    np.savez_compressed(path, x=scenes.images, masks=scenes.masks, boxes=scenes.flat_boxes())
    return path


def load_npz(path: str | Path) -> DigitScenes:
    """Read scenes written by `save_npz`."""
    with np.load(path) as data:
        images, masks, rows = data["x"], data["masks"], data["boxes"]
    boxes: list[list[list[int]]] = [[] for _ in range(len(images))]
    classes: list[list[int]] = [[] for _ in range(len(images))]
    for i, c, *box in rows.tolist():
        boxes[i].append(box)
        classes[i].append(c)
    return DigitScenes(images, boxes, classes, masks)
