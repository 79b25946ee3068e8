"""repair() on tiny models: unchanged when within budget, a planted fault fixed at its layer, exit code 3, apply."""

from __future__ import annotations

import json

import pytest

from quantdoctor.cli.main import main
from quantdoctor.repair import apply_recipe, repair
from quantdoctor.repair.actions import short_name


def test_within_budget_comes_back_unchanged(centred_model_path, tiny_npz, tmp_path):
    r = repair(centred_model_path, tiny_npz, scheme="int8", max_drop=100.0, calib_count=10, out=tmp_path)
    assert r.budget_met and r.actions == () and r.changed_ops == 0
    assert r.evaluations == 1  # the baseline evaluation only: no search
    assert (tmp_path / "repaired.tflite").read_bytes() == r.model
    assert json.loads((tmp_path / "recipe.json").read_text())["actions"] == []


PLANTED = {  # fault: (model builder, options, the only ops the repair may change, the one it must change, factor)
    # ×1000: at ×100 the trained model keeps every decision (logit SQNR 18.6 dB), leaving nothing to repair.
    "outlier": ("planted_outlier", {"scheme": "int8", "calib_count": 16}, {"c2_relu", "proj_bn"}, "c2_relu", 1000.0),
    "gamma": ("planted_gamma_spread", {"scheme": "dynamic-per-tensor"}, {"proj_bn"}, "proj_bn", None),
    "margins": ("planted_margins", {"scheme": "int8", "calib_count": 16}, {"StatefulPartitionedCall_1:0"},
                "StatefulPartitionedCall_1:0", None),  # the logits op, renamed by the converter as the graph output
}


@pytest.mark.parametrize("fault", list(PLANTED))
def test_planted_fault_is_repaired_at_its_layer(fault, planted_npz, tmp_path):
    """Each planted fault of the explain tests (tests/planted.py) is repaired with its layer among the only changes."""
    import tests.planted as planted

    builder, options, allowed, required, factor = PLANTED[fault]
    path = tmp_path / f"{fault}.keras"
    (getattr(planted, builder)(factor) if factor else getattr(planted, builder)()).save(path)
    r = repair(path, planted_npz, max_drop=5.0, out=tmp_path / "out", **options)
    assert r.baseline_metric <= 0.95  # the planted fault costs agreement...
    assert r.budget_met and r.final_metric >= 0.95  # ...and the repair wins it back
    touched = {short_name(op) for a in r.actions for op in a.targets()}
    for a in r.actions:  # an op-type action touches every op of that type: not a small change
        assert getattr(a, "op_type", None) is None
    assert required in touched and touched <= allowed
    assert apply_recipe(tmp_path / "out" / "recipe.json", path) == (tmp_path / "out" / "repaired.tflite").read_bytes()


def test_shifted_calibration_is_repaired_from_the_first_clipped_op(planted_npz, tmp_path):
    import numpy as np

    from tests.planted import plain_model, shifted_calibration

    path, calib = tmp_path / "calib.keras", tmp_path / "shifted.npy"
    plain_model().save(path)
    np.save(calib, shifted_calibration())
    r = repair(path, planted_npz, scheme="int8", calib=str(calib), max_drop=5.0)
    assert r.baseline_metric < 0.5 and r.budget_met
    touched = {short_name(op) for a in r.actions for op in a.targets()}
    assert "stem_relu" in touched  # the first op after the clipped input


def test_impossible_budget_exits_3_and_writes_best(planted_model_path, tiny_npz, tmp_path, capsys, monkeypatch):
    import functools

    from quantdoctor.repair import search

    # Since the search starts from verified causes it can reach 0 points on these 30 samples: cap its evaluations so
    # the budget stays out of reach.
    monkeypatch.setattr(search, "SearchConfig", functools.partial(search.SearchConfig, max_evaluations=4))
    code = main([
        "repair", str(planted_model_path), "--data", str(tiny_npz), "--scheme", "int8-per-tensor",
        "--max-drop", "0", "--calib-count", "10", "--out", str(tmp_path),
    ])
    assert code == 3
    err = capsys.readouterr().err
    assert "budget NOT met" in err
    result = json.loads((tmp_path / "repair.json").read_text())
    assert result["budget_met"] is False and result["final_metric"] > result["baseline_metric"]
    assert (tmp_path / "repaired.tflite").stat().st_size > 0


def test_cli_apply_same_bytes(centred_model_path, tiny_npz, tmp_path):
    out = tmp_path / "run"
    main(["repair", str(centred_model_path), "--data", str(tiny_npz), "--scheme", "int8", "--max-drop", "100",
          "--calib-count", "10", "--out", str(out)])
    target = tmp_path / "again.tflite"
    assert main(["apply", str(out / "recipe.json"), str(centred_model_path), "--out", str(target)]) == 0
    assert target.read_bytes() == (out / "repaired.tflite").read_bytes()


def test_wrong_model_for_recipe_is_a_user_error(centred_model_path, planted_model_path, tiny_npz, tmp_path):
    repair(centred_model_path, tiny_npz, scheme="int8", max_drop=100.0, calib_count=10, out=tmp_path)
    assert main(["apply", str(tmp_path / "recipe.json"), str(planted_model_path), "--out", str(tmp_path / "x")]) == 1
