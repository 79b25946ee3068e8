"""TF 1.x models as float models: a frozen graph (.pb) named by its arrays, and a TF 1 SavedModel's signature."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from quantdoctor import frozen_graph
from quantdoctor.cli.main import main

INPUT, OUTPUT = "input_1", "Identity"
SHAPE = (16, 16, 3)


def _freeze(model, spec_shape):
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import convert_variables_to_constants_v2

    fn = tf.function(lambda x: model(x)).get_concrete_function(tf.TensorSpec(spec_shape, tf.float32, name=INPUT))
    return convert_variables_to_constants_v2(fn).graph.as_graph_def()


@pytest.fixture(scope="module")
def frozen(tmp_path_factory):
    """A tiny conv + dense classifier, frozen as TF 1 tools did; the graph, an open-size twin and data."""
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input(SHAPE)
    x = keras.layers.Conv2D(48, 3, activation="relu", name="conv")(inp)  # 1296 weights: dynamic schemes quantize them
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dense(64, activation="relu", name="hidden")(x)
    model = keras.Model(inp, keras.layers.Dense(10, name="logits")(x))
    folder = tmp_path_factory.mktemp("tf1")
    graph_def = _freeze(model, (None, *SHAPE))
    (folder / "frozen_graph.pb").write_bytes(graph_def.SerializeToString())
    (folder / "open.pb").write_bytes(_freeze(model, (None, None, None, 3)).SerializeToString())
    x = np.random.default_rng(0).random((48, *SHAPE), dtype=np.float32)
    np.savez(folder / "data.npz", x=x)
    return {"model": model, "pb": str(folder / "frozen_graph.pb"), "open": str(folder / "open.pb"),
            "data": str(folder / "data.npz"), "x": x, "nodes": {n.name for n in graph_def.node}, "dir": folder}


def _run(capsys, argv):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(code, err, *needles):
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("quantdoctor: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


FAST = ["--no-progress", "--no-verify", "--explain-samples", "4", "--calib-count", "16"]


@pytest.mark.parametrize("scheme", ["dynamic-per-tensor", "int8", "toco-1x"])  # toco-1x: the seed user's pipeline
def test_diagnose_frozen_graph_labels_layers_with_node_names(frozen, capsys, scheme):
    before = _sha(frozen["pb"])
    code, out, err = _run(capsys, ["diagnose", frozen["pb"], "--data", frozen["data"], "--scheme", scheme,
                                   "--input-arrays", INPUT, "--output-arrays", OUTPUT, "--json", *FAST])
    assert code == 0, err
    report = json.loads(out)
    layers = report["layers"]
    quantized = [l for l in layers if l["op_type"] in ("CONV_2D", "FULLY_CONNECTED")]
    assert len(quantized) == 3
    assert all(l["label"] in frozen["nodes"] for l in layers), [l["label"] for l in layers]
    assert any(l["label"].endswith("conv_1/Relu") for l in quantized), [l["label"] for l in quantized]
    assert report["run"]["float_kind"] == "frozen" and report["run"]["float_model"] == frozen["pb"]
    assert _sha(frozen["pb"]) == before


def test_float_conversion_matches_keras(frozen):
    from quantdoctor.backends.tflite.runner import TfliteRunner
    from quantdoctor.quantize.converter import convert

    runner = TfliteRunner(convert(frozen_graph(frozen["pb"], [INPUT], [OUTPUT]), None), 16)
    x = frozen["x"][:16]
    np.testing.assert_allclose(runner.run(x), frozen["model"].predict(x, verbose=0), atol=1e-4)


def test_missing_arrays_are_asked_for_with_the_placeholders(frozen, capsys):
    code, _, err = _run(capsys, ["diagnose", frozen["pb"], "--data", frozen["data"], "--scheme", "dynamic"])
    _one_line_error(code, err, "needs --input-arrays and --output-arrays", f"Placeholder nodes: {INPUT}")


@pytest.mark.parametrize("flag, name, close", [("--input-arrays", "input1", INPUT),
                                               ("--output-arrays", "Identiti", OUTPUT)])
def test_unknown_node_is_named_with_close_names(frozen, capsys, flag, name, close):
    arrays = {"--input-arrays": INPUT, "--output-arrays": OUTPUT, flag: name}
    code, _, err = _run(capsys, ["diagnose", frozen["pb"], "--data", frozen["data"], "--scheme", "dynamic",
                                 *[a for kv in arrays.items() for a in kv]])
    _one_line_error(code, err, f"{flag}: frozen graph", f"no node '{name}'", close)


@pytest.mark.parametrize("content", [b"", bytes(np.random.default_rng(1).integers(0, 256, 300, dtype=np.uint8))])
def test_damaged_graph_gives_one_line(frozen, capsys, tmp_path, content):
    path = tmp_path / "damaged.pb"
    path.write_bytes(content)
    code, _, err = _run(capsys, ["diagnose", str(path), "--data", frozen["data"], "--scheme", "dynamic",
                                 "--input-arrays", INPUT, "--output-arrays", OUTPUT])
    _one_line_error(code, err, "is not a TensorFlow GraphDef")
    assert path.read_bytes() == content


@pytest.mark.parametrize("options, needle", [
    (["--input-shapes", "1,a,3"], "'a' is not a size"),
    (["--input-shapes", "1,16,16,3:1,10"], "2 shape(s) for 1 input array(s)"),
    (["--signature-key", "other"], "--signature-key is for a SavedModel folder"),
])
def test_badly_formed_options_give_one_line(frozen, capsys, options, needle):
    code, _, err = _run(capsys, ["diagnose", frozen["pb"], "--data", frozen["data"], "--scheme", "dynamic",
                                 "--input-arrays", INPUT, "--output-arrays", OUTPUT, *options])
    _one_line_error(code, err, needle)


def test_open_input_size_needs_input_shapes(frozen, capsys):
    from quantdoctor.backends.tflite.runner import TfliteRunner
    from quantdoctor.quantize.converter import convert

    code, _, err = _run(capsys, ["diagnose", frozen["open"], "--data", frozen["data"], "--scheme", "dynamic",
                                 "--input-arrays", INPUT, "--output-arrays", OUTPUT])
    _one_line_error(code, err, "(?, ?, ?, 3)", "--input-shapes")
    source = frozen_graph(frozen["open"], [INPUT], [OUTPUT], input_shapes=[(1, *SHAPE)])
    runner = TfliteRunner(convert(source, None), 16)
    assert runner.inputs()[0].shape == SHAPE
    np.testing.assert_allclose(runner.run(frozen["x"][:16]), frozen["model"].predict(frozen["x"][:16], verbose=0),
                               atol=1e-4)


def test_recipe_from_a_frozen_graph_applies_from_the_path(frozen, capsys, tmp_path):
    out = tmp_path / "repair"
    code, _, err = _run(capsys, ["repair", frozen["pb"], "--data", frozen["data"], "--scheme", "int8",
                                 "--input-arrays", INPUT, "--output-arrays", OUTPUT, "--max-drop", "100",
                                 "--calib-count", "16", "--out", str(out)])
    assert code == 0, err
    recipe = json.loads((out / "recipe.json").read_text())
    assert recipe["source"] == {"inputs": [INPUT], "outputs": [OUTPUT]}
    code, _, err = _run(capsys, ["apply", str(out / "recipe.json"), frozen["pb"], "--out", str(tmp_path / "a.tflite")])
    assert code == 0, err
    assert "same bytes as the repair run" in err
    assert (tmp_path / "a.tflite").read_bytes() == (out / "repaired.tflite").read_bytes()


@pytest.fixture(scope="module")
def tf1_saved_model(tmp_path_factory):
    """A TF 1 SavedModel (graph + builder) with two signatures: logits, and their softmax under 'probs'."""
    import tensorflow as tf

    v1 = tf.compat.v1
    folder = tmp_path_factory.mktemp("tf1sm") / "model"
    graph = tf.Graph()
    with graph.as_default():
        x = v1.placeholder(tf.float32, (None, *SHAPE), name="image")
        w = v1.get_variable("w", (3, 3, 3, 8), initializer=v1.random_normal_initializer(seed=0))
        h = tf.reduce_mean(tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME"), name="act"), axis=[1, 2])
        d = v1.get_variable("d", (8, 5), initializer=v1.random_normal_initializer(seed=1))
        logits = tf.identity(tf.matmul(h, d), name="logits")
        probs = tf.nn.softmax(logits, name="probs")
        with v1.Session(graph=graph) as session:
            session.run(v1.global_variables_initializer())
            builder = v1.saved_model.Builder(str(folder))
            signatures = {"serving_default": v1.saved_model.predict_signature_def({"image": x}, {"logits": logits}),
                          "probs": v1.saved_model.predict_signature_def({"image": x}, {"probs": probs})}
            builder.add_meta_graph_and_variables(session, ["serve"], signature_def_map=signatures)
            builder.save()
    return str(folder)


def test_tf1_saved_model_signature_key_chooses_the_signature(frozen, tf1_saved_model, capsys):
    outputs = {}
    for key in (None, "probs"):
        options = [] if key is None else ["--signature-key", key]
        code, out, err = _run(capsys, ["diagnose", tf1_saved_model, "--data", frozen["data"], "--scheme", "dynamic",
                                       "--json", *FAST, *options])
        assert code == 0, err
        outputs[key] = [l["op_type"] for l in json.loads(out)["layers"]]
    assert "SOFTMAX" in outputs["probs"] and "SOFTMAX" not in outputs[None]
    code, _, err = _run(capsys, ["diagnose", tf1_saved_model, "--data", frozen["data"], "--scheme", "dynamic",
                                 "--signature-key", "nope"])
    _one_line_error(code, err, "nope", "serving_default")


def test_compare_gives_the_arrays_to_the_frozen_graph(frozen, capsys, tmp_path):
    keras_path = tmp_path / "same.keras"
    frozen["model"].save(keras_path)
    code, out, err = _run(capsys, ["compare", frozen["pb"], str(keras_path), "--data", frozen["data"], "--scheme",
                                   "dynamic-per-tensor", "--input-arrays", INPUT, "--output-arrays", OUTPUT, "--json",
                                   "--no-progress", "--no-verify", "--explain-samples", "4"])
    assert code == 0, err
    result = json.loads(out)
    assert result["name_a"] == frozen["pb"]
    conv = [p for p in result["layers"] if p["op_type"] == "CONV_2D"]
    assert len(conv) == 1 and conv[0]["label_a"] in frozen["nodes"] and conv[0]["label_b"] == "conv"
    code, _, err = _run(capsys, ["compare", str(keras_path), str(keras_path), "--data", frozen["data"], "--scheme",
                                 "dynamic", "--input-arrays", INPUT, "--output-arrays", OUTPUT])
    _one_line_error(code, err, "--input-arrays is for a TF 1.x frozen graph (.pb)")
