"""Fuzzing every model and data loader: random bytes, and valid files truncated, flipped, overwritten, cut or grown.

Whatever the bytes, a loader either loads them or raises a QuantDoctorError whose message is one non-empty line (what
the CLI prints after "quantdoctor: error: "); any other exception, a hang or a crash is a bug. The native formats
(.tflite, .onnx, .keras, .h5, SavedModel, frozen .pb) are parsed in C/C++ (LiteRT, ONNX Runtime, h5py, protobuf), where
a bad file could kill the process, so each runs in a child process (this module run with `-m`) under a timeout; the
pure-Python ones (.npz, .npy, image folders, recipe.json) run here.

Budget: 60-200 examples per loader, derandomized (the same cases on every run; ~50 s in all on 2 cores);
QUANTDOCTOR_FUZZ_EXAMPLES=1000 runs that many per loader instead. The inputs the fuzzing found bugs with are kept as
fixed cases at the end (`FOUND`).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quantdoctor.errors import QuantDoctorError

ROOT = Path(__file__).resolve().parents[2]
ENV_EXAMPLES = "QUANTDOCTOR_FUZZ_EXAMPLES"
CHILD_TIMEOUT_PER_EXAMPLE = 12.0  # seconds; a child that takes longer hangs somewhere (the deadline is 10 s a case)


def fuzz_settings(default_examples: int) -> settings:
    examples = int(os.environ.get(ENV_EXAMPLES) or default_examples)
    return settings(
        max_examples=examples,
        deadline=timedelta(seconds=10),
        derandomize=True,  # CI runs the same cases every time
        database=None,  # no .hypothesis folder in the repository
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example,
                               HealthCheck.function_scoped_fixture],
    )


# ------------------------------------------------------------------------------------------------------------ mutations
EDITS = ("truncate", "flip", "overwrite", "insert", "delete")
# (kind, where: taken modulo the length, a chunk: the bytes to XOR/write/insert, or how much to delete)
edit = st.tuples(st.sampled_from(EDITS), st.integers(0, 2**32 - 1), st.binary(min_size=1, max_size=64))


def apply_edits(data: bytes, edits: list[tuple[str, int, bytes]]) -> bytes:
    for kind, where, chunk in edits:
        pos = where % (len(data) + 1)
        if kind == "truncate":
            data = data[:pos]
        elif kind == "flip":
            flipped = bytes(a ^ (b or 0x80) for a, b in zip(data[pos:], chunk))
            data = data[:pos] + flipped + data[pos + len(flipped):]
        elif kind == "overwrite":
            data = data[:pos] + chunk + data[pos + len(chunk):]
        elif kind == "insert":
            data = data[:pos] + chunk + data[pos:]
        else:
            data = data[:pos] + data[pos + 1 + chunk[0] * len(chunk):]
    return data


def edit_zip_member(data: bytes, index: int, edits: list) -> bytes:
    """The zip archive with one member's bytes edited and the archive rebuilt (valid CRCs: the member's parser runs)."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        infos = archive.infolist()
        contents = [archive.read(info) for info in infos]
    i = index % len(infos)
    contents[i] = apply_edits(contents[i], edits)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for info, content in zip(infos, contents):
            archive.writestr(info, content)
    return out.getvalue()


def file_bytes(seeds: list[bytes], magic: bytes = b"", zipped: bool = False) -> st.SearchStrategy[bytes]:
    """Random bytes (also after the format's magic number) and edits of the valid seed files."""
    options = [
        st.binary(max_size=4096),
        st.tuples(st.sampled_from(seeds), st.lists(edit, min_size=1, max_size=4)).map(lambda t: apply_edits(*t)),
    ]
    if magic:
        options.append(st.binary(max_size=4096).map(lambda b: magic + b))
    if zipped:
        options.append(st.tuples(st.sampled_from(seeds), st.integers(0, 99), st.lists(edit, min_size=1, max_size=3))
                       .map(lambda t: edit_zip_member(*t)))
    return st.one_of(options)


