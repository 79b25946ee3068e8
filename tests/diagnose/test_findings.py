"""Planted faults: each is built into a tiny model in seconds and must come out first, with the right mechanism.

The model is plain on purpose (no depthwise: LiteRT's hybrid per-tensor depthwise kernel is itself a fault, tested in
test_explain.py): stem conv-BN-ReLU, conv-BN-ReLU (c2), a linear 1x1 projection with BN (proj), a 1x1 conv small
enough (768 weights) that dynamic-range quantization leaves it in float (mix), global pooling and a dense head.
"""

from __future__ import annotations

import numpy as np
import pytest

from quantdoctor import diagnose
from quantdoctor.diagnose.findings import Severity
from tests.conftest import TINY_INPUT, tiny_data


def plain_model(seed: int = 0):
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inp = keras.Input(TINY_INPUT, name="image")
    x = layers.Conv2D(48, 3, strides=2, padding="same", use_bias=False, name="stem")(inp)
    x = layers.BatchNormalization(epsilon=1e-3, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.Conv2D(48, 3, padding="same", use_bias=False, name="c2")(x)
    x = layers.BatchNormalization(epsilon=1e-3, name="c2_bn")(x)
    x = layers.ReLU(name="c2_relu")(x)
    x = layers.Conv2D(48, 1, use_bias=False, name="proj")(x)
    x = layers.BatchNormalization(epsilon=1e-3, name="proj_bn")(x)
    x = layers.Conv2D(16, 1, name="mix")(x)
    x = layers.ReLU(name="mix_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(64, activation="relu", name="fc")(x)
    out = layers.Dense(12, name="logits")(x)
    model = keras.Model(inp, out, name="plain")
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.3, c), rng.uniform(0.5, 2, c)])
    return model


def _scale_bn_channels(bn, factors: np.ndarray) -> None:
    """Multiply BN output channels by `factors` (gamma and beta), which scales what the channel carries."""
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([gamma * factors, beta * factors, mean, var])


def _compensate_next_conv(conv, factors: np.ndarray) -> None:
    """Divide the next conv's input-channel weights by `factors`: in float the model computes the same function."""
    weights = conv.get_weights()
    weights[0] = weights[0] / factors.reshape(1, 1, -1, 1)
    conv.set_weights(weights)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("planted")
    x, y = tiny_data(n=48)
    np.savez(folder / "data.npz", x=x, y=y)
    return folder


def _save(model, folder, name):
    path = folder / f"{name}.keras"
    model.save(path)
    return path


def _top(d):
    assert d.findings, "no finding at all"
    return d.findings[0]


def test_healthy_plain_model_has_no_critical_finding(data):
    d = diagnose(_save(plain_model(), data, "healthy"), data / "data.npz", scheme="int8", calib_count=16)
    assert d.model.top1_agreement >= 0.9
    assert not [f for f in d.findings if f.severity is Severity.CRITICAL]


def test_activation_channel_times_100_is_found_as_activation_outliers(data):
    model = plain_model()
    factors = np.ones(48, np.float32)
    factors[0] = 100.0  # one channel of c2's output ×100; ReLU is homogeneous, proj divides it back
    _scale_bn_channels(model.get_layer("c2_bn"), factors)
    _compensate_next_conv(model.get_layer("proj"), factors)
    d = diagnose(_save(model, data, "outlier"), data / "data.npz", scheme="int8", calib_count=16)
    top = _top(d)
    assert top.mechanism == "activation_outliers"
    assert top.layers[0] == "c2_relu"
    assert top.evidence["channel_range_ratio"] >= 30


def test_bn_gamma_spread_under_per_tensor_weights_is_found_as_weight_range_disparity(data):
    model = plain_model()
    factors = np.logspace(-1, 1, 48).astype(np.float32)  # folded proj weights: channel ranges differ ×100
    _scale_bn_channels(model.get_layer("proj_bn"), factors)
    _compensate_next_conv(model.get_layer("mix"), factors)  # mix stays float under dynamic range (768 weights)
    d = diagnose(_save(model, data, "gamma"), data / "data.npz", scheme="dynamic-per-tensor")
    top = _top(d)
    assert top.mechanism == "weight_range_disparity"
    assert top.layers == ("proj_bn",)
    assert top.evidence["channel_range_ratio"] >= 8  # widest / median: the spread is ×100 end to end, ×10 to the median
    assert top.evidence["per_channel_sqnr_db"] - top.evidence["weight_sqnr_db"] >= 10


def test_calibration_on_shifted_data_is_found_as_clipping(data):
    x, _ = tiny_data(n=48)
    np.save(data / "shifted.npy", 0.2 * x)  # calibration sees a fifth of the range the model meets
    d = diagnose(
        _save(plain_model(), data, "calib"), data / "data.npz", scheme="int8", calib=str(data / "shifted.npy")
    )
    top = _top(d)
    assert top.mechanism == "calibration_clipping"
    assert top.positions[0] == -1  # it starts at the model input, which the calibration set did not cover
    assert top.evidence["clipped_share"] >= 0.05
    assert top.evidence["tensors"] >= 2


def test_tiny_logit_margins_are_found_as_output_margins(data):
    model = plain_model()
    head = model.get_layer("logits")
    w, b = head.get_weights()
    head.set_weights([w * 1e-3, np.full_like(b, 10.0)])  # every logit ≈ 10: margins far below the output grid step
    d = diagnose(_save(model, data, "margins"), data / "data.npz", scheme="int8", calib_count=16)
    top = _top(d)
    assert top.mechanism == "output_margins"
    assert top.layers == ("logits",)
    m = d.margins
    assert m.observed_flip_rate >= 0.3
    assert top.evidence["output_step"] > m.top1_margin_median
