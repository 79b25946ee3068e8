"""The bad-input table: what a new user gets wrong, and the one line quantdoctor answers with.

Every case runs the real command line (in-process, so TensorFlow loads once) and asserts: exit code 1, exactly one line
on stderr that starts with "quantdoctor: error:" and says what is wrong, no traceback, and every input file's bytes
unchanged. Two cases run in a subprocess, where TensorFlow's C++ start-up lines would show, and one interrupts a run.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from quantdoctor.cli.main import main
from tests.conftest import TINY_CLASSES, TINY_INPUT, build_tiny_model, tiny_data

ROOT = Path(__file__).resolve().parents[2]


def _two_input_model():
    import keras

    a, b = keras.Input((8,), name="a"), keras.Input((8,), name="b")
    h = keras.layers.Concatenate()([keras.layers.Dense(64)(a), keras.layers.Dense(64)(b)])
    return keras.Model([a, b], keras.layers.Dense(10)(keras.layers.Dense(64)(h)))


def _segmenter():
    import keras

    inp = keras.Input((16, 16, 3))
    return keras.Model(inp, keras.layers.Conv2D(40, 3, padding="same")(inp))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Every input of the table, good and bad, in one folder (its bytes are checked after each case)."""
    from quantdoctor.backends.keras.loader import ModelSource
    from quantdoctor.quantize.converter import convert
    from quantdoctor.repair.actions import Backend
    from quantdoctor.repair.recipe import Recipe, file_sha256

    d = tmp_path_factory.mktemp("bad_inputs")
    build_tiny_model(0).save(d / "tiny.keras")
    build_tiny_model(1).save(d / "other.keras")
    x, y = tiny_data(24)
    np.savez(d / "data.npz", x=x, y=y)
    np.savez(d / "unlabelled.npz", x=x)
    (d / "tiny.tflite").write_bytes(convert(ModelSource("keras", d / "tiny.keras"), None))
    (d / "tiny_q.tflite").write_bytes(convert(ModelSource("keras", d / "tiny.keras"), "dynamic"))
    (d / "other_q.tflite").write_bytes(convert(ModelSource("keras", d / "other.keras"), "dynamic"))
    _two_input_model().save(d / "two.keras")
    np.savez(d / "two.npz", a=np.zeros((4, 8), np.float32), b=np.zeros((4, 8), np.float32))
    _segmenter().save(d / "seg.keras")
    np.savez(d / "seg.npz", x=np.random.default_rng(0).random((8, 16, 16, 3), np.float32))

    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():  # a valid TF 1.x GraphDef: input_1 -> out
        tf.identity(tf.compat.v1.placeholder(tf.float32, (1, 24, 24, 3), name="input_1") * 2.0, name="out")
    (d / "graph.pb").write_bytes(graph.as_graph_def().SerializeToString())
    keras_bytes = (d / "tiny.keras").read_bytes()
    rand = np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    for name, data in {
        "empty.keras": b"", "trunc.keras": keras_bytes[: len(keras_bytes) // 3], "rand.keras": rand,
        "empty.h5": b"", "rand.h5": rand, "text.txt": b"hello\n", "rand.tflite": rand, "empty.tflite": b"",
        "rand.onnx": rand, "empty.onnx": b"", "rand.pb": rand,
        "trunc_q.tflite": (d / "tiny_q.tflite").read_bytes()[:20000], "rand_q.tflite": b"\0\0\0\0TFL3" + rand,
        "empty.npz": b"", "text.npz": b"x,y\n1,2\n", "trunc.npz": (d / "data.npz").read_bytes()[:999],
        "empty.npy": b"", "rand.npy": rand, "data.csv": b"1,2,3\n",
        "recipe_list.json": b"[1, 2]", "recipe_text.json": b"not json", "recipe_empty.json": b"",
        "recipe_bin.json": rand,
    }.items():
        (d / name).write_bytes(data)
    arrays = {
        "nox.npz": {"images": x},
        "zero.npz": {"x": np.zeros((0, *TINY_INPUT), np.float32)},
        "rank2.npz": {"x": np.zeros((5, 7), np.float32)},
        "shape.npz": {"x": np.zeros((4, 24, 24, 5), np.float32)},  # other spatial sizes are resized; channels not
        "nan.npz": {"x": np.where(np.arange(x.size).reshape(x.shape) == 5, np.nan, x)},
        "inf.npz": {"x": np.where(np.arange(x.size).reshape(x.shape) == 5, np.inf, x)},
        "strings.npz": {"x": np.array(["a", "b"])},
        "labels_range.npz": {"x": x, "y": np.full(len(x), TINY_CLASSES + 5)},
        "labels_frac.npz": {"x": x, "y": np.full(len(x), 0.5)},
        "labels_count.npz": {"x": x, "y": y[:5]},
        "labels_2d.npz": {"x": x, "y": np.zeros((len(x), 3))},
    }
    for name, content in arrays.items():
        np.savez(d / name, **content)
    np.savez(d / "object.npz", x=np.array([{"a": 1}], dtype=object), allow_pickle=True)
    np.save(d / "shape.npy", np.zeros((4, 24, 24, 5), np.float32))
    (d / "saved_bad").mkdir()
    (d / "saved_bad" / "saved_model.pb").write_bytes(rand)
    (d / "emptydir").mkdir()
    (d / "dir.keras").mkdir()
    (d / "images_empty").mkdir()
    (d / "images_corrupt" / "cat").mkdir(parents=True)
    (d / "images_corrupt" / "cat" / "a.jpg").write_bytes(rand)
    (d / "images_text").mkdir()
    (d / "images_text" / "notes.txt").write_text("no images here")
    (d / "afile").write_text("a file, not a folder")
    (d / "outdir").mkdir()
    (d / "qdir").mkdir()
    (d / "qdir" / "repaired.tflite").write_bytes((d / "tiny_q.tflite").read_bytes())

    def recipe(**over):
        fields = dict(scheme="dynamic", backend=Backend.AEQ.value, actions=(),
                      float_model_sha256=file_sha256(d / "tiny.keras"), model_sha256="")
        fields.update(over)
        return Recipe(**fields).to_json()

    (d / "recipe.json").write_text(recipe())
    (d / "recipe_other.json").write_text(recipe(float_model_sha256="0" * 64))
    (d / "recipe_version.json").write_text(json.dumps({**json.loads(recipe()), "version": 99}))
    (d / "recipe_backend.json").write_text(json.dumps({**json.loads(recipe()), "backend": "tensorrt"}))
    (d / "recipe_noscheme.json").write_text(json.dumps({k: v for k, v in json.loads(recipe()).items() if k != "scheme"}))
    return d


# (case id, argv with {d} for the folder, a phrase the one line must contain)
D = ["diagnose", "{d}/tiny.keras", "--data", "{d}/data.npz"]
R = ["repair", "{d}/tiny.keras", "--data", "{d}/data.npz", "--scheme", "dynamic"]
CASES = [
    # model files of every format: missing, empty, damaged, foreign
    ("model-missing", ["diagnose", "{d}/nope.keras", "--data", "{d}/data.npz", "--scheme", "dynamic"], "does not exist"),
    ("keras-empty", ["diagnose", "{d}/empty.keras", "--data", "{d}/data.npz", "--scheme", "dynamic"], "is empty"),
    ("keras-truncated", ["diagnose", "{d}/trunc.keras", "--data", "{d}/data.npz", "--scheme", "dynamic"], "not a .keras file"),
    ("keras-random", ["diagnose", "{d}/rand.keras", "--data", "{d}/data.npz", "--scheme", "dynamic"], "not a .keras file"),
    ("keras-folder", ["diagnose", "{d}/dir.keras", "--data", "{d}/data.npz", "--scheme", "dynamic"], "no saved_model.pb"),
    ("h5-empty", ["diagnose", "{d}/empty.h5", "--data", "{d}/data.npz", "--scheme", "dynamic"], "is empty"),
    ("h5-random", ["diagnose", "{d}/rand.h5", "--data", "{d}/data.npz", "--scheme", "dynamic"], "not an HDF5 file"),
    ("savedmodel-damaged", ["diagnose", "{d}/saved_bad", "--data", "{d}/data.npz", "--scheme", "dynamic"], "saved_bad"),
    ("folder-not-a-model", ["diagnose", "{d}/emptydir", "--data", "{d}/data.npz", "--scheme", "dynamic"], "no saved_model.pb"),
    ("tflite-random", ["diagnose", "{d}/rand.tflite", "--data", "{d}/data.npz", "--scheme", "dynamic"], "not a TFLite"),
    ("tflite-empty", ["diagnose", "{d}/empty.tflite", "--data", "{d}/data.npz", "--scheme", "dynamic"], "not a TFLite"),
    ("onnx-random", ["diagnose", "{d}/rand.onnx", "--data", "{d}/data.npz", "--scheme", "ort-qdq-int8"], "rand.onnx"),
    ("onnx-empty", ["diagnose", "{d}/empty.onnx", "--data", "{d}/data.npz", "--scheme", "ort-qdq-int8"], "empty.onnx"),
    ("pb-random", ["diagnose", "{d}/rand.pb", "--data", "{d}/data.npz", "--scheme", "dynamic",
                   "--input-arrays", "input_1", "--output-arrays", "out"], "rand.pb"),
    ("pb-no-arrays", ["diagnose", "{d}/graph.pb", "--data", "{d}/data.npz", "--scheme", "dynamic"], "--input-arrays"),
    ("pb-unknown-array", ["diagnose", "{d}/graph.pb", "--data", "{d}/data.npz", "--scheme", "dynamic",
                          "--input-arrays", "image", "--output-arrays", "out"], "image"),
    ("model-unknown-suffix", ["diagnose", "{d}/text.txt", "--data", "{d}/data.npz", "--scheme", "dynamic"], "text.txt"),
    # quantized files that do not fit
    ("quantized-missing", [*D, "--quantized", "{d}/nope.tflite"], "nope.tflite"),
    ("quantized-truncated", [*D, "--quantized", "{d}/trunc_q.tflite"], "trunc_q.tflite"),
    ("quantized-random", [*D, "--quantized", "{d}/rand_q.tflite"], "rand_q.tflite"),
    ("quantized-not-tflite", [*D, "--quantized", "{d}/rand.tflite"], "not a TFLite"),
    ("quantized-other-model", [*D, "--quantized", "{d}/other_q.tflite"], "does not come from this float model"),
    ("quantized-other-shape", ["diagnose", "{d}/two.keras", "--data", "{d}/two.npz", "--quantized", "{d}/tiny_q.tflite"],
     "does not fit the float model"),
    ("quantized-other-runtime", [*D, "--quantized", "{d}/rand.onnx"], "rand.onnx"),
    # data files of every format
    ("data-missing", [*D[:3], "{d}/nope.npz", "--scheme", "dynamic"], "does not exist"),
    ("npz-empty-file", [*D[:3], "{d}/empty.npz", "--scheme", "dynamic"], "is empty"),
    ("npz-text", [*D[:3], "{d}/text.npz", "--scheme", "dynamic"], "not a NumPy .npz file"),
    ("npz-truncated", [*D[:3], "{d}/trunc.npz", "--scheme", "dynamic"], "trunc.npz"),
    ("npz-no-x", [*D[:3], "{d}/nox.npz", "--scheme", "dynamic"], "no array named 'x'"),
    ("npz-zero-samples", [*D[:3], "{d}/zero.npz", "--scheme", "dynamic"], "0 samples"),
    ("npz-rank", [*D[:3], "{d}/rank2.npz", "--scheme", "dynamic"], "(24, 24, 3)"),
    ("npz-shape", [*D[:3], "{d}/shape.npz", "--scheme", "dynamic"], "(24, 24, 3)"),
    ("npz-nan", [*D[:3], "{d}/nan.npz", "--scheme", "dynamic"], "NaN"),
    ("npz-inf", [*D[:3], "{d}/inf.npz", "--scheme", "dynamic"], "Inf"),
    ("npz-strings", [*D[:3], "{d}/strings.npz", "--scheme", "dynamic"], "strings.npz"),
    ("npz-objects", [*D[:3], "{d}/object.npz", "--scheme", "dynamic"], "object.npz"),
    ("labels-out-of-range", [*D[:3], "{d}/labels_range.npz", "--scheme", "dynamic"], "17"),
    ("labels-fractional", [*D[:3], "{d}/labels_frac.npz", "--scheme", "dynamic"], "labels_frac.npz"),
    ("labels-count", [*D[:3], "{d}/labels_count.npz", "--scheme", "dynamic"], "5 labels"),
    ("labels-2d", [*D[:3], "{d}/labels_2d.npz", "--scheme", "dynamic"], "one integer class index per sample"),
    ("npy-empty-file", [*D[:3], "{d}/empty.npy", "--scheme", "dynamic"], "is empty"),
    ("npy-random", [*D[:3], "{d}/rand.npy", "--scheme", "dynamic"], "not a NumPy .npy file"),
    ("npy-shape", [*D[:3], "{d}/shape.npy", "--scheme", "dynamic"], "(24, 24, 3)"),
    ("data-unknown-suffix", [*D[:3], "{d}/data.csv", "--scheme", "dynamic"], "data.csv"),
    ("images-empty-folder", [*D[:3], "{d}/images_empty", "--scheme", "dynamic"], "images_empty"),
    ("images-corrupt", [*D[:3], "{d}/images_corrupt", "--scheme", "dynamic"], "a.jpg"),
    ("images-none", [*D[:3], "{d}/images_text", "--scheme", "dynamic"], "images_text"),
    ("calib-missing", [*D, "--scheme", "int8", "--calib", "{d}/nope.npz"], "nope.npz"),
    ("calib-shape", [*D, "--scheme", "int8", "--calib", "{d}/shape.npz"], "(24, 24, 3)"),
    # options
    ("scheme-and-quantized", [*D, "--scheme", "dynamic", "--quantized", "{d}/tiny_q.tflite"], "not allowed with"),
    ("no-scheme", D, "--scheme"),
    ("unknown-scheme", [*D, "--scheme", "int3"], "unknown scheme 'int3'"),
    ("scheme-other-runtime", [*D, "--scheme", "ort-qdq-int8"], "quantizes ONNX models"),
    ("batch-size-0", [*D, "--scheme", "dynamic", "--batch-size", "0"], "--batch-size"),
    ("batch-size-huge", [*D, "--scheme", "dynamic", "--batch-size", "1000000000"], "from 1 to 1024"),
    ("batch-size-text", [*D, "--scheme", "dynamic", "--batch-size", "many"], "not a whole number"),
    ("top-k-0", [*D, "--scheme", "dynamic", "--top-k", "0"], "--top-k"),
    ("calib-count-negative", [*D, "--scheme", "dynamic", "--calib-count", "-1"], "--calib-count"),
    ("max-samples-0", [*D, "--scheme", "dynamic", "--max-samples", "0"], "--max-samples"),
    ("explain-samples-0", [*D, "--scheme", "dynamic", "--explain-samples", "0"], "--explain-samples"),
    ("verify-samples-nan", [*D, "--scheme", "dynamic", "--verify-samples", "nan"], "--verify-samples"),
    ("width-tiny", [*D, "--scheme", "dynamic", "--width", "5"], "--width"),
    ("unknown-preset", [*D, "--scheme", "dynamic", "--preprocess", "imagenet42"], "unknown preprocess preset"),
    ("bad-resize", [*D, "--scheme", "dynamic", "--resize", "squash"], "--resize"),
    ("unknown-option", [*D, "--scheme", "dynamic", "--frobnicate"], "--frobnicate"),
    ("unknown-command", ["frobnicate"], "invalid choice"),
    ("max-drop-nan", [*R, "--max-drop", "nan"], "--max-drop"),
    ("max-drop-inf", [*R, "--max-drop", "inf"], "--max-drop"),
    ("max-drop-negative", [*R, "--max-drop", "-1"], "--max-drop"),
    ("rank-size-0", [*R, "--rank-size", "0"], "--rank-size"),
    ("rank-size-negative", [*R, "--rank-size", "-3"], "--rank-size"),
    ("metric-needs-labels", ["repair", "{d}/tiny.keras", "--data", "{d}/unlabelled.npz", "--scheme", "dynamic",
                             "--metric", "top1"], "labelled data"),
    ("compare-quantized-b-with-scheme", ["compare", "{d}/tiny.keras", "{d}/other.keras", "--data", "{d}/data.npz",
                                         "--scheme", "dynamic", "--quantized-b", "{d}/tiny_q.tflite"], "--quantized-b"),
    # output paths that cannot be written, are an input, or would hold the user's files
    ("out-under-a-file", [*D, "--scheme", "dynamic", "--out", "{d}/afile/report"], "is a file"),
    ("out-is-a-file", [*D, "--scheme", "dynamic", "--out", "{d}/afile"], "is a file"),
    ("out-virtual-fs", [*D, "--scheme", "dynamic", "--out", "/proc/quantdoctor-report"], "cannot be written"),
    ("model-explorer-virtual-fs", [*D, "--scheme", "dynamic", "--model-explorer", "/proc/qd-me"], "cannot be written"),
    ("compare-out-under-a-file", ["compare", "{d}/tiny.keras", "{d}/other.keras", "--data", "{d}/data.npz",
                                  "--scheme", "dynamic", "--out", "{d}/afile/x"], "is a file"),
    ("repair-out-overwrites-quantized", ["repair", "{d}/tiny.keras", "--data", "{d}/data.npz",
                                         "--quantized", "{d}/qdir/repaired.tflite", "--out", "{d}/qdir"],
     "would overwrite the input"),
    ("repair-out-virtual-fs", [*R, "--out", "/proc/qd-repair"], "cannot be written"),
    ("apply-out-is-float-model", ["apply", "{d}/recipe.json", "{d}/tiny.keras", "--out", "{d}/tiny.keras"],
     "would overwrite the input"),
    ("apply-out-is-recipe", ["apply", "{d}/recipe.json", "{d}/tiny.keras", "--out", "{d}/recipe.json"],
     "would overwrite the input"),
    ("apply-out-is-folder", ["apply", "{d}/recipe.json", "{d}/tiny.keras", "--out", "{d}/outdir"], "is a folder"),
    ("apply-out-wrong-suffix", ["apply", "{d}/recipe.json", "{d}/tiny.keras", "--out", "{d}/other.keras"], ".tflite"),
    ("apply-out-virtual-fs", ["apply", "{d}/recipe.json", "{d}/tiny.keras", "--out", "/proc/qd.tflite"],
     "cannot be written"),
    # recipes that are malformed or for another model
    ("recipe-json-list", ["apply", "{d}/recipe_list.json", "{d}/tiny.keras", "--out", "{d}/outdir/r.tflite"],
     "not a quantdoctor recipe"),
    ("recipe-not-json", ["apply", "{d}/recipe_text.json", "{d}/tiny.keras", "--out", "{d}/outdir/r.tflite"],
     "not a quantdoctor recipe"),
    ("recipe-empty", ["apply", "{d}/recipe_empty.json", "{d}/tiny.keras", "--out", "{d}/outdir/r.tflite"],
     "not a quantdoctor recipe"),
    ("recipe-binary", ["apply", "{d}/recipe_bin.json", "{d}/tiny.keras", "--out", "{d}/outdir/r.tflite"],
     "not a quantdoctor recipe"),
    ("recipe-missing", ["apply", "{d}/nope.json", "{d}/tiny.keras", "--out", "{d}/outdir/r.tflite"], "does not exist"),
    ("recipe-version", ["apply", "{d}/recipe_version.json", "{d}/tiny.keras", "--out", "{d}/outdir/r.tflite"],
     "version 99"),
    ("recipe-backend", ["apply", "{d}/recipe_backend.json", "{d}/tiny.keras", "--out", "{d}/outdir/r.tflite"],
     "tensorrt"),
    ("recipe-no-scheme", ["apply", "{d}/recipe_noscheme.json", "{d}/tiny.keras", "--out", "{d}/outdir/r.tflite"],
     "scheme"),
    ("recipe-other-model", ["apply", "{d}/recipe_other.json", "{d}/tiny.keras", "--out", "{d}/outdir/r.tflite"],
     "not the float model this recipe was made from"),
    # models of several inputs or other tasks, given data or options that do not fit them
    ("two-inputs-diagnose", ["diagnose", "{d}/two.keras", "--data", "{d}/seg.npz", "--scheme", "dynamic"],
     "no array for input 'a'"),
    ("two-inputs-repair", ["repair", "{d}/two.keras", "--data", "{d}/seg.npz", "--scheme", "dynamic"],
     "no array for input 'a'"),
    ("two-inputs-image-folder", ["diagnose", "{d}/two.keras", "--data", "{d}", "--scheme", "dynamic"],
     "one array per input"),
    ("not-a-classifier-diagnose", ["diagnose", "{d}/seg.keras", "--data", "{d}/seg.npz", "--scheme", "dynamic",
                                   "--task", "classify"], "class"),
    ("not-a-classifier-repair", ["repair", "{d}/seg.keras", "--data", "{d}/seg.npz", "--scheme", "dynamic",
                                 "--task", "detect"], "needs a raw head"),
    ("metric-of-another-task", ["repair", "{d}/seg.keras", "--data", "{d}/seg.npz", "--scheme", "dynamic",
                                "--metric", "f1"], "does not apply to task 'segment'"),
    ("box-slice-not-a-range", ["diagnose", "{d}/seg.keras", "--data", "{d}/seg.npz", "--scheme", "dynamic",
                               "--task", "detect", "--box-slice", "4"], "START:STOP"),
]


def test_the_table_has_at_least_sixty_distinct_cases():
    assert len(CASES) >= 60
    assert len({case for case, _, _ in CASES}) == len(CASES)


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case, argv, phrase", CASES, ids=[c for c, _, _ in CASES])
def test_bad_input_gets_one_line_and_exit_1(capsys, files, case, argv, phrase):
    before = _digest(files)
    code = main([a.format(d=files) for a in argv] + (["--no-progress"] if argv[0] in ("diagnose", "compare") else []))
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1, err
    assert lines[0].startswith("quantdoctor: error: "), err
    assert phrase in lines[0], lines[0]
    assert _digest(files) == before, "an input file was changed, added or removed"


def _cli(*argv: str, **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "QUANTDOCTOR_DEBUG")}
    return subprocess.Popen([sys.executable, "-m", "quantdoctor", *argv], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize("case", ["after-tensorflow-loads", "bad-command-line"])
def test_nothing_is_printed_before_the_error_line(files, case):
    """In a real process TensorFlow's C++ start-up lines would land on stderr before the error; they must not."""
    argv = {
        "after-tensorflow-loads": ["diagnose", f"{files}/seg.keras", "--data", f"{files}/seg.npz", "--scheme", "dynamic",
                                   "--task", "classify"],
        "bad-command-line": ["diagnose", f"{files}/tiny.keras", "--data", f"{files}/data.npz", "--scheme", "dynamic",
                             "--quantized", f"{files}/tiny_q.tflite"],
    }[case]
    proc = _cli(*argv)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 1, err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("quantdoctor: error: "), err


@pytest.mark.parametrize("seconds", [3, 9])
def test_ctrl_c_exits_130_and_leaves_no_output(files, tmp_path, seconds):
    """Interrupted while TensorFlow loads or converts (3 s), or in the passes over the data (9 s; the run takes ~16 s)."""
    x, y = tiny_data(3000)
    np.savez(tmp_path / "big.npz", x=x, y=y)
    out = tmp_path / "report"
    proc = _cli("diagnose", f"{files}/tiny.keras", "--data", str(tmp_path / "big.npz"), "--scheme", "int8",
                "--out", str(out))
    time.sleep(seconds)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "quantdoctor: interrupted", err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


def test_force_diagnoses_a_foreign_quantized_model_as_a_critical_finding(capsys, files):
    code = main(["diagnose", f"{files}/tiny.keras", "--data", f"{files}/data.npz", "--quantized",
                 f"{files}/other_q.tflite", "--force", "--no-verify", "--json", "--no-progress"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    top = report["findings"][0]
    assert top["mechanism"] == "foreign_quantized_model" and top["severity"] == "critical"
    assert top["evidence"]["consistent"] < top["evidence"]["checked"] / 2


def test_the_right_quantized_model_is_not_refused(capsys, files):
    """The provenance check must pass the genuine pair: its weights lie within a step of the float ones."""
    code = main(["diagnose", f"{files}/tiny.keras", "--data", f"{files}/data.npz", "--quantized",
                 f"{files}/tiny_q.tflite", "--no-explain", "--json", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    report = json.loads(capsys.readouterr().out)
    assert all(f["mechanism"] != "foreign_quantized_model" for f in report["findings"])
