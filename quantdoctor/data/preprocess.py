"""Preprocess presets: what a model expects its input pixels to look like, in plain numpy.

Every preset takes a float32 NHWC RGB batch with pixels in 0..255 and returns a new float32 array (the input is never
modified). The keras.applications families use the same formulas as
`keras.applications.imagenet_utils.preprocess_input` in the same order of operations, so results match it to float32
rounding; the tests check this against Keras itself.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from quantdoctor.errors import DataError
from quantdoctor.registry import Registry

Preset = Callable[[np.ndarray], np.ndarray]

PRESETS: Registry[Preset] = Registry("preprocess preset")

# ImageNet statistics used by keras.applications.imagenet_utils (mode "torch" in RGB order, mode "caffe" in BGR order).
_TORCH_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_TORCH_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
_CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68], dtype=np.float32)


def _as_float32(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)


def _require_rgb(x: np.ndarray, preset: str) -> None:
    """Raise DataError unless `x` is a batch of images with 3 (RGB) channels."""
    if x.ndim < 3 or x.shape[-1] != 3:
        channels = x.shape[-1] if x.ndim >= 3 else "no"
        raise DataError(
            f"preprocess preset '{preset}' needs RGB images (3 channels) but the data has {channels} channels "
            f"(batch shape {tuple(x.shape)}); pick --preprocess none, scale01 or minus1to1"
        )


@PRESETS.register("none")
def identity(x: np.ndarray) -> np.ndarray:
    """x (unchanged)."""
    return _as_float32(x).copy()


@PRESETS.register("scale01")
def scale01(x: np.ndarray) -> np.ndarray:
    """x / 255, pixels in [0, 1]."""
    return _as_float32(x) / np.float32(255.0)


@PRESETS.register("minus1to1")
def minus1to1(x: np.ndarray) -> np.ndarray:
    """x / 127.5 - 1, pixels in [-1, 1]."""
    return _as_float32(x) / np.float32(127.5) - np.float32(1.0)


@PRESETS.register("efficientnet-lite")
def efficientnet_lite(x: np.ndarray) -> np.ndarray:
    """(x - 127) / 128, the TF-Lite EfficientNet-Lite models' input (pixels in about [-1, 1])."""
    return (_as_float32(x) - np.float32(127.0)) / np.float32(128.0)


def keras_tf(x: np.ndarray, preset: str = "mobilenet") -> np.ndarray:
    """x / 127.5 - 1 (keras.applications mode "tf")."""
    return minus1to1(x)


def keras_torch(x: np.ndarray, preset: str = "densenet") -> np.ndarray:
    """(x / 255 - mean) / std per RGB channel, mean = [0.485, 0.456, 0.406], std = [0.229, 0.224, 0.225]
    (keras.applications mode "torch").

    Raises:
        DataError: if the data is not 3-channel RGB (`preset` names the preset in the message).
    """
    x = _as_float32(x)
    _require_rgb(x, preset)
    return (x / np.float32(255.0) - _TORCH_MEAN) / _TORCH_STD


def keras_caffe(x: np.ndarray, preset: str = "resnet50") -> np.ndarray:
    """x[..., ::-1] - [103.939, 116.779, 123.68]: RGB -> BGR, then minus the ImageNet mean per BGR channel, no scaling
    (keras.applications mode "caffe").

    Raises:
        DataError: if the data is not 3-channel RGB (`preset` names the preset in the message).
    """
    x = _as_float32(x)
    _require_rgb(x, preset)
    return x[..., ::-1] - _CAFFE_MEAN_BGR


def rescaled_inside(x: np.ndarray, preset: str = "efficientnet") -> np.ndarray:
    """x (unchanged): these Keras models rescale inside the graph; their preprocess_input is a documented no-op."""
    return identity(x)


def _register_family(names: tuple[str, ...], family: Callable[[np.ndarray, str], np.ndarray], formula: str) -> None:
    """Register one keras.applications family under each model name, so errors name the preset the user chose."""
    for name in names:

        def preset(x: np.ndarray, _name: str = name) -> np.ndarray:
            return family(x, _name)

        preset.__name__ = name
        preset.__doc__ = f"{formula} (keras.applications.{name}.preprocess_input)."
        PRESETS.add(name, preset)


_register_family(
    ("mobilenet", "mobilenet_v2", "inception_v3", "xception", "resnet_v2", "nasnet"), keras_tf, "x / 127.5 - 1"
)
_register_family(
    ("densenet",), keras_torch, "(x / 255 - [0.485, 0.456, 0.406]) / [0.229, 0.224, 0.225] per RGB channel"
)
_register_family(
    ("resnet50", "vgg16", "vgg19"),
    keras_caffe,
    "x[..., ::-1] - [103.939, 116.779, 123.68] (RGB -> BGR, minus BGR mean)",
)
_register_family(("efficientnet", "convnext"), rescaled_inside, "x unchanged (the model rescales inside)")