def check_outcome(load: Callable[[], object]) -> str:
    """Load, and accept success or a QuantDoctorError of one non-empty line; anything else propagates (a bug).

    Returns "loaded" or the error's type name.
    """
    try:
        load()
    except QuantDoctorError as exc:
        message = str(exc)
        assert message.strip(), f"{type(exc).__name__} with an empty message"
        assert "\n" not in message and "\r" not in message, f"{type(exc).__name__} message spans lines: {message!r}"
        return type(exc).__name__
    return "loaded"


# ------------------------------------------------------------------------------------------------------------- seeds
TINY_NPZ_SAMPLES = 6


def build_seeds(d: Path) -> None:
    """Valid files of every format, from the tiny test models, into folder `d`."""
    from PIL import Image

    from quantdoctor.backends.keras.loader import ModelSource
    from quantdoctor.quantize.converter import convert
    from quantdoctor.repair.actions import Backend, CalibrationRange, KeepFloat
    from quantdoctor.repair.recipe import Recipe
    from tests.conftest import build_tiny_model, tiny_data
    from tests.onnx_models import mlp_onnx

    x, y = tiny_data(TINY_NPZ_SAMPLES)
    np.savez(d / "data.npz", x=x, y=y)
    np.savez_compressed(d / "data_compressed.npz", x=x, y=y)
    np.save(d / "data.npy", x)
    pixels = ((x[0] + 1) * 127.5).astype(np.uint8)
    Image.fromarray(pixels).save(d / "image.png")
    Image.fromarray(pixels).save(d / "image.jpg", quality=90)
    recipe = Recipe(scheme="int8", backend=Backend.CONVERTER.value,
                    actions=(KeepFloat(("model/logits/MatMul",)), CalibrationRange("model/fc/Relu", "percentile", 99.9)),
                    float_model_sha256="ab" * 32, model_sha256="cd" * 32, ranges={"image": (-1.0, 1.0)})
    (d / "recipe.json").write_text(recipe.to_json())
    (d / "mlp.onnx").write_bytes(mlp_onnx())

    model = build_tiny_model(0)
    model.save(d / "tiny.keras")
    model.save(d / "tiny.h5")
    (d / "tiny_q.tflite").write_bytes(convert(ModelSource("keras", d / "tiny.keras"), "dynamic"))
    (d / "tiny.tflite").write_bytes(convert(ModelSource("keras", d / "tiny.keras"), None))

    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():  # a TF 1.x frozen graph: input_1 -> conv (constant weights) -> relu -> out
        inp = tf.compat.v1.placeholder(tf.float32, (1, 8, 8, 3), name="input_1")
        w = tf.constant(np.random.default_rng(0).normal(size=(3, 3, 3, 4)).astype(np.float32))
        h = tf.nn.relu(tf.nn.conv2d(inp, w, 1, "SAME"))
        tf.identity(tf.reduce_mean(h, axis=[1, 2]), name="out")
    (d / "graph.pb").write_bytes(graph.as_graph_def().SerializeToString())

    class Small(tf.Module):  # a SavedModel with one small signature, converted in a second
        def __init__(self):
            self.w = tf.Variable(np.random.default_rng(0).normal(size=(3, 3, 3, 4)).astype(np.float32))

        @tf.function(input_signature=[tf.TensorSpec((1, 8, 8, 3), tf.float32)])
        def __call__(self, x):
            return tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(x, self.w, 1, "SAME")), axis=[1, 2])

    small = Small()
    tf.saved_model.save(small, str(d / "saved"), signatures=small.__call__)


# ------------------------------------------------------------------------------------------------ the native loaders
def _load_keras(path: Path) -> None:
    from quantdoctor.backends.keras.loader import load_keras_model, resolve_source

    source = resolve_source(path)
    load_keras_model(source.path)


def _load_tflite(path: Path) -> None:
    from quantdoctor.backends.tflite.runner import TfliteRunner, read_tflite

    runner = TfliteRunner(read_tflite(path), batch_size=2)
    shape = runner.inputs()[0].shape
    runner.outputs()
    if all(isinstance(s, int) and 0 < s <= 4096 for s in shape):
        runner.run(np.zeros((1, *shape), np.float32))


