"""Tests for quantize/recipes.py: re-quantizing a float .tflite with ai-edge-quantizer recipes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from quantdoctor.errors import ModelLoadError, UserInputError
from quantdoctor.quantize import recipes
from quantdoctor.quantize.converter import convert
from quantdoctor.quantize.recipes import RECIPES, quantize_tflite, recipe_for
from quantdoctor.quantize.schemes import SCHEMES
from tests.conftest import build_tiny_model, tiny_data
from tests.quantize.test_converter import LAYER_OPS, Tflite


@pytest.fixture(scope="module")
def data():
    return tiny_data(16)[0]


@pytest.fixture(scope="module")
def float_tflite():
    return convert(build_tiny_model(), None)


@pytest.fixture(scope="module")
def quantized(float_tflite, data):
    """Every scheme applied once to the float .tflite (ai-edge-quantizer takes well under a second each)."""
    return {name: quantize_tflite(float_tflite, name, lambda: [data]) for name in SCHEMES.names()}


def relative_error(float_tflite: bytes, quantized: bytes, x: np.ndarray) -> float:
    reference = Tflite(float_tflite).run(x)
    return float(np.linalg.norm(Tflite(quantized).run(x) - reference) / np.linalg.norm(reference))


def test_every_scheme_has_a_recipe():
    assert set(RECIPES) == set(SCHEMES.names())


def test_result_is_bytes_not_bytearray(quantized):
    assert all(type(model) is bytes for model in quantized.values())


@pytest.mark.parametrize(
    "scheme, limit",
    # Measured: float16 0.0003, dynamic 0.007, int16x8 0.007, int8 0.011.
    [("float16", 2e-3), ("dynamic", 0.03), ("int16x8", 0.03), ("int8", 0.05), ("int8-io", 0.05)],
)
def test_requantized_model_runs_and_agrees(float_tflite, quantized, data, scheme, limit):
    assert relative_error(float_tflite, quantized[scheme], data) < limit


def test_dynamic_gives_per_channel_int8_weights_and_skips_small_ones(quantized):
    weights = Tflite(quantized["dynamic"]).weights()
    big = [w for w in weights if np.prod(w["shape"]) >= 1024]
    assert len(big) >= 5
    assert all(w["dtype"] == np.int8 and len(w["quantization_parameters"]["scales"]) > 1 for w in big)
    assert all(w["dtype"] == np.float32 for w in weights if np.prod(w["shape"]) < 1024)


def test_dynamic_per_tensor_gives_one_scale_per_weight(quantized):
    int8 = [w for w in Tflite(quantized["dynamic-per-tensor"]).weights() if w["dtype"] == np.int8]
    assert len(int8) >= 5
    assert all(len(w["quantization_parameters"]["scales"]) == 1 for w in int8)


@pytest.mark.parametrize(
    "scheme, activations", [("int8", np.int8), ("int8-per-tensor", np.int8), ("int16x8", np.int16)]
)
def test_static_schemes_keep_float_io(quantized, scheme, activations):
    tflite = Tflite(quantized[scheme])
    assert tflite.input["dtype"] == np.float32 and tflite.output["dtype"] == np.float32
    assert all(t["dtype"] == activations for t in tflite.outputs_of(LAYER_OPS))


def test_int8_io_has_int8_input_and_output(quantized):
    tflite = Tflite(quantized["int8-io"])
    assert tflite.input["dtype"] == np.int8 and tflite.output["dtype"] == np.int8


def test_int8_per_tensor_weights_have_one_scale(quantized):
    weights = Tflite(quantized["int8-per-tensor"]).weights()
    assert weights and all(w["dtype"] == np.int8 and len(w["quantization_parameters"]["scales"]) == 1 for w in weights)


def test_float16_gives_float16_weights(quantized):
    weights = Tflite(quantized["float16"]).weights()
    assert weights and all(w["dtype"] == np.float16 for w in weights)


def test_recipe_json(quantized):
    dynamic = recipe_for("dynamic")
    assert json.loads(json.dumps(dynamic)) == dynamic
    assert dynamic[0]["op_config"]["min_weight_elements"] == 1024
    assert recipe_for("int8-per-tensor")[0]["op_config"]["weight_tensor_config"]["granularity"] == "TENSORWISE"
    assert recipe_for("int8")[0]["op_config"]["weight_tensor_config"]["granularity"] == "CHANNELWISE"
    io_rules = [(r["operation"], r["algorithm_key"]) for r in recipe_for("int8")[1:]]
    assert io_rules == [("INPUT", "no_quantize"), ("OUTPUT", "no_quantize")]
    assert len(recipe_for("int8-io")) == 1
    assert recipe_for("float16")[0]["algorithm_key"] == "float_casting"


def test_scheme_without_recipe_is_refused(monkeypatch, float_tflite):
    monkeypatch.delitem(RECIPES, "int8-io")
    with pytest.raises(UserInputError) as caught:
        recipes.quantize_tflite(float_tflite, "int8-io", lambda: [np.zeros((1, 24, 24, 3), np.float32)])
    assert str(caught.value) == (
        "scheme 'int8-io' cannot be applied to a .tflite float model; give the Keras/SavedModel model or --quantized"
    )


def test_static_scheme_without_calibration_is_refused(float_tflite):
    with pytest.raises(UserInputError, match="'int16x8' needs calibration data"):
        quantize_tflite(float_tflite, "int16x8")


def test_wrong_calibration_shape_is_refused(float_tflite):
    with pytest.raises(UserInputError, match=r"shape \(8, 8, 3\); the model input is \(24, 24, 3\)"):
        quantize_tflite(float_tflite, "int8", lambda: [np.zeros((1, 8, 8, 3), np.float32)])


def test_quantized_model_is_refused(quantized):
    with pytest.raises(UserInputError, match="already quantized"):
        quantize_tflite(quantized["dynamic"], "dynamic")


def test_broken_flatbuffer_is_refused():
    with pytest.raises(ModelLoadError, match="cannot load the .tflite model"):
        quantize_tflite(b"\x1c\x00\x00\x00TFL3" + bytes(64), "dynamic")
