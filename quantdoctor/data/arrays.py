"""Array files as sources: .npz (arrays `x` and optional `y`, loaded whole) and .npy (x only, memory-mapped, only the
requested rows copied out), checked by their first bytes before NumPy reads them."""

from __future__ import annotations

import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

from quantdoctor.data.base import InputShape, as_labels, format_shape
from quantdoctor.errors import DataError

ARRAY_EXTENSIONS = (".npz", ".npy")


def _fits(shape: Sequence[int], expected: InputShape) -> bool:
    return len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected))


def plan_array_fit(
    per_sample: tuple[int, ...], input_shape: InputShape, name: str
) -> tuple[bool, tuple[int, int] | None]:
    """How to turn samples of shape `per_sample` into `input_shape`: (add a channel axis?, resize to (H, W) or None).

    (H, W) grey images gain a channel axis when the model wants 1 channel; images whose channels match but whose
    height and width differ are resized (see `resize_array`).

    Raises:
        DataError: if the samples cannot be made to fit.
    """
    add_channel = False
    shape = per_sample
    image_model = len(input_shape) == 3
    if image_model and len(shape) == 2 and input_shape[2] == 1:
        add_channel, shape = True, (*shape, 1)
    if _fits(shape, input_shape):
        return add_channel, None
    h, w = input_shape[:2] if image_model else (None, None)
    if image_model and len(shape) == 3 and _fits(shape[2:], input_shape[2:]) and h is not None and w is not None:
        return add_channel, (h, w)
    raise DataError(
        f"{name} has shape {format_shape(per_sample, batch=True)} per sample but the model expects "
        f"{format_shape(input_shape)}; save it as {format_shape(input_shape, batch=True)} "
        "(images with the model's channel count but another height and width are resized)"
    )


