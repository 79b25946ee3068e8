"""The conversion cache: a repeated conversion is served without running the converter, any change to what decides the
output misses, a damaged entry is a miss, and a disabled cache neither reads nor writes."""

from __future__ import annotations

import hashlib
import json
import threading

import numpy as np
import pytest

from quantdoctor import cache as qcache
from quantdoctor.cache import Cache, cache_key, cache_root, use_cache
from quantdoctor.quantize import converter


def _small_model(seed: int = 0):
    """Conv → ReLU → GAP → Dense: converts in about a second."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inp = keras.Input((8, 8, 3), name="image")
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="conv")(inp)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inp, layers.Dense(10, name="logits")(x), name="small")


def _calibration(seed: int = 0, n: int = 8):
    x = np.random.default_rng(seed).uniform(-1, 1, (n, 8, 8, 3)).astype("float32")
    return lambda: iter([x[i : i + 1] for i in range(n)])


@pytest.fixture
def store(tmp_path, monkeypatch):
    """A fresh cache folder for one test, and counters of the real conversions run."""
    monkeypatch.setenv("QUANTDOCTOR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("QUANTDOCTOR_CACHE", raising=False)
    calls = {"convert": 0, "requantize": 0}
    real_convert, real_requantize = converter._convert, converter._requantize

    def counted_convert(*args, **kwargs):
        calls["convert"] += 1
        return real_convert(*args, **kwargs)

    def counted_requantize(*args, **kwargs):
        calls["requantize"] += 1
        return real_requantize(*args, **kwargs)

    monkeypatch.setattr(converter, "_convert", counted_convert)
    monkeypatch.setattr(converter, "_requantize", counted_requantize)
    return tmp_path / "cache" / "conversions", calls


def _entries(folder):
    return sorted(folder.glob("*/*.bin")) if folder.exists() else []


def test_a_second_conversion_is_served_from_the_cache_without_the_converter(store):
    folder, calls = store
    model = _small_model()
    first = converter.convert(model, "dynamic")
    second = converter.convert(model, "dynamic")
    assert calls["convert"] == 1
    assert second == first
    (entry,) = _entries(folder)
    sidecar = json.loads(entry.with_suffix(".json").read_text())
    assert sidecar["what"] == "tflite dynamic" and sidecar["bytes"] == len(first)
    assert sidecar["parts"]["scheme"] == "dynamic" and "tensorflow-cpu" in sidecar["parts"]["versions"]


def test_the_same_model_saved_and_loaded_again_is_a_hit(store, tmp_path):
    from quantdoctor.backends.keras.loader import load_keras_model

    _, calls = store
    path = tmp_path / "small.keras"
    _small_model().save(path)
    converter.convert(load_keras_model(path), None)
    converter.convert(load_keras_model(path), None)
    assert calls["convert"] == 1


def test_changing_one_weight_misses_and_gives_the_new_model(store):
    _, calls = store
    model = _small_model()
    before = converter.convert(model, None)
    kernel = model.get_layer("logits").kernel
    w = kernel.numpy()
    w[0, 0] += 0.5
    kernel.assign(w)
    after = converter.convert(model, None)
    assert calls["convert"] == 2
    assert after != before


def test_changing_the_scheme_or_the_calibration_data_misses(store):
    folder, calls = store
    model = _small_model()
    converter.convert(model, "dynamic")
    converter.convert(model, "float16")
    assert calls["convert"] == 2
    a = converter.convert(model, "int8", _calibration(0), calibrate_only=True)
    b = converter.convert(model, "int8", _calibration(1), calibrate_only=True)
    again = converter.convert(model, "int8", _calibration(1), calibrate_only=True)
    assert calls["convert"] == 4
    assert a != b and again == b
    assert len(_entries(folder)) == 4


def test_a_calibrated_pair_and_its_requantizations_are_cached(store):
    _, calls = store
    model = _small_model()
    first = converter.convert_calibrated_pair(model, "int8", _calibration())
    second = converter.convert_calibrated_pair(model, "int8", _calibration())
    assert second == first
    assert calls == {"convert": 1, "requantize": 1}
    from quantdoctor.repair.flatbuffer import op_names

    calibrated = first[0]
    last = [op_names(calibrated)[-1][1]]
    kept = converter.requantize(calibrated, "int8", last)
    assert calls["requantize"] == 2 and kept != first[1]  # another denylist is another model
    assert converter.requantize(calibrated, "int8", last) == kept
    assert calls["requantize"] == 2


def test_a_damaged_entry_is_a_miss_and_is_removed(store):
    folder, calls = store
    model = _small_model()
    good = converter.convert(model, "dynamic")
    (entry,) = _entries(folder)
    entry.write_bytes(entry.read_bytes()[:-7])  # truncated
    assert converter.convert(model, "dynamic") == good
    assert calls["convert"] == 2
    data = bytearray(entry.read_bytes())  # written again by the miss; now one flipped bit
    data[-100] ^= 1
    entry.write_bytes(bytes(data))
    key = entry.stem
    assert Cache(folder.parent).get(key) is None
    assert not entry.exists() and not entry.with_suffix(".json").exists()


@pytest.mark.parametrize("how", ["use_cache", "environment"])
def test_a_disabled_cache_neither_reads_nor_writes(store, monkeypatch, how):
    folder, calls = store
    model = _small_model()
    converter.convert(model, "dynamic")
    (entry,) = _entries(folder)
    stamp = entry.stat().st_mtime_ns
    if how == "environment":
        monkeypatch.setenv("QUANTDOCTOR_CACHE", "0")
        converter.convert(model, "dynamic")
        converter.convert(model, "float16")
    else:
        with use_cache(False), use_cache(True):  # an inner True does not re-enable
            converter.convert(model, "dynamic")
            converter.convert(model, "float16")
    assert calls["convert"] == 3  # the cached dynamic model was not read
    assert _entries(folder) == [entry] and entry.stat().st_mtime_ns == stamp


def test_no_cache_on_the_command_line_keeps_the_cache_empty(store, tmp_path, capsys):
    from quantdoctor.cli.main import main

    folder, _ = store
    path, data = tmp_path / "small.keras", tmp_path / "data.npz"
    _small_model().save(path)
    x = np.random.default_rng(0).uniform(-1, 1, (24, 8, 8, 3)).astype("float32")
    np.savez(data, x=x)
    argv = ["diagnose", str(path), "--data", str(data), "--scheme", "dynamic", "--no-explain", "--json",
            "--no-progress"]
    assert main([*argv, "--no-cache"]) == 0, capsys.readouterr().err
    assert _entries(folder) == []
    assert main(argv) == 0, capsys.readouterr().err
    assert len(_entries(folder)) == 2  # the float and the dynamic model


def test_the_diagnose_config_flag_reaches_the_converter(store, tmp_path):
    import quantdoctor

    folder, calls = store
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).uniform(-1, 1, (24, 8, 8, 3)).astype("float32"))
    path = tmp_path / "small.keras"
    _small_model().save(path)
    quantdoctor.diagnose(path, data, scheme="dynamic", explain=False, cache=False)
    assert _entries(folder) == []
    quantdoctor.diagnose(path, data, scheme="dynamic", explain=False)
    quantdoctor.diagnose(path, data, scheme="dynamic", explain=False)
    assert calls["convert"] == 2 + 2  # float + dynamic without the cache, then both once; the third run converts nothing


def test_entries_are_written_whole_even_with_concurrent_writers_and_readers(tmp_path):
    c = Cache(tmp_path)
    payloads = [bytes([i]) * (3 << 20) for i in range(4)]  # 3 MB each: a torn write would show
    key = cache_key({"op": "race"})
    seen: list[bytes | None] = []
    stop = threading.Event()

    def write(p):
        for _ in range(5):
            c.put(key, p, "race")

    def read():
        while not stop.is_set():
            seen.append(c.get(key))

    readers = [threading.Thread(target=read) for _ in range(2)]
    writers = [threading.Thread(target=write, args=(p,)) for p in payloads]
    for t in readers + writers:
        t.start()
    for t in writers:
        t.join()
    stop.set()
    for t in readers:
        t.join()
    found = [s for s in seen if s is not None]
    assert found and all(s in payloads for s in found)
    assert c.get(key) in payloads
    assert not list(tmp_path.rglob("*.tmp"))


def test_a_write_interrupted_before_the_rename_leaves_no_entry(tmp_path, monkeypatch):
    c = Cache(tmp_path)

    def crash(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(qcache.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        c.put("ab" * 32, b"model bytes")
    monkeypatch.undo()
    assert c.get("ab" * 32) is None
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_an_unwritable_folder_is_no_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    c = Cache(blocker)
    assert c.put("cd" * 32, b"x") is False
    assert c.get("cd" * 32) is None


def test_the_least_recently_used_entries_go_past_the_size_cap(tmp_path):
    import os

    c = Cache(tmp_path, max_bytes=3500)  # three entries of 1000 bytes (and a 48-byte header) fit, four do not
    keys = [hashlib.sha256(bytes([i])).hexdigest() for i in range(3)]
    for age, key in zip((300, 200, 100), keys):
        c.put(key, b"x" * 1000)
        entry = c._paths(key)[0]
        os.utime(entry, (entry.stat().st_atime - age,) * 2)
    c.get(keys[0])  # used now: the oldest by creation, the newest by use
    new = hashlib.sha256(b"new").hexdigest()
    c.put(new, b"y" * 1000)
    left = {p.stem for _, _, p in c.entries()}
    assert left == {keys[0], keys[2], new}
    assert not c._paths(keys[1])[1].exists()  # its sidecar went with it


def test_the_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    for name in ("QUANTDOCTOR_CACHE_DIR", "QUANTDOCTOR_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "quantdoctor"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "xdg" / "quantdoctor"
    monkeypatch.setenv("QUANTDOCTOR_CACHE", "0")  # a switch, not a folder
    assert cache_root() == tmp_path / "xdg" / "quantdoctor"
    monkeypatch.setenv("QUANTDOCTOR_CACHE", str(tmp_path / "legacy"))
    assert cache_root() == tmp_path / "legacy"
    monkeypatch.setenv("QUANTDOCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_root() == tmp_path / "mine"


def test_custom_layer_code_is_part_of_the_key_and_an_opaque_closure_is_not_cached(store):
    import keras

    folder, _ = store

    def scale(factor):  # two classes of one name, config and weights: only call() differs
        if factor == 2:
            class Scale(keras.layers.Layer):
                def call(self, x):
                    return 2 * x
        else:
            class Scale(keras.layers.Layer):
                def call(self, x):
                    return 3 * x
        return Scale

    Double, Triple = scale(2), scale(3)

    def model_with(layer_cls):
        keras.utils.set_random_seed(0)
        inp = keras.Input((6,), name="x")
        return keras.Model(inp, keras.layers.Dense(4, name="d")(layer_cls(name="custom")(inp)), name="m")

    double, triple = model_with(Double), model_with(Triple)
    assert double.to_json() == triple.to_json()
    assert qcache.digest_keras_model(double) != qcache.digest_keras_model(triple)
    assert qcache.digest_keras_model(double) == qcache.digest_keras_model(model_with(Double))

    table = np.ones(3, np.float32)

    class Lookup(keras.layers.Layer):  # reads an array from its closure: its value cannot be keyed cheaply
        def call(self, x):
            return x * table[0]

    with pytest.raises(qcache.Uncacheable):
        qcache.digest_keras_model(model_with(Lookup))
    made = []
    for _ in range(2):
        qcache.cached("test", lambda: qcache.digest_source(model_with(Lookup)), lambda: made.append(1) or b"bytes")
    assert len(made) == 2 and _entries(folder) == []


def test_onnx_quantization_is_cached_unless_the_calibrator_is_replaced(tmp_path, monkeypatch):
    import sys

    from quantdoctor.quantize import onnxrt
    from tests.onnx_models import digits, mlp_onnx

    monkeypatch.setenv("QUANTDOCTOR_CACHE_DIR", str(tmp_path))
    calls = []
    real = onnxrt._quantize_onnx
    monkeypatch.setattr(onnxrt, "_quantize_onnx", lambda *a: calls.append(1) or real(*a))
    model, x = mlp_onnx(), digits()[0][:16]
    calib = lambda: iter([x])  # noqa: E731
    first = onnxrt.quantize_onnx(model, "ort-qdq-int8", calib)
    assert onnxrt.quantize_onnx(model, "ort-qdq-int8", calib) == first and len(calls) == 1
    onnxrt.quantize_onnx(model, "ort-qdq-int8", lambda: iter([x[:8]]))
    onnxrt.quantize_onnx(model, "ort-qdq-int8", calib, nodes_to_exclude=["hidden"])
    assert len(calls) == 3
    module = sys.modules["onnxruntime.quantization.quantize"]
    ort_calibrator = module.create_calibrator
    monkeypatch.setattr(module, "create_calibrator", lambda *a, **k: ort_calibrator(*a, **k))  # as repair does
    assert onnxrt.quantize_onnx(model, "ort-qdq-int8", calib) == first
    assert len(calls) == 4  # a stand-in calibrator: the stored model is not served