def _load_onnx(path: Path) -> None:
    from quantdoctor.backends.onnx.runner import OnnxRunner, read_onnx

    runner = OnnxRunner(read_onnx(path), batch_size=1)
    shape = runner.inputs()[0].shape
    runner.outputs()
    if all(isinstance(s, int) and 0 < s <= 4096 for s in shape):
        runner.run(np.zeros((1, *shape), np.float32))


def _load_frozen(path: Path) -> None:
    from quantdoctor.backends.keras.loader import resolve_source
    from quantdoctor.backends.tf1 import frozen_graph
    from quantdoctor.quantize.converter import convert

    convert(resolve_source(frozen_graph(path, ["input_1"], ["out"])), None)


def _load_savedmodel(path: Path) -> None:
    from quantdoctor.backends.keras.loader import resolve_source
    from quantdoctor.quantize.converter import convert

    convert(resolve_source(path.parent), None)


# name: (seed files, the file the fuzzed bytes are written to (under the work folder), magic, zipped, load, examples)
NATIVE: dict[str, tuple[tuple[str, ...], str, bytes, bool, Callable[[Path], None], int]] = {
    "tflite": (("tiny_q.tflite", "tiny.tflite"), "model.tflite", b"\0\0\0\0TFL3", False, _load_tflite, 200),
    "onnx": (("mlp.onnx",), "model.onnx", b"\x08\x08\x12", False, _load_onnx, 200),
    "keras": (("tiny.keras",), "model.keras", b"PK\x03\x04", True, _load_keras, 60),
    "h5": (("tiny.h5",), "model.h5", b"\x89HDF\r\n\x1a\n", False, _load_keras, 80),
    "frozen-pb": (("graph.pb",), "graph.pb", b"\n", False, _load_frozen, 80),
    "savedmodel": (("saved/saved_model.pb",), "saved/saved_model.pb", b"\x08\x01", False, _load_savedmodel, 60),
}


def fuzz_native(name: str, seed_dir: Path, work: Path) -> None:
    """Run one native loader's fuzz cases in this process (the child); raises hypothesis' failure on a bug."""
    from quantdoctor.backends.keras.loader import quiet_tensorflow_logging

    seed_files, target, magic, zipped, load, default_examples = NATIVE[name]
    if name not in ("tflite", "onnx"):
        quiet_tensorflow_logging()
    seeds = [(seed_dir / f).read_bytes() for f in seed_files]
    path = work / target
    if name == "savedmodel":  # the SavedModel's variables stay valid; its graph is fuzzed
        shutil.copytree(seed_dir / "saved", path.parent)

    tally: Counter[str] = Counter()

    @fuzz_settings(default_examples)
    @given(data=file_bytes(seeds, magic, zipped))
    def case(data: bytes) -> None:
        path.write_bytes(data)  # left behind if the process dies: the parent reports it
        tally[check_outcome(lambda: load(path))] += 1

    case()
    print(f"{name}: {sum(tally.values())} cases: " + ", ".join(f"{k} {v}" for k, v in tally.most_common()))


