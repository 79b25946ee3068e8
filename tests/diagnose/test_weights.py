"""analyze_weights on a tiny Keras model whose folded depthwise channels span ranges ×100 apart."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantdoctor.diagnose.weights import analyze_weights
from quantdoctor.errors import ModelLoadError

# 256 channels, not 64: the pooled weight SQNR is dominated by the widest channel, so per-channel can gain at most
# about 10·log10(C) dB over per-tensor (18 dB for 64 channels, 24 dB for 256) however many small channels collapse.
CHANNELS = 256
WEIGHTED = ["CONV_2D", "DEPTHWISE_CONV_2D", "CONV_2D", "FULLY_CONNECTED"]


def _build_model(seed: int = 0):
    """Conv 3x3 → BN → ReLU → depthwise 5x5 → BN → conv 1x1 → GAP → Dense(10).

    The depthwise BN gammas are set so the folded channel ranges are exactly: one channel 1.0, the others spread
    geometrically over 0.002..0.05 (median 0.01), i.e. widest / median ≈ 100.
    """
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3), name="image")
    x = layers.Conv2D(CHANNELS, 3, padding="same", use_bias=False, name="stem")(inp)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.DepthwiseConv2D(5, padding="same", use_bias=False, name="dw")(x)
    x = layers.BatchNormalization(epsilon=1e-3, name="dw_bn")(x)
    x = layers.Conv2D(16, 1, name="project")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    out = layers.Dense(10, name="fc")(x)  # 160 weights: left in float under dynamic range
    model = keras.Model(inp, out, name="spread")
    widest = np.abs(model.get_layer("dw").get_weights()[0]).reshape(-1, CHANNELS).max(axis=0)
    target = np.concatenate([[1.0], np.geomspace(0.002, 0.05, CHANNELS - 1)])
    np.random.default_rng(seed).shuffle(target)
    gamma = target / widest * np.sqrt(1.0 + 1e-3)  # folding multiplies by gamma / sqrt(var + eps), var = 1
    zeros, ones = np.zeros(CHANNELS, "float32"), np.ones(CHANNELS, "float32")
    model.get_layer("dw_bn").set_weights([gamma.astype("float32"), zeros, zeros, ones])
    return model


def _convert(model, mode: str) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode != "float":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if mode == "dynamic-per-tensor":
        converter._experimental_disable_per_channel = True
    if mode == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if mode == "int8":
        samples = np.random.default_rng(0).normal(size=(4, 1, 8, 8, 3)).astype("float32")
        converter.representative_dataset = lambda: ([sample] for sample in samples)
    return bytes(converter.convert())


@pytest.fixture(scope="module")
def models() -> dict[str, bytes]:
    model = _build_model()
    return {mode: _convert(model, mode) for mode in ("float", "dynamic-per-tensor", "dynamic", "float16", "int8")}


@pytest.fixture(scope="module")
def reports(models) -> dict[str, tuple]:
    return {mode: analyze_weights(models["float"], data) for mode, data in models.items() if mode != "float"}


def _depthwise(reports):
    (dw,) = [r for r in reports if r.op_type == "DEPTHWISE_CONV_2D"]
    return dw


def test_every_weighted_op_is_reported_and_paired(reports):
    for mode, found in reports.items():
        assert [r.op_type for r in found] == WEIGHTED, mode
        assert all(r.match in ("exact_id", "name") for r in found), mode
    # float16 may pair by "name": the writer's de-duplication digit shifts there ("...mul1" -> "...mul2")
    assert _depthwise(reports["dynamic-per-tensor"]).match == "exact_id"


def test_per_tensor_depthwise_collapses_and_per_channel_would_fix_it(reports):
    dw = _depthwise(reports["dynamic-per-tensor"])
    assert (dw.storage, dw.granularity, dw.axis, dw.num_channels) == ("int8", "per-tensor", 3, CHANNELS)
    assert dw.channel_range_ratio == pytest.approx(100, rel=0.2)
    assert dw.collapsed_channels > 0 and dw.min_channel_levels == 1
    assert dw.sqnr_db_actual == pytest.approx(dw.sqnr_db_per_tensor, abs=0.01)  # the converter's rule is ours
    assert dw.sqnr_db_per_channel - dw.sqnr_db_actual > 20
    assert dw.worst_channel_sqnr_db <= 0.0  # some channels are erased outright


def test_per_channel_model_stores_what_per_channel_simulation_predicts(reports):
    dw = _depthwise(reports["dynamic"])
    assert (dw.granularity, dw.axis, dw.collapsed_channels) == ("per-channel", 3, 0)
    assert dw.sqnr_db_actual == pytest.approx(dw.sqnr_db_per_channel, abs=1.0)
    assert dw.worst_channel_sqnr_db > 40
    assert dw.channel_range_ratio == pytest.approx(_depthwise(reports["dynamic-per-tensor"]).channel_range_ratio)


def test_small_dense_is_left_in_float_under_dynamic_range(reports):
    for mode in ("dynamic", "dynamic-per-tensor"):
        fc = reports[mode][-1]
        assert (fc.storage, fc.granularity, fc.sqnr_db_actual) == ("float32", "float32", math.inf)
        assert fc.note == "left in float: 160 < 1024 elements"
        assert fc.min_channel_levels is None and math.isfinite(fc.sqnr_db_per_channel)


def test_float16_and_int8_storage(reports):
    for r in reports["float16"]:
        assert (r.storage, r.granularity) == ("float16", "float16")
        assert r.sqnr_db_actual > 60  # fp16 keeps ~11 bits
    full = reports["int8"]
    assert all(r.storage == "int8" and r.granularity == "per-channel" for r in full)
    assert full[-1].note == "" and full[-1].num_channels == 10  # full int8 quantizes even the small dense


def test_unpaired_ops_are_reported_not_dropped(models):
    import keras

    keras.utils.set_random_seed(1)
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    found = analyze_weights(_convert(other, "float"), models["dynamic-per-tensor"])
    assert [r.op_type for r in found] == WEIGHTED
    assert all(r.match == "" and math.isnan(r.sqnr_db_actual) for r in found)
    assert "no float counterpart" in found[1].note
    assert _depthwise(found).collapsed_channels > 0  # still measured from the stored integers


def test_unreadable_model_raises_model_load_error(models):
    with pytest.raises(ModelLoadError, match="quantized model"):
        analyze_weights(models["float"], b"not a flatbuffer")
