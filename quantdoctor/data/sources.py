"""Raw data readers: arrays (.npz/.npy, `data/arrays.py`) and image files (`data/images.py`), read batch by batch as
float32, before any preprocessing; `open_source` picks one for a path.

A source never loads more than it must: `.npy` files are memory-mapped and only the requested rows are copied out,
images are decoded per batch; `.npz` archives are zip files, loaded whole. Sources never write to user files.
"""

from __future__ import annotations

from pathlib import Path

from quantdoctor.data.arrays import ARRAY_EXTENSIONS, ArraySource, open_array_file, plan_array_fit, resize_array
from quantdoctor.data.base import InputShape, Source, as_labels, format_shape
from quantdoctor.data.images import (
    IMAGE_EXTENSIONS,
    RESIZE_MODES,
    ImageFilesSource,
    load_image,
    open_image_folder,
    resize_crop,
    resize_stretch,
    scan_image_folder,
)
from quantdoctor.errors import DataError

__all__ = [
    "ARRAY_EXTENSIONS", "IMAGE_EXTENSIONS", "RESIZE_MODES", "ArraySource", "ImageFilesSource", "InputShape", "Source",
    "as_labels", "format_shape", "load_image", "open_array_file", "open_image_folder", "open_source", "plan_array_fit",
    "resize_array", "resize_crop", "resize_stretch", "scan_image_folder",
]


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
