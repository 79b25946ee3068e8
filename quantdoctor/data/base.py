"""What every data source is: the `Source` protocol, the input-shape type, and the helpers the readers share."""

from __future__ import annotations

from typing import Protocol, Sequence

import numpy as np

from quantdoctor.errors import DataError

# A per-sample input shape as a model reports it; None marks a dimension the model leaves free.
InputShape = tuple[int | None, ...]


class Source(Protocol):
    """Raw samples: `read` returns a float32 batch shaped (len(indices), *input_shape), pixels as stored (0..255)."""

    description: str
    labels: np.ndarray | None  # int64, one per sample; -1 means "this sample has no label"

    def __len__(self) -> int: ...

    def read(self, indices: np.ndarray) -> np.ndarray: ...


def format_shape(shape: Sequence[int | None], batch: bool = False) -> str:
    """`(N, 28, 28, 3)`-style text of a per-sample shape."""
    dims = (["N"] if batch else []) + [str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def as_labels(y: object, count: int, where: str) -> np.ndarray:
    """Integer class labels (int64, -1 = no label) from `y`: one per sample, or one array per sample (a segmenter's
    label masks, (N, H, W)); whether their shape fits the task is checked where the task is known.

    Raises:
        DataError: if `y` is not one whole number per sample.
    """
    labels = np.asarray(y)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim == 0:
        raise DataError(f"{where}: y is a single number; give one integer class index per sample, shape ({count},)")
    if len(labels) != count:
        raise DataError(
            f"{where}: y has {len(labels)} labels but x has {count} samples; give one label per sample (-1 for none)"
        )
    if labels.dtype.kind in "biu":
        return labels.astype(np.int64)
    if labels.dtype.kind != "f":
        raise DataError(f"{where}: y has dtype {labels.dtype}; labels must be integer class indices (-1 for none)")
    whole = np.isfinite(labels) & (labels == np.round(labels))
    if not whole.all():
        first = int(np.flatnonzero(~whole)[0])
        raise DataError(
            f"{where}: label {labels[first]} of sample {first} is not a whole number; "
            "labels must be integer class indices (-1 for none)"
        )
    return labels.astype(np.int64)
