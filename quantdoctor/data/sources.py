"""Raw data readers: arrays (.npz/.npy) and image files, read batch by batch as float32, before any preprocessing.

A source never loads more than it must: `.npy` files are memory-mapped and only the requested rows are copied out,
images are decoded per batch; `.npz` archives are zip files, loaded whole. Sources never write to user files.
"""

from __future__ import annotations

import tokenize
import zipfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

import numpy as np

from quantdoctor.errors import DataError
from quantdoctor.registry import Registry

if TYPE_CHECKING:
    from PIL.Image import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
ARRAY_EXTENSIONS = (".npz", ".npy")

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
    """Integer class labels (int64, -1 = no label) from `y`, one per sample.

    Raises:
        DataError: if `y` is not one whole number per sample.
    """
    labels = np.asarray(y)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise DataError(
            f"{where}: y has shape {tuple(labels.shape)}; give one integer class index per sample, shape ({count},)"
        )
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


# --------------------------------------------------------------------------------------------------------------- arrays
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


# --------------------------------------------------------------------------------------------------------------- images
ResizeFn = Callable[["Image", tuple[int, int]], "Image"]

RESIZE_MODES: Registry[ResizeFn] = Registry("resize mode")


@RESIZE_MODES.register("crop")
def resize_crop(image: Image, size: tuple[int, int]) -> Image:
    """Resize (bilinear, aspect kept) to cover round(H*256/224) x round(W*256/224), then centre-crop H x W.

    For a square model size this is the standard ImageNet evaluation transform (short side to 256, centre crop 224).
    """
    from PIL import Image as PILImage

    height, width = size
    cover_h, cover_w = round(height * 256 / 224), round(width * 256 / 224)
    w, h = image.size
    # Integer arithmetic decides the limiting side, so a square target gives exactly cover_h on the short side.
    if cover_h * w >= cover_w * h:
        new_h, new_w = cover_h, int(cover_h * w / h)
    else:
        new_h, new_w = int(cover_w * h / w), cover_w
    new_h, new_w = max(new_h, height), max(new_w, width)
    image = image.resize((new_w, new_h), PILImage.Resampling.BILINEAR)
    top, left = int(round((new_h - height) / 2)), int(round((new_w - width) / 2))
    return image.crop((left, top, left + width, top + height))


@RESIZE_MODES.register("stretch")
def resize_stretch(image: Image, size: tuple[int, int]) -> Image:
    """Resize (bilinear) straight to H x W, ignoring the aspect ratio."""
    from PIL import Image as PILImage

    height, width = size
    return image.resize((width, height), PILImage.Resampling.BILINEAR)


def _image_geometry(input_shape: InputShape) -> tuple[tuple[int, int], str]:
    """(height, width) and PIL mode ("RGB" or "L") for images fed to a model with this input shape."""
    if len(input_shape) != 3 or input_shape[2] not in (1, 3):
        raise DataError(
            f"the model expects {format_shape(input_shape)} per sample, not images of 1 or 3 channels; "
            "give the data as .npz/.npy arrays instead of image files"
        )
    height, width, channels = input_shape
    if height is None or width is None:
        raise DataError(
            f"the model's input size {format_shape(input_shape)} is not fixed, so images cannot be resized to it; "
            "give the data as .npz/.npy arrays"
        )
    return (height, width), ("L" if channels == 1 else "RGB")


def load_image(path: Path, size: tuple[int, int], mode: str, resize: str = "crop") -> np.ndarray:
    """Decode one image file to float32 (H, W, C) pixels in 0..255, converted to `mode` and resized to `size`.

    Raises:
        DataError: naming the file, if it cannot be decoded.
    """
    from PIL import Image

    resize_fn = RESIZE_MODES.get(resize)
    try:
        with Image.open(path) as image:
            converted = image.convert(mode)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}; remove or replace the file") from None
    pixels = np.asarray(resize_fn(converted, size), dtype=np.float32)
    return pixels[..., np.newaxis] if pixels.ndim == 2 else pixels