def resize_array(sample: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize one (H, W, C) float32 sample to `size` = (height, width), channel by channel, with PIL bilinear."""
    from PIL import Image

    height, width = size
    channels = [
        np.asarray(
            Image.fromarray(np.ascontiguousarray(sample[..., c], dtype=np.float32)).resize(
                (width, height), Image.Resampling.BILINEAR
            )
        )
        for c in range(sample.shape[-1])
    ]
    return np.stack(channels, axis=-1).astype(np.float32, copy=False)


class ArraySource:
    """Samples held in a numpy array (in memory or memory-mapped), with optional labels."""

    def __init__(
        self, x: np.ndarray, labels: object | None, input_shape: InputShape, name: str, *, where: str = "data"
    ) -> None:
        """Wrap `x` (N, ...) for a model whose per-sample input shape is `input_shape`.

        Args:
            x: the samples; kept as given (a memmap stays a memmap) and only read row by row.
            labels: one integer label per sample, or None.
            input_shape: the model's per-sample input shape.
            name: the file name, for descriptions and messages.
            where: prefix of error messages (usually the file).

        Raises:
            DataError: non-numeric or empty data, labels that do not fit, or a shape the model cannot take.
        """
        if x.dtype.kind not in "biuf":
            raise DataError(f"{where}: x has dtype {x.dtype}; save x as a numeric array (uint8 or float32 pixels)")
        if x.ndim == 0:
            raise DataError(f"{where}: x is a single number; save an array of samples shaped (N, ...)")
        if len(x) == 0:
            raise DataError(f"{where}: x holds 0 samples; give at least one sample")
        self._x = x
        self.labels = None if labels is None else as_labels(labels, len(x), where)
        self._add_channel, self._resize_to = plan_array_fit(tuple(x.shape[1:]), input_shape, f"data x in {name}")
        label_text = "labelled" if self.labels is not None else "no labels"
        resize_text = ""
        if self._resize_to is not None:
            resize_text = f"; resized {x.shape[1]}x{x.shape[2]} -> {self._resize_to[0]}x{self._resize_to[1]}"
        self.description = f"{name} ({len(x)} samples, {label_text}{resize_text})"

    def __len__(self) -> int:
        return len(self._x)

    @property
    def is_memory_mapped(self) -> bool:
        return isinstance(self._x, np.memmap)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """The samples at `indices` as a new float32 array; only those rows are read from a memory-mapped file."""
        # Values beyond float32 become Inf here on purpose: Dataset.batches reports them by sample.
        with np.errstate(over="ignore"):
            batch = np.asarray(self._x[np.asarray(indices, dtype=np.int64)]).astype(np.float32, copy=False)
        if self._add_channel:
            batch = batch[..., np.newaxis]
        if self._resize_to is not None:
            batch = np.stack([resize_array(sample, self._resize_to) for sample in batch])
        return batch


# What numpy and zipfile raise on a damaged file: besides OSError/ValueError, a version 1/2 .npy header that does not
# parse goes through numpy's tokenize-based fallback (TokenError), a damaged deflate stream fails in zlib, and a zip
# member of an unknown compression method is NotImplementedError.
_UNREADABLE = (OSError, ValueError, EOFError, zipfile.BadZipFile, tokenize.TokenError, zlib.error, NotImplementedError)


def open_array_file(path: Path, input_shape: InputShape) -> ArraySource:
    """An `ArraySource` over an .npz (arrays `x` and optional `y`, loaded whole) or .npy (x only, memory-mapped).

    Raises:
        DataError: the file cannot be read, has no `x`, or does not fit the model.
    """
    y = None
    _check_array_header(path)
    try:
        if path.suffix.lower() == ".npy":
            x = np.load(path, mmap_mode="r", allow_pickle=False)
        else:
            x, y = _load_npz(path)
    except _UNREADABLE as exc:
        # Object arrays land here too: allow_pickle=False refuses them, as it must for files a user hands us.
        reason = "its array header does not parse" if isinstance(exc, tokenize.TokenError) else (
            " ".join(str(exc).split()) or type(exc).__name__)
        raise DataError(f"cannot read {path}: {reason}; save plain numeric arrays with np.save/np.savez") from None
    return ArraySource(x, y, input_shape, path.name, where=str(path))


NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file (and of each array inside an .npz zip)


def _check_array_header(path: Path) -> None:
    """Refuse an empty or foreign file by its first bytes, before NumPy guesses it is a pickle.

    Raises:
        DataError: the file is empty, or is neither a zip archive (.npz) nor a .npy file.
    """
    try:
        with path.open("rb") as handle:
            head = handle.read(len(NPY_MAGIC))
    except OSError as exc:
        raise DataError(f"cannot read data file {path}: {exc.strerror}") from None
    if not head:
        raise DataError(f"data file {path} is empty (0 bytes); save the samples with numpy.savez(path, x=samples)")
    if head.startswith(NPY_MAGIC) or (path.suffix.lower() != ".npy" and zipfile.is_zipfile(path)):
        return
    kind, save = (".npy", "numpy.save(path, samples)") if path.suffix.lower() == ".npy" else (
        ".npz", "numpy.savez(path, x=samples, y=labels)")
    raise DataError(f"{path} is not a NumPy {kind} file (truncated, damaged or another format); save the data with {save}")


def _load_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Arrays `x` and `y` (None if absent) of an .npz archive, loaded whole."""
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DataError(f"{path} holds a single array, not an .npz archive; rename it to .npy or save it with np.savez")
    with loaded as archive:
        if "x" not in archive.files:
            raise DataError(
                f"{path} has no array named 'x' (it has: {', '.join(archive.files) or 'nothing'}); "
                "save it with np.savez(path, x=samples, y=labels)"
            )
        x, y = archive["x"], (archive["y"] if "y" in archive.files else None)
    for name, value in (("x", x), ("y", y)):
        if value is not None and not isinstance(value, np.ndarray):  # NpzFile hands back a member without the .npy
            raise DataError(  # header as raw bytes
                f"{path}: '{name}' is not a NumPy array (a zip member without an .npy header); "
                "save the data with numpy.savez(path, x=samples, y=labels)"
            )
    return x, y
