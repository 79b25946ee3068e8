"""Tests for backends/keras/loader.py: telling model kinds apart and loading .keras / .h5 files."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from quantdoctor.backends.keras.loader import (
    ModelSource,
    detect_source,
    load_keras_model,
    one_line,
    require_fixed_input_shape,
)
from quantdoctor.errors import ModelLoadError

TFLITE_HEADER = b"\x1c\x00\x00\x00TFL3" + bytes(24)


def build_small_model(input_shape=(8, 8, 3)):
    import keras
    from keras import layers

    keras.utils.set_random_seed(1)
    inputs = keras.Input(input_shape, name="image")
    x = layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(6.0, name="relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(3, name="logits")(x)
    model = keras.Model(inputs, outputs, name="small")
    # Non-trivial BN statistics, so that a load that drops them would change the output.
    bn = model.get_layer("bn")
    bn.set_weights([np.full(4, 1.5, "f4"), np.full(4, 0.1, "f4"), np.full(4, 0.2, "f4"), np.full(4, 2.0, "f4")])
    return model


@pytest.fixture(scope="module")
def small_model():
    return build_small_model()


@pytest.fixture(scope="module")
def sample():
    return np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32)


# --- detect_source -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["m.keras", "m.h5", "m.hdf5", "M.H5"])
def test_keras_files_are_detected_by_suffix(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"anything")
    assert detect_source(path) == ModelSource("keras", path)


def test_saved_model_folder_is_detected(tmp_path):
    (tmp_path / "saved_model.pb").write_bytes(b"")
    assert detect_source(tmp_path) == ModelSource("savedmodel", tmp_path)


def test_tflite_is_detected_by_its_identifier_even_with_another_suffix(tmp_path):
    for name in ("m.tflite", "m.bin"):
        path = tmp_path / name
        path.write_bytes(TFLITE_HEADER)
        assert detect_source(str(path)) == ModelSource("tflite", path)


def test_tflite_without_identifier_is_refused(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(b"PK\x03\x04 this is a zip, not a flatbuffer")
    with pytest.raises(ModelLoadError, match="TFL3"):
        detect_source(path)


@pytest.mark.parametrize("name", ["m.pt", "weights"])
def test_other_files_are_refused_with_the_supported_kinds(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x00" * 16)
    with pytest.raises(ModelLoadError, match=r"is not a \.keras, \.h5, SavedModel directory, \.tflite, \.onnx or \.pt2 file"):
        detect_source(path)


def test_onnx_files_are_told_apart_by_suffix(tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"\x00" * 16)  # its content is checked when the ONNX backend reads it
    assert detect_source(path) == ModelSource("onnx", path)


def test_folder_without_saved_model_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="no saved_model.pb"):
        detect_source(tmp_path)


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        detect_source(tmp_path / "nope.keras")


def test_model_source_refuses_unknown_kind():
    with pytest.raises(ValueError, match="pytorch"):
        ModelSource("pytorch", Path("m.pt"))


# --- load_keras_model ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_round_trip_gives_the_same_outputs(tmp_path, small_model, sample, suffix):
    path = tmp_path / f"small{suffix}"
    small_model.save(path)  # .h5 here is Keras 3's legacy HDF5 writer
    loaded = load_keras_model(path)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in small_model.layers]
    np.testing.assert_allclose(loaded.predict(sample, verbose=0), small_model.predict(sample, verbose=0), atol=1e-6)


def test_loads_a_tf_keras_2_hdf5_file(tmp_path, sample):
    rng = np.random.default_rng(2)
    weights = {
        "conv/kernel:0": rng.normal(0, 0.3, (3, 3, 3, 4)),
        "bn/gamma:0": rng.uniform(0.5, 1.5, 4),
        "bn/beta:0": rng.normal(0, 0.1, 4),
        "bn/moving_mean:0": rng.normal(0, 0.1, 4),
        "bn/moving_variance:0": rng.uniform(0.5, 2.0, 4),
        "logits/kernel:0": rng.normal(0, 0.5, (4, 3)),
        "logits/bias:0": rng.normal(0, 0.1, 3),
    }
    weights = {name: value.astype(np.float32) for name, value in weights.items()}
    path = tmp_path / "keras2.h5"
    write_tf_keras_2_h5(path, weights)

    loaded = load_keras_model(path)

    # Oracle: the same architecture built fresh in Keras 3 with the same arrays.
    reference = build_small_model()
    order = ["conv/kernel:0", "bn/gamma:0", "bn/beta:0", "bn/moving_mean:0", "bn/moving_variance:0"]
    reference.set_weights([weights[n] for n in order] + [weights["logits/kernel:0"], weights["logits/bias:0"]])
    assert loaded.name == "k2net"
    np.testing.assert_allclose(loaded.predict(sample, verbose=0), reference.predict(sample, verbose=0), atol=1e-6)


@pytest.mark.parametrize("name", ["broken.keras", "broken.h5"])
def test_unreadable_file_gives_one_line_error_with_path(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"not a model at all" * 10)
    with pytest.raises(ModelLoadError) as caught:
        load_keras_model(path)
    message = str(caught.value)
    assert str(path) in message
    assert "\n" not in message and "Traceback" not in message
    assert ("not a .keras file" if name.endswith(".keras") else "not an HDF5 file") in message
    assert "File not found" not in message  # what Keras itself says of a file that exists


def test_a_zip_that_is_not_a_keras_model_gives_keras_reason(tmp_path):
    import zipfile

    path = tmp_path / "other.keras"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "a zip, but not a Keras model")
    with pytest.raises(ModelLoadError) as caught:
        load_keras_model(path)
    assert str(caught.value).startswith(f"cannot load Keras model {path}")


def test_python_code_in_the_file_needs_safe_mode_off(tmp_path, sample):
    import keras

    inputs = keras.Input((8, 8, 3))
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2.0)(inputs)).save(path)
    with pytest.raises(ModelLoadError, match="safe_mode=False"):
        load_keras_model(path)
    np.testing.assert_allclose(load_keras_model(path, safe_mode=False).predict(sample, verbose=0), sample * 2.0)


def test_missing_keras_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_keras_model(tmp_path / "gone.keras")


def test_open_spatial_size_is_refused(tmp_path):
    path = tmp_path / "open.keras"
    build_small_model(input_shape=(None, None, 3)).save(path)
    with pytest.raises(ModelLoadError, match="fixed input size") as caught:
        load_keras_model(path)
    assert "(None, None, None, 3)" in str(caught.value)


def test_fixed_input_shape_passes(small_model):
    require_fixed_input_shape(small_model, "small")  # raises on failure


def test_one_line_squeezes_and_truncates():
    assert one_line("a\n  b\tc\n") == "a b c"
    long = one_line("x" * 500, limit=50)
    assert len(long) == 50 and long.endswith("...")


# --- a tf.keras 2.x HDF5 file, written byte-for-byte the way tf_keras 2.21 writes it -------------------------------
# The structure below was copied from a file written by tf_keras 2.21.0 (`model.save("x.h5")` on this architecture,
# compiled with Adam/MSE); Keras 3.15 loaded that genuine file with outputs identical (max |diff| = 0) to tf_keras.
# tf_keras is not a dependency, so the test rebuilds such a file with h5py instead of calling tf_keras.

_INIT = {"module": "keras.initializers", "config": {}, "registered_name": None}
_GLOROT = {**_INIT, "class_name": "GlorotUniform", "config": {"seed": None}}
_ZEROS = {**_INIT, "class_name": "Zeros"}
_ONES = {**_INIT, "class_name": "Ones"}
_NO_REGULARIZERS = dict.fromkeys(
    ["kernel_regularizer", "bias_regularizer", "activity_regularizer", "kernel_constraint", "bias_constraint"]
)


def _layer(class_name, name, config, inbound):
    nodes = [[[inbound, 0, 0, {}]]] if inbound else []
    return {"class_name": class_name, "config": {"name": name, **config}, "name": name, "inbound_nodes": nodes}


def tf_keras_2_config():
    base = {"trainable": True, "dtype": "float32"}
    return {
        "class_name": "Functional",
        "config": {
            "name": "k2net",
            "trainable": True,
            "layers": [
                _layer("InputLayer", "image", {"batch_input_shape": [None, 8, 8, 3], "dtype": "float32",
                                               "sparse": False, "ragged": False, "optional": False}, None),
                _layer("Conv2D", "conv", {**base, "filters": 4, "kernel_size": [3, 3], "strides": [1, 1],
                                          "padding": "same", "data_format": "channels_last", "dilation_rate": [1, 1],
                                          "groups": 1, "activation": "linear", "use_bias": False,
                                          "kernel_initializer": _GLOROT, "bias_initializer": _ZEROS,
                                          **_NO_REGULARIZERS}, "image"),
                _layer("BatchNormalization", "bn", {**base, "axis": [3], "momentum": 0.99, "epsilon": 0.001,
                                                    "center": True, "scale": True, "beta_initializer": _ZEROS,
                                                    "gamma_initializer": _ONES, "moving_mean_initializer": _ZEROS,
                                                    "moving_variance_initializer": _ONES, "beta_regularizer": None,
                                                    "gamma_regularizer": None, "beta_constraint": None,
                                                    "gamma_constraint": None}, "conv"),
                _layer("ReLU", "relu", {**base, "max_value": 6.0, "negative_slope": 0.0, "threshold": 0.0}, "bn"),
                _layer("GlobalAveragePooling2D", "gap", {**base, "data_format": "channels_last", "keepdims": False},
                       "relu"),
                _layer("Dense", "logits", {**base, "units": 3, "activation": "linear", "use_bias": True,
                                           "kernel_initializer": _GLOROT, "bias_initializer": _ZEROS,
                                           **_NO_REGULARIZERS}, "gap"),
            ],
            "input_layers": [["image", 0, 0]],
            "output_layers": [["logits", 0, 0]],
        },
    }


_TRAINING_CONFIG = {
    "loss": "mse", "metrics": None, "weighted_metrics": None, "loss_weights": None,
    "optimizer_config": {"class_name": "Custom>Adam", "config": {
        "name": "Adam", "weight_decay": None, "clipnorm": None, "global_clipnorm": None, "clipvalue": None,
        "use_ema": False, "ema_momentum": 0.99, "ema_overwrite_frequency": None, "jit_compile": False,
        "is_legacy_optimizer": False, "learning_rate": 0.0010000000474974513, "beta_1": 0.9, "beta_2": 0.999,
        "epsilon": 1e-07, "amsgrad": False}},
}


def write_tf_keras_2_h5(path, weights):
    """Write `weights` ({"layer/var:0": array}) as tf_keras 2.21's `save_model_to_hdf5` does."""
    layer_names = ["image", "conv", "bn", "relu", "gap", "logits"]
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = "tensorflow"
        f.attrs["keras_version"] = "2.21.0"
        f.attrs["model_config"] = json.dumps(tf_keras_2_config())
        f.attrs["training_config"] = json.dumps(_TRAINING_CONFIG)
        group = f.create_group("model_weights")
        group.attrs["layer_names"] = [name.encode("utf8") for name in layer_names]
        group.attrs["backend"] = b"tensorflow"
        group.attrs["keras_version"] = b"2.21.0"
        for layer in sorted(layer_names):
            layer_group = group.create_group(layer)
            names = [n for n in weights if n.startswith(layer + "/")]
            layer_group.attrs["weight_names"] = [n.encode("utf8") for n in names] if names else np.asarray([])
            for name in names:
                layer_group.create_dataset(f"{layer}/{name.split('/', 1)[1]}", data=weights[name])
        group.create_group("top_level_model_weights").attrs["weight_names"] = np.asarray([])
        optimizer = f.create_group("optimizer_weights")
        optimizer.attrs["weight_names"] = [b"iteration:0"]
        optimizer.create_dataset("iteration:0", data=np.int64(0))
