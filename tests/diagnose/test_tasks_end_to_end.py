"""Models other than one-input classifiers, end to end on LiteRT and ONNX Runtime: a YOLO-style detector whose one
output concatenates pixel boxes with class scores (the planted mixed-ranges fault), a segmenter, a two-input model and
a three-headed model. The models are trained in session fixtures (`tests/task_models.py`) on scikit-learn's digits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from quantdoctor.diagnose.pipeline import diagnose
from tests.task_models import *  # noqa: F401,F403  (the session fixtures)

pytest.importorskip("sklearn")


def test_detector_score_collapse_is_found_first_verified_and_repaired(detector_files, tmp_path):
    """Boxes in a 640-px frame share the concat's int8 scale (2.4) with sigmoid scores: every score rounds to 0."""
    from quantdoctor.repair.api import repair

    model = detector_files.extra[0]  # detector_640.keras
    d = diagnose(model, detector_files.data, scheme="int8", task="detect", max_samples=96)
    assert d.model is None and d.task.task == "detect"
    assert d.task.value < 0.05  # detection F1 against the float detections
    assert d.task.metrics["quant_detections_per_sample"] < 0.05 < d.task.metrics["float_detections_per_sample"]
    groups = {g.name.split(" ")[0]: g for g in d.task.outputs[0].groups}
    assert groups["scores"].levels < 1.0 and groups["scores"].sqnr_db < 3.0  # crushed
    assert groups["box"].levels > 200  # the boxes keep the grid
    first = d.findings[0]
    assert first.mechanism == "mixed_ranges" and first.verified
    assert first.evidence["op_type"] == "CONCATENATION" and first.evidence["small_part"] == "scores"
    assert first.check.recovery > 0.9 and first.check.metric == "f1"

    fixed = repair(model, detector_files.data, scheme="int8", task="detect", metric="f1", max_drop=1.0,
                   max_samples=96, out=tmp_path / "fix")
    assert fixed.budget_met and fixed.final_metric >= 0.99 and fixed.baseline_metric < 0.05
    assert any(a.kind == "keep_float" for a in fixed.actions)
    recipe = json.loads((tmp_path / "fix" / "recipe.json").read_text())
    assert recipe["actions"]


def test_detector_on_its_own_grid_keeps_its_detections(detector_files):
    """The control: boxes in 0..64 px leave the scores 4 levels of the shared grid; F1 stays high, the finding (if
    any) is not critical."""
    d = diagnose(detector_files.keras, detector_files.data, scheme="int8", task="detect", max_samples=64,
                 verify=False)
    assert d.task.value > 0.85
    assert all(f.severity.value != "critical" for f in d.findings if f.mechanism == "mixed_ranges")


def test_detector_on_onnx_runtime_measures_detections(detector_files, tmp_path):
    data = tmp_path / "nchw.npz"
    with np.load(detector_files.data) as z:
        np.savez(data, x=z["x_nchw"])
    d = diagnose(detector_files.onnx, data, scheme="ort-qdq-int8", task="detect", max_samples=48, explain=False)
    assert d.task.task == "detect" and 0.0 <= d.task.value <= 1.0
    assert d.task.metrics["float_detections_per_sample"] > 0.5


def test_segmenter_is_judged_by_masks(segmenter_files):
    d = diagnose(segmenter_files.keras, segmenter_files.data, scheme="int8", max_samples=48, explain=False)
    assert d.task.task == "segment" and d.model is None
    assert 0.5 < d.task.metrics["pixel_agreement"] <= 1.0
    assert 0.0 < d.task.metrics["miou"] <= 1.0
    assert "miou_labels" in d.task.metrics and d.task.float_values["miou_labels"] > 0.3  # labels y are masks
    example = d.task.details["example"]
    assert np.asarray(example["float_mask"]).shape == np.asarray(example["quant_mask"]).shape


def test_two_input_model_runs_on_litert(two_input_files):
    d = diagnose(two_input_files.keras, two_input_files.data, scheme="int8", max_samples=64, explain=False)
    assert d.task.task == "classify" and d.model is not None and d.model.num_samples == 64
    assert d.model.top1_agreement > 0.5
    inputs = {l.float_tensor for l in d.layers if l.op_type == "INPUT"}
    assert len(d.layers) > 3 and len(inputs) <= 2


def test_two_input_model_runs_on_onnx_runtime(two_input_files):
    d = diagnose(two_input_files.onnx, two_input_files.onnx_data, scheme="ort-qdq-int8", max_samples=64)
    assert d.task.task == "classify" and d.model.num_samples == 64
    assert d.verification is not None


def test_two_input_data_needs_one_array_per_input(two_input_files, tmp_path):
    from quantdoctor.errors import DataError

    bad = tmp_path / "one.npz"
    with np.load(two_input_files.data) as z:
        np.savez(bad, image=z["image"])
    with pytest.raises(DataError, match="no array for input 'features'"):
        diagnose(two_input_files.keras, bad, scheme="int8")


@pytest.mark.parametrize("runtime", ["tflite", "onnx"])
def test_every_output_of_a_three_headed_model_is_measured(multi_head_files, runtime):
    model = multi_head_files.keras if runtime == "tflite" else multi_head_files.onnx
    data = multi_head_files.data if runtime == "tflite" else multi_head_files.onnx_data
    scheme = "int8" if runtime == "tflite" else "ort-qdq-int8"
    d = diagnose(model, data, scheme=scheme, max_samples=48, explain=False)
    assert d.task.task == "classify" and len(d.task.outputs) == 3
    shapes = sorted(o.shape for o in d.task.outputs)
    assert shapes == [(4,), (10,), (10,)]
    assert all(np.isfinite(o.sqnr_db) for o in d.task.outputs)


def test_a_user_metric_judges_the_outputs_through_the_api(segmenter_files):
    from quantdoctor.tasks.base import TaskOptions

    def foreground_agreement(float_outputs, quant_outputs):
        f, q = np.argmax(float_outputs[0], -1), np.argmax(quant_outputs[0], -1)
        fg = f > 0
        return {"foreground_agreement": float((f[fg] == q[fg]).mean()) if fg.any() else 1.0}

    d = diagnose(segmenter_files.keras, segmenter_files.data, scheme="int8", max_samples=32, explain=False,
                 task="custom", task_options=TaskOptions(metric=foreground_agreement))
    assert d.task.task == "custom" and d.task.headline == "foreground_agreement"
    assert 0.0 < d.task.value <= 1.0 and d.task.num_samples == 32
