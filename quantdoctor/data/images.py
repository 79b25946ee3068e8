"""Image files as sources: a folder (one sub-folder per class, or flat), decoded and resized batch by batch."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from quantdoctor.data.base import InputShape, as_labels, format_shape
from quantdoctor.errors import DataError
from quantdoctor.registry import Registry

if TYPE_CHECKING:
    from PIL.Image import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")

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
