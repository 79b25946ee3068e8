"""CLI behaviour: bad input gets one clear line and exit code 1; help and import stay fast (no TensorFlow)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from quantdoctor.cli.main import main
from tests.conftest import TINY_CLASSES, tiny_data


def _run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _assert_user_error(code, err, needle):
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("quantdoctor: error: ")
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err


@pytest.fixture()
def bad_data(tmp_path):
    x, y = tiny_data(8)
    files = {}
    np.savez(tmp_path / "shape.npz", x=np.zeros((4, 5, 7), np.float32))
    nan = x.copy()
    nan[3, 0, 0, 0] = np.nan
    np.savez(tmp_path / "nan.npz", x=nan, y=y)
    np.savez(tmp_path / "labels.npz", x=x, y=np.full(len(x), TINY_CLASSES + 5))
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 24, 24, 3), np.float32))
    (tmp_path / "garbage.keras").write_bytes(b"not a model at all")
    (tmp_path / "notflite.tflite").write_bytes(b"\0" * 64)
    for name in ("shape", "nan", "labels", "empty"):
        files[name] = str(tmp_path / f"{name}.npz")
    files["garbage"] = str(tmp_path / "garbage.keras")
    files["notflite"] = str(tmp_path / "notflite.tflite")
    files["dir"] = str(tmp_path)
    return files


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing_model", "does not exist"),
        ("garbage_model", "garbage.keras"),
        ("missing_data", "does not exist"),
        ("shape", "expects (24, 24, 3)"),
        ("nan", "NaN"),
        ("labels", "17"),
        ("empty", "0 samples"),
        ("unknown_scheme", "unknown scheme 'int3'"),
        ("not_tflite", "not a TFLite"),
        ("unknown_preset", "unknown preprocess preset"),
        ("out_is_file", "is a file"),
    ],
)
def test_user_errors_give_one_line_and_exit_1(capsys, tiny_model_path, tiny_npz, bad_data, tmp_path, case, needle):
    model, data = str(tiny_model_path), str(tiny_npz)
    argv = {
        "missing_model": ["diagnose", str(tmp_path / "nope.keras"), "--data", data, "--scheme", "dynamic"],
        "garbage_model": ["diagnose", bad_data["garbage"], "--data", data, "--scheme", "dynamic"],
        "missing_data": ["diagnose", model, "--data", str(tmp_path / "nope.npz"), "--scheme", "dynamic"],
        "shape": ["diagnose", model, "--data", bad_data["shape"], "--scheme", "dynamic"],
        "nan": ["diagnose", model, "--data", bad_data["nan"], "--scheme", "dynamic"],
        "labels": ["diagnose", model, "--data", bad_data["labels"], "--scheme", "dynamic"],
        "empty": ["diagnose", model, "--data", bad_data["empty"], "--scheme", "dynamic"],
        "unknown_scheme": ["diagnose", model, "--data", data, "--scheme", "int3"],
        "not_tflite": ["diagnose", model, "--data", data, "--quantized", bad_data["notflite"]],
        "unknown_preset": ["diagnose", model, "--data", data, "--scheme", "dynamic", "--preprocess", "imagenet42"],
        "out_is_file": ["diagnose", model, "--data", data, "--scheme", "dynamic", "--out", str(tiny_npz)],
    }[case]
    code, _, err = _run(capsys, argv + ["--no-progress"])
    _assert_user_error(code, err, needle)


def test_user_files_are_not_modified(capsys, tiny_model_path, tiny_npz, tmp_path):
    before = (tiny_model_path.read_bytes(), tiny_npz.read_bytes())
    code, out, err = _run(
        capsys, ["diagnose", str(tiny_model_path), "--data", str(tiny_npz), "--scheme", "dynamic", "--json", "--no-progress"]
    )
    assert code == 0, err
    report = json.loads(out)
    assert report["schema_version"] == "1.5" and report["run"]["scheme"] == "dynamic"
    assert (tiny_model_path.read_bytes(), tiny_npz.read_bytes()) == before


def test_out_writes_json_and_html(capsys, tiny_model_path, tiny_npz, tmp_path):
    out = tmp_path / "report"
    code, stdout, err = _run(
        capsys,
        ["diagnose", str(tiny_model_path), "--data", str(tiny_npz), "--scheme", "int8", "--calib-count", "8",
         "--out", str(out), "--no-progress", "--width", "120"],
    )
    assert code == 0, err
    assert "agreement" in stdout.lower()
    data = json.loads((out / "report.json").read_text())
    assert data["run"]["num_eval_samples"] == 32
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") or html.lower().startswith("<!doctype html>")
    assert sorted(p.name for p in out.iterdir()) == ["report.html", "report.json"]


def test_internal_errors_exit_2(capsys, monkeypatch, tiny_model_path, tiny_npz):
    import quantdoctor.cli.commands as commands

    def boom(args):
        raise RuntimeError("kaput")

    monkeypatch.setattr(commands, "run_diagnose", boom)
    code, _, err = _run(capsys, ["diagnose", str(tiny_model_path), "--data", str(tiny_npz), "--scheme", "dynamic"])
    assert code == 2 and "internal error: RuntimeError: kaput" in err and "Traceback" not in err


def test_import_and_help_do_not_load_tensorflow():
    code = (
        "import sys, quantdoctor, quantdoctor.cli.main as m\n"
        "try:\n    m.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [k for k in ('tensorflow', 'keras', 'ai_edge_litert', 'ai_edge_quantizer', 'matplotlib', 'pandas') "
        "if k in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "HEAVY []" in out
    assert "diagnose" in out


def test_schemes_lists_every_scheme(capsys):
    from quantdoctor.quantize.schemes import SCHEMES

    code, out, _ = _run(capsys, ["schemes", "--markdown"])
    assert code == 0
    for name in SCHEMES.names():
        assert f"`{name}`" in out or f"| {name} " in out