class ImageFilesSource:
    """An explicit list of image files with optional labels, decoded batch by batch."""

    def __init__(
        self,
        paths: Sequence[str | Path],
        labels: Sequence[int] | np.ndarray | None,
        input_shape: InputShape,
        *,
        resize: str = "crop",
        description: str | None = None,
        class_names: Sequence[str] | None = None,
    ) -> None:
        """Read `paths` for a model with per-sample `input_shape` (H, W, 1 or 3), resized by `resize`.

        Raises:
            DataError: no paths, labels that do not fit, or a model input that is not an image.
            UnknownNameError: an unknown resize mode.
        """
        self.paths = tuple(Path(p) for p in paths)
        if not self.paths:
            raise DataError("no image files given; give at least one image")
        self._resize = resize
        RESIZE_MODES.get(resize)
        self._size, self._mode = _image_geometry(input_shape)
        self.labels = None if labels is None else as_labels(labels, len(self.paths), "image labels")
        self.description = description or f"{len(self.paths)} image files"
        self.class_names = tuple(class_names) if class_names else None

    def __len__(self) -> int:
        return len(self.paths)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """Decode the images at `indices` into a float32 (len(indices), H, W, C) batch."""
        height, width = self._size
        channels = 1 if self._mode == "L" else 3
        indices = np.asarray(indices, dtype=np.int64)
        batch = np.empty((len(indices), height, width, channels), dtype=np.float32)
        for row, index in enumerate(indices):
            batch[row] = load_image(self.paths[index], self._size, self._mode, self._resize)
        return batch


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file() and not path.name.startswith(".")


def scan_image_folder(root: Path) -> tuple[list[Path], list[int] | None, list[str]]:
    """Image files under `root`: (paths, labels or None, class names).

    Sub-folders are classes in sorted name order and a file's label is the index of its sub-folder (the keras
    `image_dataset_from_directory` convention; files in nested folders belong to the class folder above them).
    A folder without sub-folders gives its own image files without labels.

    Raises:
        DataError: no images at all, or loose images next to class folders (they would have no class).
    """
    entries = sorted((p for p in root.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)
    class_dirs = [p for p in entries if p.is_dir()]
    loose = [p for p in entries if _is_image(p)]
    wanted = ", ".join(IMAGE_EXTENSIONS)
    if not class_dirs:
        if not loose:
            raise DataError(f"image folder {root} contains no images ({wanted}); add images or point --data elsewhere")
        return loose, None, []
    if loose:
        raise DataError(
            f"image folder {root} mixes {len(loose)} loose images (e.g. {loose[0].name}) with class sub-folders; "
            "move them into a class sub-folder, or point --data at a folder of only images"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(
            (p for p in class_dir.rglob("*") if _is_image(p) and not any(part.startswith(".") for part in p.parts)),
            key=lambda p: p.relative_to(class_dir).parts,
        )
        paths += files
        labels += [label] * len(files)
    if not paths:
        raise DataError(
            f"image folder {root} has {len(class_dirs)} class sub-folders but no images ({wanted}) in them; add images"
        )
    return paths, labels, [p.name for p in class_dirs]


def open_image_folder(root: Path, input_shape: InputShape, resize: str = "crop") -> ImageFilesSource:
    """An `ImageFilesSource` over an image folder (see `scan_image_folder` for the layout)."""
    paths, labels, classes = scan_image_folder(root)
    name = str(root).rstrip("/") + "/"
    if labels is None:
        description = f"image folder {name} ({len(paths)} images, no labels)"
    else:
        description = f"image folder {name} ({len(classes)} classes, {len(paths)} images)"
    return ImageFilesSource(paths, labels, input_shape, resize=resize, description=description, class_names=classes)


def open_source(path: str | Path, input_shape: InputShape, resize: str = "crop") -> Source:
    """The raw source behind a `--data`/`--calib` path: .npz, .npy or an image folder.

    Raises:
        DataError: the path is missing, of an unknown kind, or its data does not fit the model.
        UnknownNameError: an unknown resize mode.
    """
    RESIZE_MODES.get(resize)
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {path} does not exist; give an .npz or .npy file or an image folder")
    if path.is_dir():
        return open_image_folder(path, input_shape, resize)
    if path.suffix.lower() in ARRAY_EXTENSIONS:
        return open_array_file(path, input_shape)
    raise DataError(
        f"cannot read data from {path}: unknown extension '{path.suffix}'; "
        "use .npz with x (and y), .npy, or an image folder"
    )
