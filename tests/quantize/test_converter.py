"""Tests for quantize/converter.py: every scheme converts the tiny model and gives a .tflite with the right types."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from quantdoctor.backends.keras.loader import detect_source
from quantdoctor.errors import DataError, UnknownNameError, UserInputError
from quantdoctor.quantize.converter import (
    ConversionError,
    condense_converter_message,
    convert,
    representative_dataset,
)
from quantdoctor.quantize.schemes import SCHEMES
from tests.conftest import build_tiny_model, tiny_data

WEIGHTED_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"}
# Ops of the tiny model whose outputs must keep the names of the Keras layers they come from.
LAYER_OPS = {"CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "CONCATENATION", "MEAN"}


class Tflite:
    """What a test needs to know about a .tflite, read without allocate_tensors().

    XNNPACK's prepare step (run by allocate_tensors) rewrites per-tensor weight scales of dynamic-range models into
    per-channel ones in place, so quantization parameters are read before it.
    """

    def __init__(self, model: bytes) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.bytes = model
        interpreter = Interpreter(model_content=model)
        self.tensors = {d["index"]: d for d in interpreter.get_tensor_details()}
        self.ops = [op for op in interpreter._get_ops_details() if op["op_name"] != "DELEGATE"]
        self.input = interpreter.get_input_details()[0]
        self.output = interpreter.get_output_details()[0]
        self._producer = {t: op for op in self.ops for t in op["outputs"]}

    def weights(self) -> list[dict]:
        """The weight tensor of each conv/dense op, as stored (before any DEQUANTIZE)."""
        found = []
        for op in self.ops:
            if op["op_name"] in WEIGHTED_OPS:
                index = op["inputs"][1]
                producer = self._producer.get(index)
                if producer is not None and producer["op_name"] == "DEQUANTIZE":
                    index = producer["inputs"][0]
                found.append(self.tensors[index])
        return found

    def outputs_of(self, op_names: set[str]) -> list[dict]:
        return [self.tensors[op["outputs"][0]] for op in self.ops if op["op_name"] in op_names]

    def run(self, x: np.ndarray) -> np.ndarray:
        """Outputs for a float batch, one sample at a time, (de)quantizing int8 I/O."""
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_content=self.bytes)
        interpreter.allocate_tensors()
        outputs = []
        for sample in x:
            feed = sample[None]
            if self.input["dtype"] != np.float32:
                scale, zero = self.input["quantization"]
                feed = np.clip(np.round(feed / scale + zero), -128, 127).astype(self.input["dtype"])
            interpreter.set_tensor(self.input["index"], feed)
            interpreter.invoke()
            y = interpreter.get_tensor(self.output["index"]).astype(np.float32)
            if self.output["dtype"] != np.float32:
                scale, zero = self.output["quantization"]
                y = (y - zero) * scale
            outputs.append(y)
        return np.concatenate(outputs)


@pytest.fixture(scope="module")
def model():
    return build_tiny_model()


@pytest.fixture(scope="module")
def data():
    return tiny_data(16)[0]


@pytest.fixture(scope="module")
def calibration(data):
    return lambda: [data[:8], data[8:]]


@pytest.fixture(scope="module")
def converted(model, calibration):
    """Every scheme (and None = float) converted once for the whole module: ~2 s each."""
    return {scheme: Tflite(convert(model, scheme, calibration)) for scheme in [None, *SCHEMES.names()]}


def relative_error(model, tflite: Tflite, x: np.ndarray) -> float:
    reference = model.predict(x, verbose=0)
    return float(np.linalg.norm(tflite.run(x) - reference) / np.linalg.norm(reference))


def test_every_scheme_converts(converted):
    assert set(converted) == {None, *SCHEMES.names()}
    assert all(t.bytes[4:8] == b"TFL3" for t in converted.values())


@pytest.mark.parametrize(
    "scheme, limit",
    # Measured: float 0.0000, float16 0.0003, dynamic 0.0070, int16x8 0.0068, int8* 0.011.
    [(None, 1e-5), ("float16", 2e-3), ("dynamic", 0.03), ("int16x8", 0.03), ("int8", 0.05), ("int8-io", 0.05),
     ("int8-per-tensor", 0.05)],
)
def test_converted_model_agrees_with_keras(model, converted, data, scheme, limit):
    assert relative_error(model, converted[scheme], data) < limit


def test_dynamic_per_tensor_breaks_the_tiny_model(model, converted, data):
    # The demo case in miniature. Measured: the output error is large and changes from run to run (0.28 to 3.4, inf
    # on a model that is a single depthwise conv), because LiteRT's hybrid DEPTHWISE_CONV_2D kernel reads one scale
    # per channel past the single per-tensor scale. Per-tensor conv and dense weights are fine (0.006).
    # Seen from 0.28 to inf over CI runs, and once (a full run, 2026-11-30) 0.026 against the per-channel model's 0.007:
    # the kernel reads whatever memory follows the scale. Assert it against the per-channel model's error, with room.
    error = relative_error(model, converted["dynamic-per-tensor"], data)
    per_channel = relative_error(model, converted["dynamic"], data)
    assert not error < 2 * per_channel  # also true for nan/inf


def test_float_has_no_integer_tensors(converted):
    dtypes = {np.dtype(d["dtype"]) for d in converted[None].tensors.values()}
    assert np.dtype(np.int8) not in dtypes and np.dtype(np.float16) not in dtypes


def test_dynamic_has_per_channel_int8_weights_and_skips_small_ones(converted):
    weights = converted["dynamic"].weights()
    int8 = [w for w in weights if w["dtype"] == np.int8]
    assert len(int8) >= 5
    assert all(len(w["quantization_parameters"]["scales"]) > 1 for w in int8)
    # The converter leaves weight tensors under 1024 elements in float: here the 64x12 logits kernel.
    small = [w for w in weights if np.prod(w["shape"]) < 1024]
    assert small and all(w["dtype"] == np.float32 for w in small)
    assert converted["dynamic"].input["dtype"] == np.float32


def test_dynamic_per_tensor_has_one_scale_per_weight(converted):
    int8 = [w for w in converted["dynamic-per-tensor"].weights() if w["dtype"] == np.int8]
    assert len(int8) >= 5
    assert all(len(w["quantization_parameters"]["scales"]) == 1 for w in int8)


@pytest.mark.parametrize("scheme", ["int8", "int8-per-tensor"])
def test_int8_has_int8_activations_and_float_io(converted, scheme):
    tflite = converted[scheme]
    assert tflite.input["dtype"] == np.float32 and tflite.output["dtype"] == np.float32
    assert all(t["dtype"] == np.int8 for t in tflite.outputs_of(LAYER_OPS))
    assert all(w["dtype"] == np.int8 for w in tflite.weights())


def test_int8_per_tensor_differs_from_int8_only_in_weight_scales(converted):
    per_channel = [len(w["quantization_parameters"]["scales"]) for w in converted["int8"].weights()]
    per_tensor = [len(w["quantization_parameters"]["scales"]) for w in converted["int8-per-tensor"].weights()]
    assert min(per_channel) > 1
    assert per_tensor == [1] * len(per_channel)


def test_int8_io_has_int8_input_and_output(converted):
    tflite = converted["int8-io"]
    assert tflite.input["dtype"] == np.int8 and tflite.output["dtype"] == np.int8
    assert "QUANTIZE" not in {op["op_name"] for op in tflite.ops}


def test_int16x8_has_int16_activations_and_int8_weights(converted):
    tflite = converted["int16x8"]
    assert all(t["dtype"] == np.int16 for t in tflite.outputs_of(LAYER_OPS))
    assert all(w["dtype"] == np.int8 for w in tflite.weights())


def test_float16_stores_float16_weights(converted):
    weights = converted["float16"].weights()
    assert weights and all(w["dtype"] == np.float16 for w in weights)
    assert all(t["dtype"] == np.float32 for t in converted["float16"].outputs_of(LAYER_OPS))


@pytest.mark.parametrize("scheme", ["dynamic", "dynamic-per-tensor", "int8", "int8-io", "int16x8", "float16"])
def test_quantized_tensor_names_equal_the_float_ones(converted, scheme):
    # Matching float and quantized tensors by name relies on this. Under float16 the extra dequantized weight tensors
    # shift the exporter's de-duplication counter at the end of some names ("batchnorm/sub1" -> "batchnorm/sub2").
    def names(t):
        found = [d["name"] for d in t.outputs_of(LAYER_OPS)]
        return [re.sub(r"\d+$", "", n) for n in found] if scheme == "float16" else found

    assert len(names(converted[None])) == 9
    assert names(converted[scheme]) == names(converted[None])


def test_tensor_names_carry_keras_layer_names(converted):
    names = [(op["op_name"], converted[None].tensors[op["outputs"][0]]["name"]) for op in converted[None].ops]
    assert ("ADD", "tiny_1/b1_add_1/Add") in names
    assert ("CONCATENATION", "tiny_1/d1_concat_1/concat") in names
    # Fused ops join the names of every source op with ";": conv + folded BN + ReLU6 here.
    dw = next(name for op, name in names if op == "DEPTHWISE_CONV_2D")
    assert dw.startswith("tiny_1/b1_dw_relu_1/Relu6;") and "tiny_1/b1_dw_1/depthwise" in dw.split(";")


def test_saved_model_source_keeps_the_names(model, converted, tmp_path):
    saved_model = tmp_path / "saved"
    model.export(saved_model, verbose=False)
    tflite = Tflite(convert(detect_source(saved_model), "dynamic"))
    assert [d["name"] for d in tflite.outputs_of(LAYER_OPS)] == [
        d["name"] for d in converted["dynamic"].outputs_of(LAYER_OPS)
    ]
    assert sum(w["dtype"] == np.int8 for w in tflite.weights()) >= 5


def test_keras_file_source_converts_silently(model, calibration, converted, tmp_path, capfd):
    path = tmp_path / "tiny.keras"
    model.save(path)
    capfd.readouterr()
    tflite = Tflite(convert(detect_source(path), "int8", calibration))
    out, err = capfd.readouterr()
    assert out == ""
    assert "fully_quantize" not in err and "Saved artifact" not in err and "Statistics for quantized" not in err
    assert [d["name"] for d in tflite.outputs_of(LAYER_OPS)] == [
        d["name"] for d in converted["int8"].outputs_of(LAYER_OPS)
    ]


def test_tflite_source_is_returned_or_requantized(converted, tmp_path):
    path = tmp_path / "float.tflite"
    path.write_bytes(converted[None].bytes)
    source = detect_source(path)
    assert convert(source, None) == converted[None].bytes
    requantized = Tflite(convert(source, "dynamic"))
    assert any(w["dtype"] == np.int8 for w in requantized.weights())


def test_calibrated_scheme_without_data_is_refused_before_converting(model):
    with pytest.raises(UserInputError, match="'int8' needs calibration data"):
        convert(model, "int8")


def test_unknown_scheme(model):
    with pytest.raises(UnknownNameError, match="dynamic-per-tensor"):
        convert(model, "int4")


def test_empty_calibration_is_refused():
    samples = representative_dataset(lambda: [])()
    with pytest.raises(UserInputError, match="calibration data is empty"):
        next(samples)


def test_representative_dataset_yields_single_float32_samples():
    batches = [np.ones((3, 2, 2, 1), np.float64), [np.zeros((2, 2, 2, 1)), np.ones((2, 4))]]
    samples = list(representative_dataset(lambda: batches)())
    assert [len(s) for s in samples] == [1, 1, 1, 2, 2]
    assert all(a.shape[0] == 1 and a.dtype == np.float32 for s in samples for a in s)


def test_calibration_of_the_wrong_shape_is_refused(model):
    with pytest.raises(DataError, match=r"shape \(8, 8, 3\); the model input is \(24, 24, 3\)"):
        convert(model, "int16x8", lambda: [np.zeros((2, 8, 8, 3), np.float32)])


def test_open_input_size_is_refused():
    import keras

    inputs = keras.Input((None, None, 3))
    open_model = keras.Model(inputs, keras.layers.Conv2D(4, 3)(inputs))
    with pytest.raises(UserInputError, match="fixed input size"):
        convert(open_model, None)


def test_converter_failure_is_one_line():
    import keras
    import tensorflow as tf

    inputs = keras.Input((8,))
    # tf.math.igamma has no TFLite kernel, so the converter refuses it.
    outputs = keras.layers.Lambda(lambda t: tf.math.igamma(t, t))(keras.layers.Dense(4)(inputs))
    with pytest.raises(ConversionError) as caught:
        convert(keras.Model(inputs, outputs), None)
    message = str(caught.value)
    assert message.startswith("TFLite conversion (float) failed:")
    assert "'tf.Igamma' op is neither a custom op nor a flex op" in message and "Custom ops: Igamma" in message
    assert "\n" not in message
    assert "func.func" in caught.value.details  # the full MLIR dump stays available


def test_importing_the_modules_loads_no_tensorflow():
    code = (
        "import sys, quantdoctor.quantize.converter, quantdoctor.quantize.recipes, quantdoctor.backends.keras.loader; "
        "print(sorted(m for m in ('tensorflow', 'keras', 'ai_edge_quantizer', 'ai_edge_litert') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_condense_converter_message_keeps_the_reasons():
    text = (
        "Could not translate MLIR to FlatBuffer.<unknown>:0: error: loc(callsite(fused[\"Erf:\", \"m/Erf@f\"] at "
        "fused[\"x\", \"y\"])): 'tf.Erf' op is neither a custom op nor a flex op\n"
        "<unknown>:0: note: loc(fused[\"x\", \"y\"]): called from\n"
        "<unknown>:0: error: failed while converting: 'main': \n"
        "Some ops are not supported by the native TFLite runtime\n"
        "TF Select ops: Erf\n"
        "Details:\n\ttf.Erf(tensor<?x4xf32>) -> (tensor<?x4xf32>)\n"
    )
    assert condense_converter_message(text) == "'tf.Erf' op is neither a custom op nor a flex op; TF Select ops: Erf"
    assert condense_converter_message("plain\nmessage") == "plain message"

