"""Shared fixtures: tiny Keras models built in seconds from a fixed seed, and data for them."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

TINY_INPUT = (24, 24, 3)
TINY_CLASSES = 12


def build_tiny_model(seed: int = 0, num_classes: int = TINY_CLASSES):
    """Conv-BN-ReLU6, depthwise-BN-ReLU6, project-BN with a residual Add, a DenseNet-style concat, GAP and a dense head.

    Weight tensors are big enough (> 1024 elements) for dynamic-range quantization to touch them. BN statistics are
    randomised so folding them changes the weights, as in a trained model.
    """
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inp = keras.Input(TINY_INPUT, name="image")
    x = layers.Conv2D(48, 3, strides=2, padding="same", use_bias=False, name="stem_conv")(inp)
    x = layers.BatchNormalization(epsilon=1e-3, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    y = layers.Conv2D(96, 1, use_bias=False, name="b1_expand")(x)
    y = layers.BatchNormalization(epsilon=1e-3, name="b1_expand_bn")(y)
    y = layers.ReLU(6.0, name="b1_expand_relu")(y)
    y = layers.DepthwiseConv2D(5, padding="same", use_bias=False, name="b1_dw")(y)
    y = layers.BatchNormalization(epsilon=1e-3, name="b1_dw_bn")(y)
    y = layers.ReLU(6.0, name="b1_dw_relu")(y)
    y = layers.Conv2D(48, 1, use_bias=False, name="b1_project")(y)
    y = layers.BatchNormalization(epsilon=1e-3, name="b1_project_bn")(y)
    x = layers.Add(name="b1_add")([x, y])
    z = layers.BatchNormalization(epsilon=1e-3, name="d1_bn")(x)
    z = layers.ReLU(name="d1_relu")(z)
    z = layers.Conv2D(32, 3, padding="same", name="d1_conv")(z)
    x = layers.Concatenate(name="d1_concat")([x, z])
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dense(64, activation="relu", name="fc")(x)
    out = layers.Dense(num_classes, name="logits")(x)
    model = keras.Model(inp, out, name="tiny")
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c).astype("float32"),
                    rng.normal(0, 0.2, c).astype("float32"),
                    rng.normal(0, 0.3, c).astype("float32"),
                    rng.uniform(0.5, 2.0, c).astype("float32"),
                ]
            )
    return model


def tiny_data(n: int = 40, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random images in [-1, 1] and labels from a fixed seed."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 6, 6, 3)).astype("float32")
    x = np.repeat(np.repeat(base, 4, axis=1), 4, axis=2)  # blocky images: neighbouring pixels correlate
    x = np.tanh(x + 0.3 * rng.normal(size=x.shape).astype("float32"))
    y = rng.integers(0, TINY_CLASSES, size=n)
    return x.astype("float32"), y.astype("int64")


@pytest.fixture(scope="session", autouse=True)
def private_conversion_cache(tmp_path_factory):
    """Converted models are cached in a folder of this session, never in the user's cache; CLI runs in a subprocess
    inherit the variable."""
    os.environ["QUANTDOCTOR_CACHE_DIR"] = str(tmp_path_factory.mktemp("quantdoctor-cache"))
    return os.environ["QUANTDOCTOR_CACHE_DIR"]


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    build_tiny_model().save(path)
    return path


@pytest.fixture(scope="session")
def tiny_npz(tmp_path_factory):
    x, y = tiny_data()
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(path, x=x, y=y)
    return path


@pytest.fixture(scope="session")
def planted_npz(tmp_path_factory):
    """Held-out real digits for the planted-fault models of tests/planted.py."""
    from tests.planted import planted_data

    x, y = planted_data()
    path = tmp_path_factory.mktemp("planted") / "digits.npz"
    np.savez(path, x=x, y=y)
    return path
