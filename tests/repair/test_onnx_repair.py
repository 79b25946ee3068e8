"""repair() on ONNX models with ONNX Runtime's quantizer: the planted hidden unit ×100 (tests/onnx_models.py) repaired at
its ops, a healthy model unchanged after one evaluation, recipes replayed to the same bytes, what ORT cannot express."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from quantdoctor.cli.main import main  # noqa: E402
from quantdoctor.errors import UserInputError  # noqa: E402
from quantdoctor.repair import apply_recipe, repair  # noqa: E402
from quantdoctor.repair.actions import (  # noqa: E402
    Backend,
    CalibrationMethod,
    CalibrationRange,
    Int16Activations,
    KeepFloat,
    KernelWorkaround,
    PerChannel,
    WeightGranularity,
)
from tests.onnx_models import digits, mlp_onnx  # noqa: E402

SCHEME = "ort-qdq-int8-per-tensor"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx_repair")
    _, _, x, y = digits()
    np.savez(folder / "data.npz", x=x, y=y)
    (folder / "mlp.onnx").write_bytes(mlp_onnx())
    (folder / "planted.onnx").write_bytes(mlp_onnx(outlier=100.0))
    return folder


@pytest.fixture(scope="module")
def builder(files):
    from quantdoctor.backends.keras.loader import detect_source
    from quantdoctor.data import load_dataset, split_calibration
    from quantdoctor.repair.build import Builder

    ds = load_dataset(files / "data.npz", (1, 8, 8))
    calib_idx, eval_idx = split_calibration(len(ds), 64)
    b = Builder.prepare(detect_source(files / "planted.onnx"), SCHEME, ds.subset(calib_idx))
    return b, ds.subset(eval_idx)


def _agreement(builder, eval_ds, model: bytes) -> float:
    from quantdoctor.backends.onnx.runner import OnnxRunner

    x = np.concatenate([b for b, _ in eval_ds.batches(256)])
    return float(np.mean(OnnxRunner(model).run(x).argmax(1) == OnnxRunner(builder.float_model).run(x).argmax(1)))


def test_planted_hidden_unit_is_repaired_at_its_ops(files, tmp_path):
    out = tmp_path / "out"
    r = repair(files / "planted.onnx", files / "data.npz", scheme=SCHEME, max_drop=1.0, calib_count=64, out=out)
    assert r.backend == Backend.ORT.value
    assert r.baseline_metric < 0.8  # the planted unit costs a quarter of the decisions...
    assert r.budget_met and r.final_metric >= 0.99  # ...and the repair wins them back within one point
    touched = {op for a in r.actions for op in a.targets()}
    assert all(getattr(a, "op_type", None) is None for a in r.actions)
    # The planted fault lives in two ops: the hidden Gemm (unit ×100; ORT folds the Relu, so it writes hidden_relu)
    # and the logits Gemm whose row for that unit is ÷100 (per-tensor int8 rounds it to zero).
    assert "hidden_relu" in touched and touched <= {"hidden_relu", "logits"}
    model = (out / "repaired.onnx").read_bytes()
    assert model == r.model
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["backend"] == "onnxruntime" and recipe["scheme"] == SCHEME and recipe["ranges"]["hidden_relu"]
    assert apply_recipe(out / "recipe.json", files / "planted.onnx") == model
    again = tmp_path / "again.onnx"
    assert main(["apply", str(out / "recipe.json"), str(files / "planted.onnx"), "--out", str(again)]) == 0
    assert again.read_bytes() == model


def test_within_budget_comes_back_unchanged_as_ort_made_it(files, tmp_path):
    from quantdoctor.backends.keras.loader import detect_source
    from quantdoctor.data import load_dataset, split_calibration
    from quantdoctor.quantize.converter import calibration_from
    from quantdoctor.quantize.onnxrt import quantize_onnx

    r = repair(files / "mlp.onnx", files / "data.npz", scheme=SCHEME, max_drop=1.0, calib_count=64, out=tmp_path)
    assert r.budget_met and r.actions == () and r.changed_ops == 0
    assert r.evaluations == 1  # the baseline evaluation only: no search
    assert (tmp_path / "repaired.onnx").read_bytes() == r.model
    ds = load_dataset(files / "data.npz", (1, 8, 8))
    calib = ds.subset(split_calibration(len(ds), 64)[0])
    assert detect_source(files / "mlp.onnx").kind == "onnx"
    assert r.model == quantize_onnx(mlp_onnx(), SCHEME, calibration_from(calib))  # ORT's own model, byte for byte


def test_each_action_is_expressed_with_ort_and_replays_to_the_same_bytes(builder):
    from quantdoctor.repair.build_onnx import OrtBuilder, quantized_activations

    b, eval_ds = builder
    base = b.build([])
    assert quantized_activations(base) >= {"flat", "hidden_relu", "logits"}
    hidden = ("hidden_relu",)
    results = {}
    for actions in ([KeepFloat(ops=hidden)], [PerChannel(ops=hidden)], [Int16Activations(ops=hidden)],
                    [PerChannel(ops=hidden), Int16Activations(ops=hidden)],
                    [CalibrationRange(tensor="hidden_relu", method="percentile", percentile=99.0)],
                    [CalibrationMethod("percentile")]):
        model = b.build(actions)
        replay = OrtBuilder(SCHEME, b.float_model, b.final_ranges(actions))  # no data: the recipe's ranges
        assert replay.build(actions, ranges=b.final_ranges(actions)) == model
        results[tuple(a.describe() for a in actions)] = _agreement(b, eval_ds, model)
    baseline = _agreement(b, eval_ds, base)
    # Keeping the hidden Gemm float or giving it per-channel weights fixes most; 16-bit activations there add the rest.
    assert results[("keep hidden_relu in float",)] > baseline + 0.15
    assert results[("per-channel weights for hidden_relu",)] > baseline + 0.15
    both = results[("per-channel weights for hidden_relu", "int16 activations (16x8) for hidden_relu")]
    assert both > results[("per-channel weights for hidden_relu",)] and both >= 0.98
    clipped = [CalibrationRange(tensor="hidden_relu", method="percentile", percentile=99.0)]
    assert b.final_ranges(clipped)["hidden_relu"][1] < b.ranges["hidden_relu"][1] and b.build(clipped) != base


def test_what_ort_cannot_express_is_said(builder):
    b, _ = builder
    assert "LiteRT" in b.unsupported(KernelWorkaround(ops=("hidden_relu",)))
    assert "dynamic-range" in b.unsupported(WeightGranularity(ops=("hidden_relu",)))
    assert "no op writes" in b.unsupported(KeepFloat(ops=("nope",)))
    assert "16-bit already" in Int16Activations(ops=("x",)).unsupported(Backend.ORT, "ort-qdq-a16w8")
    assert "whole model" in PerChannel(ops=("x",)).unsupported(Backend.ORT, "ort-dynamic")
    assert "TFLite quantizers" in CalibrationMethod("entropy").unsupported(Backend.CONVERTER, "int8")
    with pytest.raises(UserInputError, match="cannot apply"):
        b.build([KernelWorkaround(ops=("hidden_relu",))])


def test_quantized_onnx_gives_its_scheme_and_tflite_schemes_are_refused(files, tmp_path):
    from quantdoctor.quantize.onnxrt import quantize_onnx

    x = digits()[0][:32]
    q = tmp_path / "q.onnx"
    q.write_bytes(quantize_onnx(mlp_onnx(), "ort-qdq-int8", lambda: (x[i:i + 8] for i in range(0, 32, 8))))
    r = repair(files / "mlp.onnx", files / "data.npz", quantized=q, max_drop=5.0)
    assert r.scheme == "ort-qdq-int8" and r.budget_met and r.model == q.read_bytes()
    with pytest.raises(UserInputError, match="quantizes TFLite models but the model is an ONNX model"):
        repair(files / "mlp.onnx", files / "data.npz", scheme="int8")
