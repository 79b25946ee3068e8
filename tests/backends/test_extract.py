"""Cutting single ops out of float, dynamic-range, full-int8 and float16 .tflite models."""

from __future__ import annotations

import functools
import warnings

import numpy as np
import pytest

from quantdoctor.backends.tflite.extract import (
    extract_op,
    extract_ops,
    op_type,
    plan,
    tensor_quantization,
    to_tensor_dtype,
    write_repro,
)
from quantdoctor.backends.tflite.runner import TfliteRunner
from quantdoctor.errors import ModelLoadError, UserInputError

BATCH = 4


@functools.cache
def converted() -> dict[str, bytes]:
    """A small MobileNet-like block converted four ways.

    The convs and the dense layer have > 1024 weights, so dynamic-range quantization makes them hybrid ops. The
    depthwise conv has fewer on purpose: LiteRT's hybrid depthwise kernel reads one weight scale per channel, and with
    the single per-tensor scale this converter setting writes, it reads past the end of the array (garbage output,
    different every run), which a test must not depend on.
    """
    import keras
    import tensorflow as tf
    from keras import layers

    keras.utils.set_random_seed(0)
    inp = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(48, 3, padding="same", use_bias=False, name="stem")(inp)  # 1296 weights
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    y = layers.DepthwiseConv2D(3, padding="same", name="dw")(x)  # 432 weights: left in float by dynamic range
    y = layers.Conv2D(48, 1, name="proj")(y)  # 2304 weights
    x = layers.Add(name="add")([x, y])
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    out = layers.Dense(32, name="fc")(x)  # 1536 weights
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    bn = model.get_layer("stem_bn")
    bn.set_weights([rng.uniform(0.5, 1.5, 48), rng.normal(0, 0.2, 48), rng.normal(0, 0.3, 48), rng.uniform(0.5, 2, 48)])

    def convert(**options) -> bytes:
        conv = tf.lite.TFLiteConverter.from_keras_model(model)
        if options:
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
        if options.get("per_tensor"):
            conv._experimental_disable_per_channel = True
        if options.get("int8"):
            samples = [rng.uniform(-1, 1, (1, 16, 16, 3)).astype("float32") for _ in range(8)]
            conv.representative_dataset = lambda: ([s] for s in samples)
        if options.get("float16"):
            conv.target_spec.supported_types = [tf.float16]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
            return bytes(conv.convert())

    return {
        "float": convert(),
        "dynamic": convert(per_tensor=True),
        "int8": convert(int8=True),
        "float16": convert(float16=True),
    }


def sample_input(seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1, 1, (BATCH, 16, 16, 3)).astype("float32")


def capture(model: bytes, x: np.ndarray) -> tuple[TfliteRunner, dict[int, np.ndarray]]:
    """Every activation of the full model on `x`, dequantized to float32."""
    runner = TfliteRunner(model, batch_size=len(x), num_threads=1)
    return runner, runner.capture(x, runner.graph.activations())


def stored(model: bytes, tensor: int, value: np.ndarray) -> np.ndarray:
    """A captured float value back in the tensor's stored dtype (exact for values the model itself produced)."""
    return to_tensor_dtype(value, *tensor_quantization(model, tensor))


