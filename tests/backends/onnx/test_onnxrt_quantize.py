"""The ONNX Runtime quantizer adapter (quantize/onnxrt.py): schemes, calibration methods, overrides, exclusions, errors.

(Lives next to the ONNX backend tests for now; its place in the mirrored tree is tests/quantize/.)
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from quantdoctor.backends.onnx.graph import graph_from_onnx, tensor_ids
from quantdoctor.backends.onnx.runner import OnnxRunner
from quantdoctor.errors import ModelLoadError, QuantDoctorError, UnknownNameError, UserInputError
from quantdoctor.quantize.onnxrt import ORT_SCHEMES, OrtScheme, quantize_onnx
from tests.backends.onnx.models import calibration_batches, float_model, quantized, sample_input


def input_quant(model: bytes):
    g = graph_from_onnx(model)
    return g.tensors[tensor_ids(g)["image_QuantizeLinear_Output"]].quant


def test_schemes_round_trip_through_json():
    assert {"ort-qdq-int8", "ort-qdq-int8-per-tensor", "ort-qdq-uint8", "ort-qdq-a16w8", "ort-dynamic"} <= set(
        ORT_SCHEMES.names())
    for name, scheme in ORT_SCHEMES.items():
        assert OrtScheme.from_dict(json.loads(json.dumps(scheme.to_dict()))) == scheme
        assert scheme.needs_calibration == (scheme.mode == "static")


def test_every_static_scheme_stays_close_to_float_and_16_bit_activations_are_closer():
    x = sample_input(8)
    ref = OnnxRunner(float_model("branchy")).run(x)

    def err(scheme):
        return float(np.sqrt(np.mean((OnnxRunner(quantized("branchy", scheme)).run(x) - ref) ** 2)))

    errors = {s: err(s) for s in ("ort-qdq-int8", "ort-qdq-uint8", "ort-qdq-a16w8", "ort-dynamic")}
    assert all(1e-4 < e < 0.1 for e in errors.values()), errors
    assert errors["ort-qdq-a16w8"] < errors["ort-qdq-int8"]


def test_percentile_calibration_ignores_an_outlier_minmax_keeps():
    batches = calibration_batches()
    batches[0] = batches[0].copy()
    batches[0][0, 0, 0, 0] = 60.0  # one wild pixel
    minmax = quantize_onnx(float_model("branchy"), "ort-qdq-int8", lambda: iter(batches))
    pct = quantize_onnx(float_model("branchy"), "ort-qdq-int8", lambda: iter(batches), calib_method="percentile",
                        extra_options={"CalibPercentile": 99.9})
    assert input_quant(minmax).scales[0] * 255 > 60  # the grid spans the outlier
    assert input_quant(pct).scales[0] < input_quant(minmax).scales[0] / 4


def test_tensor_overrides_and_excluded_nodes():
    model = quantize_onnx(float_model("branchy"), "ort-qdq-int8", lambda: iter(calibration_batches()),
                          nodes_to_exclude=["branch"], tensor_overrides={"image": [{"rmin": -4.0, "rmax": 4.0}]})
    q = input_quant(model)
    assert q.scales[0] == pytest.approx(8.0 / 255, rel=1e-6)
    g = graph_from_onnx(model)
    ids = tensor_ids(g)
    branch = g.op(g.tensors[ids["branch"]].producer)
    assert g.tensors[branch.inputs[1]].name == "w3" and g.tensors[branch.inputs[1]].dtype == "float32"
    assert "w1_quantized" in ids


def test_dynamic_scheme_needs_no_calibration():
    model = quantize_onnx(float_model("chain"), "ort-dynamic", None)
    types = [op.type for op in graph_from_onnx(model).ops]
    assert "ConvInteger" in types and "QuantizeLinear" not in types


def test_errors_are_named_and_one_line():
    with pytest.raises(UnknownNameError, match="ort-qdq-int8"):
        quantize_onnx(float_model("chain"), "int9", None)
    with pytest.raises(UnknownNameError, match="minmax"):
        quantize_onnx(float_model("chain"), "ort-qdq-int8", lambda: iter(calibration_batches()), calib_method="kl")
    with pytest.raises(UserInputError, match="give calibration data"):
        quantize_onnx(float_model("chain"), "ort-qdq-int8", None)
    with pytest.raises(ModelLoadError):
        quantize_onnx(b"not a model", "ort-dynamic", None)
    wrong = [np.zeros((2, 5, 10, 10), np.float32)]  # 5 channels where the model takes 3
    with pytest.raises(QuantDoctorError, match="^ONNX Runtime could not quantize the model with ort-qdq-int8") as info:
        quantize_onnx(float_model("branchy"), "ort-qdq-int8", lambda: iter(wrong))
    assert "\n" not in str(info.value)
