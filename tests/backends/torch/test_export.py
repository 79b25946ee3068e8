"""Exporting PyTorch models to ONNX: numerics under ONNX Runtime, dynamic batch, module-path labels, .pt2 programs."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from quantdoctor.backends.torch.export import MIN_OPSET, export_onnx, load_pt2  # noqa: E402
from quantdoctor.errors import ModelLoadError, UserInputError  # noqa: E402

from .models import WEIGHTED_MODULES, batch, tiny_net  # noqa: E402

WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")


@pytest.fixture(scope="module")
def model():
    return tiny_net()


@pytest.fixture(scope="module")
def exported(model):
    return export_onnx(model, batch(1))


def _ort_run(model_bytes: bytes, x: np.ndarray) -> list[np.ndarray]:
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})


def _torch_run(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def test_onnx_runtime_matches_torch_at_another_batch_size(model, exported):
    x = batch(5, seed=3)  # exported from a batch of 1: the batch dimension must be symbolic
    (out,) = _ort_run(exported[0], x)
    assert out.shape == (5, 7)
    np.testing.assert_allclose(out, _torch_run(model, x), rtol=0, atol=1e-5)
    batch_dim = onnx.load_from_string(exported[0]).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.HasField("dim_value")


def test_model_is_opset_18_with_batch_norm_folded_into_the_convs(exported):
    proto = onnx.load_from_string(exported[0])
    assert {o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")} == {MIN_OPSET}
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Conv") == 2 and "BatchNormalization" not in ops


def test_weighted_ops_are_labelled_with_the_module_owning_their_weights(exported):
    model_bytes, labels = exported
    nodes = [n for n in onnx.load_from_string(model_bytes).graph.node if n.op_type in WEIGHTED_OPS]
    # The fused Conv+BN carries the BatchNorm's scope in the exporter's metadata; the label must still be the conv.
    assert tuple(labels[n.output[0]] for n in nodes) == WEIGHTED_MODULES
    assert [n.op_type for n in nodes].count("MatMul") == 1  # Linear on a 3-D tensor


def test_other_ops_are_labelled_with_their_innermost_module(model, exported):
    model_bytes, labels = exported
    by_type: dict[str, list[str]] = {}
    for node in onnx.load_from_string(model_bytes).graph.node:
        by_type.setdefault(node.op_type, []).append(labels.get(node.output[0], ""))
    assert by_type["Relu"] == ["features.0.0.act", "features.0.1.act", "mixer"]  # torch.relu in Mixer.forward
    assert by_type["MaxPool"] == ["features.1"]
    assert set(labels.values()) <= {name for name, _ in model.named_modules()}


def test_node_metadata_is_stripped_from_the_model(exported):
    proto = onnx.load_from_string(exported[0])
    assert not any(node.metadata_props for node in proto.graph.node)


def test_training_flag_is_restored_and_export_uses_eval_mode(model):
    model.train()
    try:
        model_bytes, _ = export_onnx(model, torch.from_numpy(batch(2)))
        assert model.training and model.features[0][0].bn.training
    finally:
        model.eval()
    x = batch(3, seed=4)
    np.testing.assert_allclose(_ort_run(model_bytes, x)[0], _torch_run(model, x), rtol=0, atol=1e-5)


def test_pt2_program_exports_with_the_same_labels(tmp_path, model, exported):
    example = (torch.from_numpy(batch(2)),)
    program = torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "tiny.pt2"
    torch.export.save(program, str(path))
    loaded = load_pt2(path)
    x = batch(4, seed=5)
    np.testing.assert_allclose(_torch_run(loaded, x), _torch_run(model, x), rtol=0, atol=1e-6)
    model_bytes, labels = export_onnx(loaded, x[:1])
    np.testing.assert_allclose(_ort_run(model_bytes, x)[0], _torch_run(model, x), rtol=0, atol=1e-5)
    weighted = [n.output[0] for n in onnx.load_from_string(model_bytes).graph.node if n.op_type in WEIGHTED_OPS]
    assert tuple(labels[name] for name in weighted) == WEIGHTED_MODULES


def test_pt2_program_with_a_fixed_batch_keeps_it(tmp_path, model):
    program = torch.export.export(model, (torch.from_numpy(batch(1)),))  # no dynamic_shapes: batch fixed at 1
    path = tmp_path / "fixed.pt2"
    torch.export.save(program, str(path))
    model_bytes, labels = export_onnx(load_pt2(path), batch(1))
    batch_dim = onnx.load_from_string(model_bytes).graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_value == 1
    x = batch(1, seed=7)
    np.testing.assert_allclose(_ort_run(model_bytes, x)[0], _torch_run(model, x), rtol=0, atol=1e-5)
    assert labels


def test_exported_program_itself_can_be_exported(model):
    program = torch.export.export(model, (torch.from_numpy(batch(2)),))
    model_bytes, labels = export_onnx(program, batch(2))
    x = batch(2, seed=6)
    np.testing.assert_allclose(_ort_run(model_bytes, x)[0], _torch_run(model, x), rtol=0, atol=1e-5)
    assert WEIGHTED_MODULES[0] in labels.values()


def test_output_names_rename_outputs_and_their_labels(model):
    model_bytes, labels = export_onnx(model, batch(2), input_names=["image"], output_names=["logits"])
    graph = onnx.load_from_string(model_bytes).graph
    assert [i.name for i in graph.input] == ["image"] and [o.name for o in graph.output] == ["logits"]
    assert labels["logits"] == "head.1"


def test_load_pt2_errors_name_the_problem(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_pt2(tmp_path / "missing.pt2")
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"not a zip archive")
    with pytest.raises(ModelLoadError, match="not a torch.export program"):
        load_pt2(junk)


def test_bad_arguments_raise_user_input_errors(model):
    with pytest.raises(UserInputError, match="opset 17 is too old"):
        export_onnx(model, batch(1), opset=17)
    with pytest.raises(UserInputError, match="numpy array or torch tensor"):
        export_onnx(model, [[1.0, 2.0]])


def test_export_failure_is_a_model_load_error():
    class Branchy(torch.nn.Module):
        def forward(self, x):  # a Python branch on data: torch.export cannot trace it
            if x.sum() > 0:
                return x
            return -x

    # The message is the root cause's first line, not the exporter's generic "step 1/3" banner.
    with pytest.raises(ModelLoadError, match="torch.onnx.export failed: Could not guard on data-dependent"):
        export_onnx(Branchy(), batch(2))