def run_extract(extracted: bytes, arrays: list[np.ndarray]) -> list[np.ndarray]:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interp = Interpreter(
        model_content=extracted, experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    for detail, array in zip(interp.get_input_details(), arrays, strict=True):
        interp.resize_tensor_input(detail["index"], array.shape, strict=True)  # strict: the batch must be dynamic
    interp.allocate_tensors()
    for detail, array in zip(interp.get_input_details(), arrays, strict=True):
        interp.set_tensor(detail["index"], array)
    interp.invoke()
    return [interp.get_tensor(d["index"]).copy() for d in interp.get_output_details()]


def parsed(model: bytes):
    from ai_edge_litert import schema_py_generated as schema_fb

    return schema_fb.ModelT.InitFromObj(schema_fb.Model.GetRootAsModel(model, 0))


def test_extract_holds_one_op_its_constants_and_a_dynamic_batch():
    model = converted()["float"]
    runner, _ = capture(model, sample_input())
    conv = next(op for op in runner.graph.ops if op.type == "DEPTHWISE_CONV_2D")
    extracted = extract_op(model, conv.index)
    m = parsed(extracted)
    sub = m.subgraphs[0]
    assert len(m.subgraphs) == 1 and len(sub.operators) == 1 and len(m.operatorCodes) == 1
    assert op_type(extracted, 0) == "DEPTHWISE_CONV_2D"
    assert sub.operators[0].opcodeIndex == 0
    assert len(sub.inputs) == 1 and len(sub.outputs) == 1 and len(sub.tensors) == 4  # input, weights, bias, output
    assert len(m.buffers) == 3  # the empty buffer plus weights and bias, nothing else of the model
    assert sub.tensors[sub.inputs[0]].shapeSignature[0] == -1
    assert sub.tensors[sub.inputs[0]].name == runner.graph.tensors[conv.inputs[0]].name.encode()
    assert [t.name for t in m.signatureDefs[0].inputs] == [b"input_0"]
    assert not m.metadata
    weights = sub.tensors[sub.operators[0].inputs[1]]
    assert np.frombuffer(bytes(m.buffers[weights.buffer].data), np.float32).size == 3 * 3 * 48
    assert len(extracted) < len(model) / 4


def test_every_float_op_reproduces_the_full_model():
    model = converted()["float"]
    runner, acts = capture(model, sample_input())
    assert len(runner.graph.ops) == 6
    for op in runner.graph.ops:
        io = plan(model, [op.index])
        (out,) = run_extract(extract_op(model, op.index), [acts[t] for t in io.inputs])
        np.testing.assert_allclose(out, acts[op.outputs[0]], atol=1e-6, err_msg=op.type)


def test_dynamic_range_extract_runs_the_same_hybrid_kernel():
    model = converted()["dynamic"]
    runner, acts = capture(model, sample_input())
    graph = runner.graph
    hybrid = [op for op in graph.ops if op.type in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    assert [graph.tensors[op.inputs[1]].dtype for op in hybrid] == ["int8", "float32", "int8", "int8"]
    for op in graph.ops:
        (out,) = run_extract(extract_op(model, op.index), [acts[t] for t in plan(model, [op.index]).inputs])
        np.testing.assert_allclose(out, acts[op.outputs[0]], atol=1e-5, rtol=0, err_msg=op.type)


def test_int8_extract_is_bit_exact():
    model = converted()["int8"]
    runner, acts = capture(model, sample_input())
    ops = runner.graph.ops
    assert [op.type for op in ops][:2] == ["QUANTIZE", "CONV_2D"] and ops[-1].type == "DEQUANTIZE"
    for op in ops:
        io = plan(model, [op.index])
        inputs = [stored(model, t, acts[t]) for t in io.inputs]
        (out,) = run_extract(extract_op(model, op.index), inputs)
        want = stored(model, op.outputs[0], acts[op.outputs[0]])
        assert out.dtype == want.dtype
        assert np.array_equal(out, want), op.type
    add = next(op for op in ops if op.type == "ADD")
    assert len(plan(model, [add.index]).inputs) == 2  # both activations of the residual come from outside


def test_weight_dequantize_is_kept_with_its_op():
    model = converted()["float16"]
    runner, acts = capture(model, sample_input())
    graph = runner.graph
    weighted = [op for op in graph.ops if op.type in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")]
    assert len(weighted) == 4
    for op in weighted:
        io = plan(model, [op.index])
        unpacked = [t for t in op.inputs if t >= 0 and graph.producer_type(t) == "DEQUANTIZE"]
        assert [graph.op(i).type for i in io.ops] == ["DEQUANTIZE"] * len(unpacked) + [op.type]
        assert io.outputs == op.outputs  # the float16 bias is shared with other convs, yet it is no output here
        (out,) = run_extract(extract_op(model, op.index), [acts[t] for t in io.inputs])
        np.testing.assert_allclose(out, acts[op.outputs[0]], atol=1e-6, err_msg=op.type)
    m = parsed(extract_op(model, weighted[0].index))
    assert len(m.operatorCodes) == 2 and len(m.subgraphs[0].operators) == 3  # weights and bias stored as float16


def test_extract_ops_cuts_a_chain():
    model = converted()["float"]
    runner, acts = capture(model, sample_input())
    kinds = [op.type for op in runner.graph.ops]
    first, last = kinds.index("DEPTHWISE_CONV_2D"), kinds.index("ADD")
    io = plan(model, range(first, last + 1))
    assert io.inputs == runner.graph.op(first).inputs[:1]  # the residual branch input is read once
    assert io.outputs == runner.graph.op(last).outputs  # inner tensors consumed inside are not outputs
    (out,) = run_extract(extract_ops(model, range(first, last + 1)), [acts[t] for t in io.inputs])
    np.testing.assert_allclose(out, acts[io.outputs[0]], atol=1e-5)


def test_write_repro_writes_a_runnable_reproduction(tmp_path):
    model = converted()["int8"]
    runner, acts = capture(model, sample_input())
    conv = next(op for op in runner.graph.ops if op.type == "CONV_2D" and op.index > 1)
    io = plan(model, [conv.index])
    paths = write_repro(model, conv.index, [acts[t] for t in io.inputs], tmp_path / "repro")
    names = sorted(p.name for p in paths)
    assert names == sorted([f"op_{conv.index}_CONV_2D.tflite", f"op_{conv.index}_input0.npy", "README.txt"])
    assert sorted(p.name for p in (tmp_path / "repro").iterdir()) == names  # no temporary files left behind
    x = np.load(tmp_path / "repro" / f"op_{conv.index}_input0.npy")
    assert x.dtype == np.int8  # float activations were quantized with the op input's scale
    (out,) = run_extract((tmp_path / "repro" / f"op_{conv.index}_CONV_2D.tflite").read_bytes(), [x])
    assert np.array_equal(out, stored(model, conv.outputs[0], acts[conv.outputs[0]]))
    readme = (tmp_path / "repro" / "README.txt").read_text()
    assert "CONV_2D" in readme and "zero_point=" in readme and "per-channel axis 0: 48 scales" in readme
    assert "fusedActivationFunction=NONE" in readme and "padding=VALID" in readme  # 1x1 SAME is VALID


def test_readme_snippet_runs(tmp_path, monkeypatch):
    model = converted()["dynamic"]
    runner, acts = capture(model, sample_input())
    fc = next(op for op in runner.graph.ops if op.type == "FULLY_CONNECTED")
    write_repro(model, fc.index, [acts[t] for t in plan(model, [fc.index]).inputs], tmp_path)
    text = (tmp_path / "README.txt").read_text()
    code = "\n".join(line[2:] for line in text.split("Run it with LiteRT")[1].splitlines()[1:] if line.startswith("  "))
    printed: list = []
    monkeypatch.chdir(tmp_path)  # the snippet names its files relative to the README
    exec(code, {"print": printed.append})  # noqa: S102 - the README's own snippet
    np.testing.assert_allclose(printed[0], acts[fc.outputs[0]], atol=1e-5)


def test_bad_requests_say_what_is_wrong(tmp_path):
    model = converted()["float"]
    with pytest.raises(UserInputError, match="op 99 does not exist; the model's main graph has ops 0-5"):
        extract_op(model, 99)
    with pytest.raises(UserInputError, match="takes 1 input"):
        write_repro(model, 0, [], tmp_path)
    with pytest.raises(ModelLoadError, match="TFL3"):
        extract_op(b"not a model at all", 0)
