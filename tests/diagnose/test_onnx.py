"""diagnose on ONNX models quantized with ONNX Runtime's quantizer: the same pipeline, findings and verification as on
TFLite. The model is a perceptron trained on real digits (tests/onnx_models.py); the planted fault scales one hidden
unit ×100 and divides it back in the logits layer (the float model computes the same function)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from quantdoctor import diagnose  # noqa: E402
from quantdoctor.cli.main import main  # noqa: E402
from quantdoctor.errors import UserInputError  # noqa: E402
from tests.onnx_models import digits, mlp_onnx  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    _, _, x, y = digits()
    np.savez(folder / "data.npz", x=x, y=y)
    (folder / "mlp.onnx").write_bytes(mlp_onnx())
    (folder / "planted.onnx").write_bytes(mlp_onnx(outlier=100.0))
    return folder


def test_planted_hidden_unit_is_located_and_verified_on_onnx(files):
    d = diagnose(files / "planted.onnx", files / "data.npz", scheme="ort-qdq-int8-per-tensor", calib_count=64)
    assert d.run.float_kind == "onnx"
    assert d.model.top1_agreement < 0.9
    top = d.findings[0]
    assert top.verified and top.role == "cause" and "hidden_relu" in top.layers
    assert top.check.recovery >= 0.8
    v = d.verification
    assert v.all_exact.top1_agreement == 1.0  # every op computed by its float twin: the float model's decisions
    assert "hidden_relu" in v.cause_labels
    layer = next(l for l in d.layers if l.label == "hidden_relu")
    assert layer.op_type == "Gemm" and layer.isolated is not None  # ORT folded the Relu into the Gemm's output grid


def test_healthy_onnx_model_pairs_every_gemm_and_has_no_cause(files):
    d = diagnose(files / "mlp.onnx", files / "data.npz", scheme="ort-qdq-int8", calib_count=64)
    assert d.model.top1_agreement >= 0.97
    assert d.verification.causes == () and not any(f.verified for f in d.findings)
    gemms = [l for l in d.layers if l.op_type == "Gemm"]
    assert len(gemms) == 2 and all(l.match.value == "exact_id" for l in gemms)
    assert not any(f.mechanism == "float_ops" for f in d.findings)  # QDQ ops are float by form, not left behind


def test_a_quantized_onnx_made_elsewhere_gives_the_same_numbers(files):
    from quantdoctor.quantize.onnxrt import quantize_onnx

    x = digits()[2][:64]
    q = quantize_onnx((files / "planted.onnx").read_bytes(), "ort-qdq-int8-per-tensor", lambda: (x[i:i + 1] for i in range(64)))
    (files / "q.onnx").write_bytes(q)
    np.savez(files / "eval.npz", x=digits()[2][64:], y=digits()[3][64:])
    given = diagnose(files / "planted.onnx", files / "eval.npz", quantized=files / "q.onnx")
    made = diagnose(files / "planted.onnx", files / "eval.npz", scheme="ort-qdq-int8-per-tensor",
                    calib=files / "data.npz", calib_count=64)
    assert given.model.num_samples == made.model.num_samples
    assert given.findings[0].verified and given.findings[0].layers == made.findings[0].layers


def test_a_tflite_scheme_on_an_onnx_model_is_refused_before_any_work(files):
    with pytest.raises(UserInputError, match="scheme 'int8' quantizes TFLite models but the model is an ONNX model"):
        diagnose(files / "mlp.onnx", files / "data.npz", scheme="int8")
    with pytest.raises(UserInputError, match="unknown scheme 'ort-nope'"):
        diagnose(files / "mlp.onnx", files / "data.npz", scheme="ort-nope")


def test_cli_writes_a_valid_report_for_an_onnx_model(files, tmp_path, capsys):
    import jsonschema

    from tests.report.test_schema import SCHEMA

    out = tmp_path / "report"
    code = main(["diagnose", str(files / "planted.onnx"), "--data", str(files / "data.npz"), "--scheme",
                 "ort-qdq-int8-per-tensor", "--calib-count", "64", "--out", str(out), "--no-progress"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    jsonschema.validate(report, json.loads(SCHEMA.read_text()))
    assert report["run"]["float_kind"] == "onnx" and report["findings"][0]["verified"] is True
    assert (out / "report.html").stat().st_size > 10_000


def test_compare_across_runtimes_aligns_the_same_network_by_position(files, tmp_path):
    """The perceptron as a Keras model under LiteRT int8 and as ONNX under ONNX Runtime: one network, two deployments."""
    import keras

    from quantdoctor import compare
    from tests.onnx_models import trained_mlp

    w1, b1, w2, b2 = trained_mlp()
    keras.utils.set_random_seed(0)
    inp = keras.Input((1, 8, 8), name="image")
    h = keras.layers.Dense(w1.shape[1], activation="relu", name="hidden")(keras.layers.Flatten(name="flat")(inp))
    out = keras.layers.Dense(10, name="logits")(h)
    model = keras.Model(inp, out)
    model.get_layer("hidden").set_weights([w1, b1])
    model.get_layer("logits").set_weights([w2, b2])
    model.save(tmp_path / "mlp.keras")
    c = compare(tmp_path / "mlp.keras", files / "mlp.onnx", files / "data.npz", scheme="int8",
                scheme_b="ort-qdq-int8", calib_count=64)
    assert c.a.run.float_kind == "keras" and c.b.run.float_kind == "onnx"
    kinds = [(p.op_type, p.label_b) for p in c.layers]
    assert kinds[-2:] == [("FULLY_CONNECTED/Gemm", "hidden_relu"), ("FULLY_CONNECTED/Gemm", "logits")]
    assert all(p.method.value in ("label", "position") for p in c.layers)


def test_a_fused_kernel_that_drifts_from_the_reference_is_a_kernel_defect(files, tmp_path, monkeypatch):
    """Isolated = ORT's fused integer kernel, expected = onnx.reference on the same integers: on the real kernels they
    agree (the healthy test above has no kernel_defect); a kernel made to drift by 5 output steps must be flagged."""
    from quantdoctor.backends.onnx import reference
    from quantdoctor.report.write import write_outputs

    original = reference.OptimizedOpRunner._evaluate

    def drifted(self, op, arrays):
        out = original(self, op, arrays)
        if self.graph.op(op).type != "Gemm":
            return out
        step = np.float32(self.neighbourhood(op).out_quant.scales[0])
        return [o + 5 * step if o.dtype.kind == "f" else o + 5 for o in out]

    monkeypatch.setattr(reference.OptimizedOpRunner, "_evaluate", drifted)
    d = diagnose(files / "mlp.onnx", files / "data.npz", scheme="ort-qdq-int8", calib_count=64)
    defects = [f for f in d.findings if f.mechanism == "kernel_defect"]
    assert defects and set(defects[0].op_types) == {"Gemm"}
    layer = next(l for l in d.layers if l.label == "hidden_relu")
    assert layer.excess_db >= 10 and layer.expected.sqnr_db >= 30
    written = write_outputs(d, tmp_path / "report")
    repro = next(v for k, v in written.items() if k.startswith("repro:"))
    assert (repro / "cut.onnx").is_file() and (repro / "README.txt").is_file()
