"""Tests for the toco-1x scheme: the weight layout of TF 1.12/1.13's post_training_quantize, made by ai-edge-quantizer."""

from __future__ import annotations

import numpy as np
import pytest

from quantdoctor.quantize.converter import convert
from quantdoctor.quantize.recipes import quantize_tflite, recipe_for
from quantdoctor.quantize.schemes import SCHEMES
from tests.quantize.test_converter import Tflite

# Weight element counts: conv 3*3*8*32 = 2304, depthwise 3*3*32*4 = 1152, dense 4*256 = 1024 (the threshold itself),
# head 256*10 = 2560; the 1x1 conv has 128*4 = 512 and must stay float.
LAYERS = {"big_conv": 2304, "big_dw": 1152, "small_conv": 512, "dense_1024": 1024, "head": 2560}


@pytest.fixture(scope="module")
def model():
    import keras

    keras.utils.set_random_seed(7)
    inputs = keras.Input((12, 12, 8))
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="big_conv")(inputs)
    x = keras.layers.DepthwiseConv2D(3, padding="same", depth_multiplier=4, activation="relu", name="big_dw")(x)
    x = keras.layers.Conv2D(4, 1, name="small_conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(256, activation="relu", name="dense_1024")(x)
    outputs = keras.layers.Dense(10, name="head")(x)
    model = keras.Model(inputs, outputs, name="toco")
    # Depthwise weights far from symmetric around zero, so an asymmetric grid is told apart from a symmetric one.
    depthwise = model.get_layer("big_dw")
    kernel, bias = depthwise.get_weights()
    depthwise.set_weights([np.random.default_rng(7).uniform(-0.05, 0.25, kernel.shape).astype(np.float32), bias])
    return model


@pytest.fixture(scope="module")
def data():
    return np.random.default_rng(8).normal(size=(8, 12, 12, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def float_tflite(model):
    return convert(model, None)


@pytest.fixture(scope="module")
def toco(float_tflite):
    return Tflite(quantize_tflite(float_tflite, "toco-1x"))


def weight_input(tflite: Tflite, op_name: str) -> tuple[dict, dict | None]:
    """The weight tensor fed to the one op of this type, and the DEQUANTIZE op that produces it (if any)."""
    ops = [op for op in tflite.ops if op["op_name"] == op_name]
    producers = {t: op for op in tflite.ops for t in op["outputs"]}
    assert len(ops) >= 1
    index = ops[0]["inputs"][1]
    return tflite.tensors[index], producers.get(index)


def layer_weight(tflite: Tflite, layer: str) -> dict:
    """The stored weight tensor of the op built from Keras layer `layer` (before any DEQUANTIZE)."""
    found = [w for w in tflite.weights() if f"/{layer}_1/" in w["name"]]
    assert len(found) == 1, [w["name"] for w in tflite.weights()]
    return found[0]


def test_fixture_sizes_straddle_the_threshold(toco):
    assert {layer: int(np.prod(layer_weight(toco, layer)["shape"])) for layer in LAYERS} == LAYERS


@pytest.mark.parametrize("layer", ["big_conv", "dense_1024", "head"])
def test_hybrid_ops_get_symmetric_per_tensor_int8_weights_without_dequantize(toco, model, layer):
    weight = layer_weight(toco, layer)
    params = weight["quantization_parameters"]
    assert weight["dtype"] == np.int8
    assert len(params["scales"]) == 1 and list(params["zero_points"]) == [0]
    # TF 1.x SymmetricQuantizeFloats: scale = max|w| / 127.
    expected = np.abs(model.get_layer(layer).get_weights()[0]).max() / 127
    assert params["scales"][0] == pytest.approx(expected, rel=1e-5)
    consumers = [op for op in toco.ops if weight["index"] in op["inputs"]]
    assert [op["op_name"] for op in consumers] != ["DEQUANTIZE"]


def test_depthwise_weights_are_asymmetric_per_tensor_behind_dequantize(toco, model):
    weight, producer = weight_input(toco, "DEPTHWISE_CONV_2D")
    assert weight["dtype"] == np.float32
    assert producer is not None and producer["op_name"] == "DEQUANTIZE"
    stored = toco.tensors[producer["inputs"][0]]
    params = stored["quantization_parameters"]
    assert stored["dtype"] == np.int8 and len(params["scales"]) == 1
    w = model.get_layer("big_dw").get_weights()[0]
    # TF 1.x AsymmetricQuantizeTensor: scale = (max - min) / 255 on [0, 255]; int8 with the zero point moved by -128
    # holds the same grid. The symmetric grid would be max|w| / 127 with zero point 0.
    low, high = min(float(w.min()), 0.0), max(float(w.max()), 0.0)
    scale = (high - low) / 255
    assert params["scales"][0] == pytest.approx(scale, rel=1e-5)
    assert params["zero_points"][0] == round(-128 - low / scale) != 0


def test_small_weights_stay_float_with_no_dequantize(toco):
    weight = layer_weight(toco, "small_conv")
    assert weight["dtype"] == np.float32
    assert len(weight["quantization_parameters"]["scales"]) == 0
    assert sum(op["op_name"] == "DEQUANTIZE" for op in toco.ops) == 1  # the depthwise one only


def test_recipe_is_per_tensor_with_the_1024_threshold():
    rules = recipe_for("toco-1x")
    assert {rule["operation"] for rule in rules} == {"CONV_2D", "FULLY_CONNECTED", "EMBEDDING_LOOKUP", "DEPTHWISE_CONV_2D"}
    assert all(rule["op_config"]["weight_tensor_config"]["granularity"] == "TENSORWISE" for rule in rules)
    assert all(rule["op_config"]["min_weight_elements"] == 1024 for rule in rules)


def test_outputs_stay_close_to_float(toco, float_tflite, data):
    reference = Tflite(float_tflite).run(data)
    error = np.linalg.norm(toco.run(data) - reference) / np.linalg.norm(reference)
    assert error < 0.03  # measured 0.006


def test_keras_source_is_routed_through_the_recipe(model, toco, data):
    assert SCHEMES.get("toco-1x").via_recipe
    routed = Tflite(convert(model, "toco-1x"))
    assert [op["op_name"] for op in routed.ops] == [op["op_name"] for op in toco.ops]
    np.testing.assert_array_equal(routed.run(data), toco.run(data))