@pytest.fixture(scope="module")
def seeds(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fuzz_seeds")
    build_seeds(d)
    return d


@pytest.mark.parametrize("name", list(NATIVE))
def test_native_loader_survives_fuzzing(seeds, tmp_path, name):
    examples = int(os.environ.get(ENV_EXAMPLES) or NATIVE[name][-1])
    timeout = 60 + CHILD_TIMEOUT_PER_EXAMPLE * examples
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONFAULTHANDLER": "1"}
    start = time.monotonic()
    try:
        proc = subprocess.run([sys.executable, "-m", "tests.cli.test_fuzz_loaders", name, str(seeds), str(tmp_path)],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{name}: the fuzz child hung for {timeout:.0f} s; last input: {_last_input(tmp_path, name)}\n"
                    f"{_tail(exc.stdout)}{_tail(exc.stderr)}")
    if proc.returncode != 0:
        died = f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exit {proc.returncode}"
        pytest.fail(f"{name}: fuzz child {died} after {time.monotonic() - start:.0f} s; last input: "
                    f"{_last_input(tmp_path, name)}\n{_tail(proc.stdout)}{_tail(proc.stderr)}")


def _last_input(work: Path, name: str) -> str:
    path = work / NATIVE[name][1]
    if not path.is_file():
        return "none"
    data = path.read_bytes()
    return f"{path} ({len(data)} bytes, starting {data[:32].hex()})"


def _tail(text: str | bytes | None, lines: int = 60, width: int = 2000) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return "\n".join(line[:width] for line in (text or "").splitlines()[-lines:]) + "\n"


# ------------------------------------------------------------------------------------------- the pure-Python loaders
def _read_all(dataset) -> None:
    for _ in dataset.batches(4):
        pass
    dataset.check_labels(12)


@fuzz_settings(150)
@given(data=st.data())
def test_npz_loader_survives_fuzzing(seeds, tmp_path_factory, data):
    from quantdoctor.data import load_dataset
    from tests.conftest import TINY_INPUT

    seed_bytes = [(seeds / n).read_bytes() for n in ("data.npz", "data_compressed.npz")]
    content = data.draw(file_bytes(seed_bytes, b"PK\x03\x04", zipped=True))
    path = tmp_path_factory.mktemp("npz") / "data.npz"
    path.write_bytes(content)
    check_outcome(lambda: _read_all(load_dataset(path, TINY_INPUT)))


@fuzz_settings(150)
@given(data=st.data())
def test_npy_loader_survives_fuzzing(seeds, tmp_path_factory, data):
    from quantdoctor.data import load_dataset
    from tests.conftest import TINY_INPUT

    content = data.draw(file_bytes([(seeds / "data.npy").read_bytes()], b"\x93NUMPY\x01\x00"))
    path = tmp_path_factory.mktemp("npy") / "data.npy"
    path.write_bytes(content)
    check_outcome(lambda: _read_all(load_dataset(path, TINY_INPUT)))


@fuzz_settings(150)
@given(data=st.data())
def test_image_folder_loader_survives_fuzzing(seeds, tmp_path_factory, data):
    from quantdoctor.data import load_dataset
    from tests.conftest import TINY_INPUT

    suffix = data.draw(st.sampled_from([".png", ".jpg"]))
    magic = b"\x89PNG\r\n\x1a\n" if suffix == ".png" else b"\xff\xd8\xff"
    content = data.draw(file_bytes([(seeds / f"image{suffix}").read_bytes()], magic))
    folder = tmp_path_factory.mktemp("images")
    (folder / "cat").mkdir()
    (folder / "cat" / f"a{suffix}").write_bytes(content)
    check_outcome(lambda: _read_all(load_dataset(folder, TINY_INPUT)))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.integers(10**308, 10**330) | st.floats() | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
RECIPE_PLACES = ("version", "tool", "scheme", "backend", "float_model_sha256", "model_sha256", "actions", "ranges",
                 "source", "actions.0", "actions.1", "actions.1.percentile", "actions.1.method", "actions.0.ops",
                 "actions.0.kind", "ranges.image", "ranges.image.0", "extra")


def _replace(doc: dict, place: str, value: object) -> dict:
    """`doc` with the value at a dotted place ("actions.1.method") replaced (lists indexed by number)."""
    doc = json.loads(json.dumps(doc))
    keys = place.split(".")
    parent = doc
    for key in keys[:-1]:
        parent = parent[int(key)] if isinstance(parent, list) else parent[key]
    last = keys[-1]
    parent[int(last) if isinstance(parent, list) else last] = value
    return doc


@fuzz_settings(200)
@given(data=st.data())
def test_recipe_loader_survives_fuzzing(seeds, tmp_path_factory, data):
    from quantdoctor.repair.recipe import Recipe

    valid = (seeds / "recipe.json").read_bytes()
    structured = st.tuples(st.sampled_from(RECIPE_PLACES), json_values).map(
        lambda t: json.dumps(_replace(json.loads(valid), *t)).encode())
    nested = st.integers(1, 200_000).map(lambda n: b"[" * n + b"]" * n)  # deep JSON: Python's parser recurses
    content = data.draw(st.one_of(file_bytes([valid], b"{"), structured, nested))
    path = tmp_path_factory.mktemp("recipe") / "recipe.json"
    path.write_bytes(content)

    def load():
        Recipe.load(path).to_json()  # what loads must also serialize (apply prints and compares it)

    check_outcome(load)


# ------------------------------------------------------------------------------ what the fuzzing found, kept as cases
def _npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array)
    return out.getvalue()


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_STORED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", method) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return out.getvalue()


