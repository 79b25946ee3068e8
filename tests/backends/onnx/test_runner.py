"""OnnxRunner: the same outputs as a plain ONNX Runtime session, every activation capturable, bad files refused."""

from __future__ import annotations

import numpy as np
import pytest

from quantdoctor.backends.onnx.graph import tensor_ids
from quantdoctor.backends.onnx.loader import load_session, read_onnx
from quantdoctor.backends.onnx.runner import OnnxRunner
from quantdoctor.errors import DataError, ModelLoadError
from tests.backends.onnx.models import MODELS, SCHEMES, float_model, quantized, sample_input


def plain_run(model: bytes, x: np.ndarray, names: list[str] | None = None, optimize: bool = True) -> list[np.ndarray]:
    """A default ONNX Runtime session (optimizations on unless told), fed sample by sample when the batch is fixed."""
    import onnx
    import onnxruntime as ort

    proto = onnx.load_from_string(model)
    for name in names or ():
        if name not in {o.name for o in proto.graph.output}:
            proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    opts = ort.SessionOptions()
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    fetch = names or [sess.get_outputs()[0].name]
    if isinstance(inp.shape[0], int):
        reached = {inp.name}
        for node in proto.graph.node:  # tensors computed from the input carry its batch dim
            if reached.intersection(node.input):
                reached.update(node.output)
        per_sample = [sess.run(fetch, {inp.name: x[i:i + 1]}) for i in range(len(x))]
        return [np.concatenate([s[k] for s in per_sample]) if per_sample[0][k].ndim and name in reached
                else per_sample[0][k] for k, name in enumerate(fetch)]
    return sess.run(fetch, {inp.name: x})


def variants():
    return [(kind, None) for kind in MODELS] + [(kind, s) for kind in MODELS for s in SCHEMES]


def model_of(kind, scheme) -> bytes:
    return float_model(kind) if scheme is None else quantized(kind, scheme)


@pytest.mark.parametrize(("kind", "scheme"), variants())
def test_run_equals_onnxruntime(kind, scheme):
    model = model_of(kind, scheme)
    runner = OnnxRunner(model, batch_size=8)
    x = sample_input(5)
    out = runner.run(x)
    assert out.dtype == np.float32 and out.shape == (5, 7)
    np.testing.assert_array_equal(out, plain_run(model, x, optimize=False)[0])
    # ORT's optimized session (QDQ fused into integer kernels, Conv+Add fusions) agrees here to float rounding
    np.testing.assert_allclose(out, plain_run(model, x)[0], atol=1e-5)


def test_a_released_runner_makes_its_session_again_with_the_same_outputs():
    runner = OnnxRunner(model_of(MODELS[0], SCHEMES[0]), batch_size=8)
    x = sample_input(5)
    before = runner.run_all(x)
    runner.release()
    assert runner._session is None
    after = runner.run_all(x)
    assert all(np.array_equal(a, b) for a, b in zip(before, after, strict=True))


@pytest.mark.parametrize(("kind", "scheme"), variants())
def test_capture_returns_every_activation_as_a_plain_session_computes_it(kind, scheme):
    model = model_of(kind, scheme)
    runner = OnnxRunner(model)
    g = runner.graph
    x = sample_input(3)
    acts = g.activations()
    got = runner.capture(x, acts)
    assert list(got) == acts
    computed = [t for t in acts if g.tensors[t].producer is not None]
    raw = plain_run(model, x, [g.tensors[t].name for t in computed], optimize=False)
    for t, ref in zip(computed, raw, strict=True):
        info = g.tensors[t]
        value = got[t]
        assert value.dtype == np.float32 and value.shape == ref.shape, info.name
        if info.quant is None:
            np.testing.assert_array_equal(value, ref.astype(np.float32), err_msg=info.name)
        else:  # integer tensors come back dequantized: (q - zero point) * scale
            assert ref.dtype.kind in "iu"
            zp, scale = np.float32(info.quant.zero_points[0]), np.float32(info.quant.scales[0])
            expected = (ref.astype(np.float32) - zp) * scale
            np.testing.assert_allclose(value, expected, rtol=1e-6, err_msg=info.name)
    np.testing.assert_array_equal(got[g.inputs[0]], x)


def test_float_captures_match_the_onnx_reference_evaluator():
    """An independent oracle: the ONNX standard's numpy evaluator, every intermediate tensor."""
    from onnx.reference import ReferenceEvaluator

    model = float_model("branchy")
    runner = OnnxRunner(model)
    x = sample_input(2)
    ids = tensor_ids(runner.graph)
    ref = ReferenceEvaluator(model)
    names = ["stem", "res_add", "cat", "logits"]
    values = ref.run(names, {"image": x}, intermediate=True)
    got = runner.capture(x, [ids[n] for n in names])
    for name in names:
        np.testing.assert_allclose(got[ids[name]], values[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_fixed_batch_model_runs_any_batch_in_chunks():
    runner = OnnxRunner(quantized("chain", "ort-qdq-int8"))
    x = sample_input(4)
    assert runner._fixed_batch == 1
    full = runner.run(x)
    np.testing.assert_array_equal(full[2:3], runner.run(x[2:3]))
    ids = tensor_ids(runner.graph)
    got = runner.capture(x, [ids["relu2"], ids["w1_quantized"]])
    assert got[ids["relu2"]].shape == (4, 24, 5, 5)
    assert got[ids["w1_quantized"]].shape == (16, 3, 3, 3)  # a constant, dequantized, not sliced along the batch


def test_specs_and_dynamic_batch():
    runner = OnnxRunner(quantized("branchy", "ort-dynamic"))
    (inp,) = runner.inputs()
    assert (inp.name, inp.shape, inp.dtype) == ("image", (3, 10, 10), "float32")
    assert [(o.name, o.shape) for o in runner.outputs()] == [("logits", (7,))]
    # dynamic quantization scales each activation by its batch's range: one batch is not its samples one by one
    x = sample_input(6)
    batch = runner.run(x)
    one = np.concatenate([runner.run(x[i:i + 1]) for i in range(6)])
    assert 0 < np.abs(batch - one).max() < 0.1


def test_bad_files_are_model_load_errors(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00\x01not a protobuf at all" * 10)
    with pytest.raises(ModelLoadError, match="not an ONNX model"):
        read_onnx(bad)
    with pytest.raises(ModelLoadError, match="does not exist"):
        read_onnx(tmp_path / "missing.onnx")
    with pytest.raises(ModelLoadError, match="not an ONNX model"):
        OnnxRunner(b"garbage bytes")
    good = tmp_path / "good.onnx"
    good.write_bytes(float_model("chain"))
    assert read_onnx(good) == float_model("chain")


def test_a_model_onnxruntime_refuses_is_one_line():
    from onnx import TensorProto, helper

    node = helper.make_node("NoSuchOp", ["x"], ["y"], domain="")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()
    with pytest.raises(ModelLoadError, match="^ONNX Runtime cannot load the model: ") as info:
        load_session(model)
    assert "\n" not in str(info.value)
    with pytest.raises(ModelLoadError):
        OnnxRunner(model)


def test_wrong_input_shape_is_a_data_error():
    runner = OnnxRunner(float_model("branchy"))
    with pytest.raises(DataError, match="ONNX Runtime cannot run the batch"):
        runner.run(np.zeros((2, 4, 10, 10), np.float32))
