"""End-to-end diagnose on tiny models: every scheme, coverage, a planted fault found at the right layer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantdoctor import diagnose
from quantdoctor.quantize.schemes import SCHEMES

WEIGHTED = {"stem_conv", "b1_expand", "b1_dw", "b1_project", "d1_conv", "fc", "logits"}


@pytest.fixture(scope="module")
def by_scheme(tiny_model_path, tiny_npz):
    return {s: diagnose(tiny_model_path, tiny_npz, scheme=s, calib_count=16) for s in SCHEMES.names()}


@pytest.mark.parametrize("scheme", SCHEMES.names())
def test_every_scheme_covers_every_conv_and_dense_layer(by_scheme, scheme):
    d = by_scheme[scheme]
    assert d.coverage.weighted_layers == len(WEIGHTED)
    assert d.coverage.weighted_ratio == 1.0
    labelled = {name for layer in d.layers for name in layer.keras_layers}
    assert WEIGHTED <= labelled
    assert not [u for u in d.unmatched if u.side == "float"]


@pytest.mark.parametrize("scheme", SCHEMES.names())
def test_calibration_split_is_reported_and_disjoint(by_scheme, scheme):
    d = by_scheme[scheme]
    if SCHEMES.get(scheme).needs_calibration:
        assert d.run.num_eval_samples == 40 - 16
        assert d.run.calibration.startswith("16 samples of --data")
    else:
        assert d.run.num_eval_samples == 40
        assert d.run.calibration.startswith("none needed")


def test_bn_folding_and_fused_activation_map_to_keras_layers(by_scheme):
    labels = {layer.label: layer for layer in by_scheme["int8"].layers}
    assert labels["stem_relu"].keras_layers == ("stem_conv", "stem_bn", "stem_relu")
    assert labels["b1_project_bn"].keras_layers == ("b1_project", "b1_project_bn")
    assert labels["logits"].op_type == "FULLY_CONNECTED"


def test_float16_is_near_lossless_and_dynamic_per_tensor_is_worse_than_per_channel(by_scheme):
    logits = {s: by_scheme[s].model.logit_sqnr_db for s in by_scheme}
    assert logits["float16"] > 50
    assert logits["dynamic"] > logits["dynamic-per-tensor"]
    assert by_scheme["float16"].model.top1_agreement == 1.0


def test_quant_params_and_weight_storage_are_reported(by_scheme):
    int8 = {layer.label: layer for layer in by_scheme["int8"].layers}
    conv = int8["b1_expand_relu"]
    assert conv.quant is not None and conv.quant.dtype == "int8" and conv.quant.granularity == "per-tensor"
    assert conv.weights.storage == "int8" and conv.weights.kernel == "integer"
    assert conv.weights.quant.granularity == "per-channel"
    assert conv.rmse_over_scale is not None and 0 < conv.rmse_over_scale < 5
    per_tensor = {layer.label: layer for layer in by_scheme["dynamic-per-tensor"].layers}
    w = per_tensor["b1_expand_relu"].weights
    assert w.kernel == "hybrid (dynamic range)" and w.quant.granularity == "per-tensor"
    assert per_tensor["b1_expand_relu"].quant is None  # activations stay float under dynamic range
    io = by_scheme["int8-io"].layers[0]
    assert io.op_type == "INPUT" and io.quant.dtype == "int8" and math.isfinite(io.accumulated.sqnr_db)


def test_streaming_result_does_not_depend_on_batch_size(tiny_model_path, tiny_npz):
    a = diagnose(tiny_model_path, tiny_npz, scheme="dynamic", batch_size=7)
    b = diagnose(tiny_model_path, tiny_npz, scheme="dynamic", batch_size=40)
    for la, lb in zip(a.layers, b.layers):
        assert la.float_tensor == lb.float_tensor
        assert la.accumulated.sqnr_db == pytest.approx(lb.accumulated.sqnr_db, rel=1e-4, abs=1e-6)
    assert a.model.top1_agreement == b.model.top1_agreement


def _corrupt_weights(tflite: bytes, layer: str) -> bytes:
    """Return a copy of `tflite` in which the int8 weights of one layer are replaced by a scrambled permutation."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_content=tflite)
    interp.allocate_tensors()
    weights = {int(op["inputs"][1]) for op in interp._get_ops_details() if op["op_name"] == "CONV_2D"}
    hits = [
        d for d in interp.get_tensor_details()
        if d["index"] in weights and layer in d["name"] and np.dtype(d["dtype"]) == np.int8
    ]
    assert len(hits) == 1, [h["name"] for h in hits]
    original = interp.get_tensor(hits[0]["index"]).tobytes()
    assert tflite.count(original) == 1
    rng = np.random.default_rng(0)
    scrambled = rng.permutation(np.frombuffer(original, dtype=np.int8)).tobytes()
    return tflite.replace(original, scrambled)


def test_planted_weight_corruption_is_found_at_the_right_layer(tiny_model_path, tiny_npz, tmp_path):
    from quantdoctor.backends.keras.loader import load_keras_model
    from quantdoctor.quantize.converter import convert

    model = load_keras_model(tiny_model_path)
    x = np.load(tiny_npz)["x"]

    def calibration():
        for i in range(16):
            yield x[i : i + 1]

    clean = convert(model, "int8", calibration)
    bad = tmp_path / "corrupted.tflite"
    bad.write_bytes(_corrupt_weights(clean, "b1_expand"))
    healthy = diagnose(tiny_model_path, tiny_npz, quantized=_write(tmp_path / "clean.tflite", clean))
    sick = diagnose(tiny_model_path, tiny_npz, quantized=bad)
    assert sick.worst_layers(1)[0].label == "b1_expand_relu"
    assert sick.onset is not None and sick.onset.label == "b1_expand_relu"
    assert healthy.onset is None
    # Layers before the planted fault are untouched by it.
    before = {l.label: l.accumulated.sqnr_db for l in healthy.layers if l.position < sick.onset.position}
    for layer in sick.layers:
        if layer.label in before:
            assert layer.accumulated.sqnr_db == pytest.approx(before[layer.label])


def _write(path, data: bytes):
    path.write_bytes(data)
    return path
