"""`quantdoctor compare` from the command line, on the DenseNet pair with --scheme (compare converts both itself)."""

from __future__ import annotations

import json

import pytest

from quantdoctor.cli.main import main
from tests.compare.test_compare import independent


def test_cli_scheme_run_writes_reports_and_matches_litert(densenet_pair, quantized, tmp_path, capsys):
    a, b = densenet_pair
    n = 200
    out = tmp_path / "cmp"
    code = main(["compare", str(a.model_path), str(b.model_path), "--data", str(a.data_path), "--data-b",
                 str(b.data_path), "--scheme", "dynamic-per-tensor", "--max-samples", str(n), "--batch-size", "64",
                 "--out", str(out), "--json", "--no-progress"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((out / "compare.json").read_text())
    assert printed == written
    assert json.loads((out / "a" / "report.json").read_text())["model"]["num_samples"] == n
    assert json.loads((out / "b" / "report.json").read_text())["margins"]["num_classes"] == 200
    # The converter is deterministic for dynamic-range schemes: our own conversion of the same models, run with LiteRT
    # by hand on the same first n samples, must give the agreements compare reports.
    qa, qb = quantized("dynamic-per-tensor")
    metrics = {m["name"]: m for m in written["metrics"]}
    for side, q in (("a", qa), ("b", qb)):
        first = type(q)(q.float_logits[:n], q.quant_logits[:n], q.labels[:n], q.tflite, q.convert_seconds)
        assert metrics["top1_agreement"][side] == pytest.approx(independent(first)["top1_agreement"], abs=1e-12)
    assert written["gap_points"] == pytest.approx(-metrics["top1_agreement"]["gap_points"])
    assert written["explanations"], "a gap or no gap, compare always says something"
    assert not list(out.glob(".*.tmp")) and not list((out / "a").glob(".*.tmp"))


def test_cli_quantized_a_without_b_is_a_user_error(densenet_pair, tmp_path, capsys):
    a, b = densenet_pair
    code = main(["compare", str(a.model_path), str(b.model_path), "--data", str(a.data_path),
                 "--quantized-a", str(tmp_path / "x.tflite")])
    assert code == 1
    err = capsys.readouterr().err
    assert "--quantized-b" in err and len(err.strip().splitlines()) == 1
