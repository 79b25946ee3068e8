"""The data a model runs on: a raw source plus a preprocess preset, streamed batch by batch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from quantdoctor.data.preprocess import PRESETS
from quantdoctor.data.sources import ImageFilesSource, InputShape, Source, open_source
from quantdoctor.errors import DataError, UserInputError


class Dataset:
    """Samples read from a `Source`, preprocessed per batch, optionally restricted to a subset of its samples."""

    def __init__(
        self,
        source: Source,
        input_shape: InputShape,
        preprocess: str = "none",
        *,
        indices: np.ndarray | None = None,
        channels_first: bool = False,
    ) -> None:
        """Wrap `source` for a model with per-sample `input_shape`.

        Args:
            source: the raw samples.
            input_shape: the model's per-sample input shape.
            preprocess: name of a preset in `PRESETS`.
            indices: the source samples this dataset covers (all if None).
            channels_first: the model takes (C, H, W) samples (ONNX/PyTorch convention) while the source holds
                (H, W, C) images: the preset runs on (H, W, C), then each batch is transposed.

        Raises:
            UnknownNameError: an unknown preset.
            DataError: a preset that cannot apply to this input shape (e.g. an RGB-only preset on a 1-channel model).
        """
        self.source = source
        self.input_shape = tuple(input_shape)
        self.preprocess = preprocess
        self._preset = PRESETS.get(preprocess)
        self._index = np.arange(len(source), dtype=np.int64) if indices is None else np.asarray(indices, np.int64)
        self.channels_first = channels_first
        read_shape = (*self.input_shape[1:], self.input_shape[0]) if channels_first else self.input_shape
        # A one-sample dry run so a preset that cannot apply fails now, not in the middle of a long pass.
        self._preset(np.zeros((1, *(d or 1 for d in read_shape)), dtype=np.float32))

    @classmethod
    def from_images(
        cls,
        paths: Sequence[str | Path],
        labels: Sequence[int] | np.ndarray | None,
        input_shape: InputShape,
        preprocess: str = "none",
        resize: str = "crop",
        description: str | None = None,
    ) -> Dataset:
        """A dataset over an explicit list of image files (label -1 = no label; `labels=None` = none at all)."""
        source = ImageFilesSource(paths, labels, input_shape, resize=resize, description=description)
        return cls(source, input_shape, preprocess)

    def channels_first_view(self) -> Dataset:
        """The same samples as (C, H, W) for a channels-first model (this dataset holds (H, W, C) images)."""
        h, w, c = self.input_shape
        return Dataset(self.source, (c, h, w), self.preprocess, indices=self._index, channels_first=True)

    def __len__(self) -> int:
        return len(self._index)

    @property
    def labels(self) -> np.ndarray | None:
        """int64 label per sample (-1 = no label), or None when the data has no labels."""
        labels = self.source.labels
        return None if labels is None else labels[self._index]

    @property
    def source_indices(self) -> np.ndarray:
        """Position of each sample in the user's file or folder (what error messages and reports quote)."""
        return self._index.copy()

    @property
    def description(self) -> str:
        if len(self._index) == len(self.source):
            return self.source.description
        return f"{self.source.description}, {len(self._index)} of {len(self.source)} samples"

    def subset(self, indices: np.ndarray | Sequence[int]) -> Dataset:
        """The samples at `indices` (positions in this dataset) as a new dataset over the same source."""
        return Dataset(self.source, self.input_shape, self.preprocess, indices=self._index[self._positions(indices)],
                       channels_first=self.channels_first)

    def batches(
        self, batch_size: int, indices: np.ndarray | None = None
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield `(x, sample_indices)`: preprocessed float32 batches of at most `batch_size` samples, in order.

        Args:
            batch_size: samples per batch (the last batch may be smaller).
            indices: which samples (positions in this dataset) to read, in this order; all if None.

        Raises:
            UserInputError: a batch size below 1.
            DataError: a sample that is NaN or Inf after preprocessing (the message names it in the user's file).
        """
        if batch_size < 1:
            raise UserInputError(f"batch size must be at least 1, got {batch_size}; pick a positive --batch-size")
        order = np.arange(len(self), dtype=np.int64) if indices is None else self._positions(indices)
        for start in range(0, len(order), batch_size):
            positions = order[start : start + batch_size]
            x = np.asarray(self._preset(self.source.read(self._index[positions])), dtype=np.float32)
            if self.channels_first:
                x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
            self._check_finite(x, positions)
            yield x, positions

    def check_labels(self, num_classes: int) -> None:
        """Check every label is -1 (no label) or a class index the model can output.

        Raises:
            DataError: naming the first offending label, its sample and the model's class count.
        """
        check_class_labels(self.labels, self._index, num_classes)

    def _positions(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        positions = np.asarray(indices, dtype=np.int64).reshape(-1)
        if positions.size and (positions.min() < 0 or positions.max() >= len(self)):
            raise IndexError(f"sample indices must lie in 0..{len(self) - 1}, got {positions.min()}..{positions.max()}")
        return positions

    def _check_finite(self, x: np.ndarray, positions: np.ndarray) -> None:
        finite = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if not finite.all():
            sample = int(self._index[positions[int(np.flatnonzero(~finite)[0])]])
            raise DataError(
                f"data sample {sample} contains NaN or Inf; clean the data or pick another --preprocess"
            )


def check_class_labels(labels: np.ndarray | None, source_indices: np.ndarray, num_classes: int) -> None:
    """Every label is -1 (no label) or a class index below `num_classes`; `source_indices` name the samples in the
    user's file.

    Raises:
        DataError: label masks, or the first label out of range (with its sample and the model's class count).
    """
    if labels is None:
        return
    if labels.ndim != 1:
        raise DataError(
            f"y has shape {tuple(labels.shape)}; give one integer class index per sample, shape ({len(labels)},) "
            "(label masks of shape (N, H, W) are for --task segment)"
        )
    bad = np.flatnonzero((labels < -1) | (labels >= num_classes))
    if bad.size:
        first = int(bad[0])
        raise DataError(
            f"label {int(labels[first])} of data sample {int(source_indices[first])} is outside the model's "
            f"{num_classes} classes (0..{num_classes - 1}); labels must be class indices, or -1 for no label "
            f"({bad.size} labels are out of range)"
        )


def load_dataset(
    path: str | Path, input_shape: InputShape, *, preprocess: str = "none", resize: str = "crop"
) -> Dataset:
    """The dataset behind a `--data`/`--calib` path (.npz with x and y, .npy, or an image folder).

    Args:
        path: the file or folder; never modified.
        input_shape: the model's per-sample input shape, e.g. (224, 224, 3); for a model with several inputs an
            `InputSpecs` (see `data/multi.py`: an .npz with one array per input, read as a `MultiDataset`).
        preprocess: name of a preset in `PRESETS`.
        resize: how image files are fitted to the model size: "crop" (ImageNet-style) or "stretch".

    Raises:
        DataError: the data is missing, unreadable or does not fit the model.
        UnknownNameError: an unknown preset or resize mode.
    """
    PRESETS.get(preprocess)  # fail on a typo before scanning a large folder
    from quantdoctor.data.multi import InputSpecs, load_multi_dataset

    if isinstance(input_shape, InputSpecs):  # a model with several inputs
        return load_multi_dataset(path, input_shape, preprocess=preprocess)
    shape = tuple(input_shape)
    if Path(path).is_dir() and _channels_first(shape):  # images are (H, W, C); an ONNX/PyTorch model takes (C, H, W)
        hwc = (*shape[1:], shape[0])
        return Dataset(open_source(path, hwc, resize), hwc, preprocess).channels_first_view()
    return Dataset(open_source(path, input_shape, resize), input_shape, preprocess)


def _channels_first(shape: tuple) -> bool:
    """(C, H, W) with 1 or 3 channels first and a larger spatial size (so not an (H, W, C) image of 1 or 3 pixels)."""
    return len(shape) == 3 and shape[0] in (1, 3) and shape[2] not in (1, 3)


def split_calibration(n: int, calib_count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split sample positions 0..n-1 into disjoint sorted (calib_indices, eval_indices) by a seeded permutation.

    `calib_count` is clipped to n - 1 so at least one sample is left to evaluate on.

    Raises:
        UserInputError: a negative `calib_count`.
    """
    if n < 1:
        raise ValueError(f"cannot split {n} samples")
    if calib_count < 0:
        raise UserInputError(f"calibration sample count must be at least 0, got {calib_count}")
    count = min(calib_count, n - 1)
    order = np.random.default_rng(seed).permutation(n)
    return np.sort(order[:count]).astype(np.int64), np.sort(order[count:]).astype(np.int64)


@dataclass(frozen=True)
class DataSplit:
    """Which samples calibrated the quantized model, for the report.

    Attributes:
        calib_source: where calibration samples came from, e.g. "--calib calib.npz" or "--data (random 100)".
        calib_indices: positions in --data used for calibration, or None when a separate --calib set was used.
        eval_count: how many samples the comparison ran on.
    """

    calib_source: str
    calib_indices: tuple[int, ...] | None
    eval_count: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "calib_source": self.calib_source,
            "calib_indices": None if self.calib_indices is None else list(self.calib_indices),
            "eval_count": self.eval_count,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DataSplit:
        indices = data["calib_indices"]
        return cls(
            calib_source=str(data["calib_source"]),
            calib_indices=None if indices is None else tuple(int(i) for i in indices),
            eval_count=int(data["eval_count"]),
        )
