"""Loading user data (.npz, .npy, image folders) and preprocessing it, streamed batch by batch."""

from __future__ import annotations

from quantdoctor.data.dataset import DataSplit, Dataset, load_dataset, split_calibration
from quantdoctor.data.preprocess import PRESETS
from quantdoctor.data.sources import (
    IMAGE_EXTENSIONS,
    RESIZE_MODES,
    ArraySource,
    ImageFilesSource,
    Source,
    load_image,
    open_source,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "PRESETS",
    "RESIZE_MODES",
    "ArraySource",
    "DataSplit",
    "Dataset",
    "ImageFilesSource",
    "Source",
    "load_dataset",
    "load_image",
    "open_source",
    "split_calibration",
]