def _raw_member_npz() -> bytes:  # NpzFile returned the member as bytes: AttributeError 'bytes' has no 'dtype'
    return _zip({"x": b"not an array"})


def _unparsable_header_npy() -> bytes:  # numpy's tokenize fallback for v1 headers: tokenize.TokenError
    header = b"{'descr': '<f4', 'fortran_order': False, 'shape': (2, 24,"
    header += b" " * (117 - len(header)) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + bytes(100)


def _damaged_deflate_npz() -> bytes:  # zlib.error: invalid block type
    data = bytearray(_zip({"x.npy": _npy(np.zeros((2, 24, 24, 3), np.float32))}, zipfile.ZIP_DEFLATED))
    data[35:43] = b"\xff" * 8  # the first bytes of the member's deflate stream (after its 30 + 5 byte local header)
    return bytes(data)


def _unknown_method_npz() -> bytes:  # zipfile: NotImplementedError "That compression method is not supported"
    data = bytearray(_zip({"x.npy": _npy(np.zeros((2, 24, 24, 3), np.float32))}))
    central = data.rindex(b"PK\x01\x02")
    data[8:10] = data[central + 10:central + 12] = (99).to_bytes(2, "little")
    return bytes(data)


def _non_utf8_onnx() -> bytes:  # upb hands back a non-UTF-8 name as bytes: TypeError/UnicodeDecodeError downstream
    from tests.onnx_models import mlp_onnx

    data = mlp_onnx()
    at = data.index(b"hidden_relu")
    return data[:at] + b"\xe8" + data[at + 1:]


FOUND = [  # (case, file name, bytes, the loader the CLI calls, a phrase of the one line)
    ("npz-member-without-npy-header", "data.npz", _raw_member_npz, "data", "is not a NumPy array"),
    ("npy-header-does-not-parse", "data.npy", _unparsable_header_npy, "data", "header does not parse"),
    ("npz-damaged-deflate-stream", "data.npz", _damaged_deflate_npz, "data", "decompressing"),
    ("npz-unknown-compression-method", "data.npz", _unknown_method_npz, "data", "compression method"),
    ("recipe-nested-100000-deep", "recipe.json", lambda: b"[" * 100_000, "recipe", "recursion"),
    ("recipe-range-integer-overflows-float", "recipe.json",
     lambda: b'{"version": 1, "scheme": "int8", "backend": "converter", "ranges": {"a": [1' + b"0" * 400 + b', 1]}}',
     "recipe", "too large"),
    ("onnx-name-not-utf8", "model.onnx", _non_utf8_onnx, "onnx", "not UTF-8"),
]


@pytest.mark.parametrize("case, name, make, loader, phrase", FOUND, ids=[c[0] for c in FOUND])
def test_inputs_the_fuzzing_found_get_one_line(tmp_path, case, name, make, loader, phrase):
    from quantdoctor.data import load_dataset
    from quantdoctor.repair.recipe import Recipe
    from tests.conftest import TINY_INPUT

    path = tmp_path / name
    path.write_bytes(make())
    load = {"data": lambda: load_dataset(path, TINY_INPUT), "recipe": lambda: Recipe.load(path),
            "onnx": lambda: _load_onnx(path)}[loader]
    with pytest.raises(QuantDoctorError) as caught:
        load()
    message = str(caught.value)
    assert "\n" not in message and phrase in message and str(path) in message, message


if __name__ == "__main__":  # the child process of test_native_loader_survives_fuzzing
    fuzz_native(sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]))
