"""Preprocess presets: hand-computed values and equality with keras.applications' own preprocess_input."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from quantdoctor.data.preprocess import PRESETS
from quantdoctor.errors import DataError, UnknownNameError

# preset -> (keras.applications module, imagenet_utils mode or None for "rescales inside the model")
KERAS_FAMILIES = {
    "mobilenet": ("mobilenet", "tf"),
    "mobilenet_v2": ("mobilenet_v2", "tf"),
    "inception_v3": ("inception_v3", "tf"),
    "xception": ("xception", "tf"),
    "resnet_v2": ("resnet_v2", "tf"),
    "nasnet": ("nasnet", "tf"),
    "densenet": ("densenet", "torch"),
    "resnet50": ("resnet50", "caffe"),
    "vgg16": ("vgg16", "caffe"),
    "vgg19": ("vgg19", "caffe"),
    "efficientnet": ("efficientnet", None),
    "convnext": ("convnext", None),
}


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(0).uniform(0, 255, size=(4, 5, 6, 3)).astype(np.float32)


@pytest.mark.parametrize("preset", sorted(KERAS_FAMILIES))
def test_keras_family_matches_keras_preprocess_input(preset: str, pixels: np.ndarray) -> None:
    module, mode = KERAS_FAMILIES[preset]
    applications = importlib.import_module(f"keras.applications.{module}")
    # Keras preprocesses numpy input in place, so it gets its own copy.
    expected = np.asarray(applications.preprocess_input(pixels.copy()))
    if mode is not None:
        from keras.applications import imagenet_utils

        np.testing.assert_allclose(imagenet_utils.preprocess_input(pixels.copy(), mode=mode), expected, atol=1e-5)
    before = pixels.copy()
    got = PRESETS.get(preset)(pixels)
    assert got.dtype == np.float32
    assert got.shape == pixels.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(pixels, before)  # the input batch is never modified


@pytest.mark.parametrize(
    ("preset", "expected"),
    [
        ("none", [0.0, 127.0, 255.0]),
        ("scale01", [0.0, 127.0 / 255.0, 1.0]),
        ("minus1to1", [-1.0, 127.0 / 127.5 - 1.0, 1.0]),
        ("efficientnet-lite", [-127.0 / 128.0, 0.0, 1.0]),
        ("efficientnet", [0.0, 127.0, 255.0]),
    ],
)
def test_simple_presets_hand_computed(preset: str, expected: list[float]) -> None:
    x = np.array([0, 127, 255], dtype=np.uint8).reshape(1, 1, 3, 1)
    got = PRESETS.get(preset)(x)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.reshape(-1), expected, rtol=0, atol=1e-7)


def test_caffe_swaps_to_bgr_before_subtracting_the_mean() -> None:
    red = np.zeros((1, 1, 1, 3), dtype=np.float32)
    red[..., 0] = 200.0
    got = PRESETS.get("resnet50")(red).reshape(-1)
    # RGB (200, 0, 0) -> BGR (0, 0, 200) -> minus (103.939, 116.779, 123.68)
    np.testing.assert_allclose(got, [-103.939, -116.779, 76.32], atol=1e-4)


@pytest.mark.parametrize("preset", ["densenet", "resnet50", "vgg16", "vgg19"])
def test_rgb_only_presets_refuse_one_channel(preset: str) -> None:
    grey = np.zeros((2, 8, 8, 1), dtype=np.float32)
    with pytest.raises(DataError, match=rf"preset '{preset}' needs RGB images \(3 channels\) but the data has 1"):
        PRESETS.get(preset)(grey)


def test_channel_free_presets_accept_one_channel_and_flat_vectors() -> None:
    np.testing.assert_allclose(PRESETS.get("mobilenet")(np.full((2, 4, 4, 1), 255.0)), 1.0)
    np.testing.assert_allclose(PRESETS.get("scale01")(np.full((3, 20), 51.0)), 0.2, rtol=1e-6)


def test_every_preset_documents_its_formula() -> None:
    for name, preset in PRESETS.items():
        assert preset.__doc__ and "x" in preset.__doc__, name


def test_unknown_preset_lists_the_choices() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown preprocess preset 'resnet'; choose one of: none, scale01"):
        PRESETS.get("resnet")
