"""Cuts of ONNX models: single ops alone, and splices (the model with chosen ops computed by the caller)."""

from __future__ import annotations

import numpy as np
import pytest

from quantdoctor.backends.base import Graph
from quantdoctor.backends.onnx.graph import tensor_ids
from quantdoctor.backends.onnx.runner import OnnxRunner
from quantdoctor.backends.onnx.subgraph import Subgraph, plan
from quantdoctor.errors import DataError, UserInputError
from quantdoctor.matching.match import match_graphs, through_conversions
from tests.backends.onnx.models import MODELS, SCHEMES, STATIC_SCHEMES, float_model, quantized, sample_input


def variants():
    return [(kind, None) for kind in MODELS] + [(kind, s) for kind in MODELS for s in SCHEMES]


def runner_of(kind, scheme) -> OnnxRunner:
    return OnnxRunner(float_model(kind) if scheme is None else quantized(kind, scheme))


def compute_ops(g: Graph) -> list[int]:
    return [op.index for op in g.ops if not g.is_weight_dequantize(op)]


def test_plan_keeps_weight_unpacks_and_reads_only_activations():
    runner = runner_of("branchy", "ort-qdq-int8")
    g, ids = runner.graph, tensor_ids(runner.graph)
    conv = g.op(g.tensors[ids["res_conv"]].producer)
    io = plan(runner.model, [conv.index])
    assert io.inputs == (ids["stem_relu_DequantizeLinear_Output"],) and io.outputs == (ids["res_conv"],)
    assert len(io.ops) == 3 and all(g.is_weight_dequantize(g.op(i)) for i in io.ops if i != conv.index)
    with pytest.raises(UserInputError, match="does not exist"):
        plan(runner.model, [len(g.ops)])


@pytest.mark.parametrize(("kind", "scheme"), variants())
def test_every_op_alone_reproduces_the_model(kind, scheme):
    """Each op fed the model's own (dequantized) inputs gives the model's own outputs, integers quantized back exactly.

    A model with a fixed batch of 1 and dynamic quantization has one run-time scale per sample; capture returns the
    first sample's, so that case is checked on one sample.
    """
    runner = runner_of(kind, scheme)
    x = sample_input(1 if kind == "chain" and scheme and "dynamic" in scheme else 3)
    g = runner.graph
    acts = runner.capture(x, [t for t in g.tensors if not g.tensors[t].is_constant])
    ops = runner.op_runner()
    for i in compute_ops(g):
        outs = ops.run_outputs(i, [acts[t] for t in ops.io(i).inputs])
        for t, v in zip(ops.io(i).outputs, outs, strict=True):
            assert v.dtype == np.float32
            np.testing.assert_array_equal(v, acts[t], err_msg=f"{g.op(i).type} {g.tensors[t].name}")


def test_integer_output_raw_and_input_count_checked():
    runner = runner_of("chain", "ort-qdq-int8")
    g, ids = runner.graph, tensor_ids(runner.graph)
    q = g.op(g.tensors[ids["relu1_QuantizeLinear_Output"]].producer)
    ops = runner.op_runner()
    (raw,) = ops.run_raw(q.index, [np.full((2, 16, 10, 10), 1.0, np.float32)])
    assert raw.dtype == np.int8 and raw.shape == (2, 16, 10, 10)
    with pytest.raises(DataError, match=f"op {q.index} reads 1 activation tensor"):
        ops.run_outputs(q.index, [])


@pytest.mark.parametrize(("kind", "scheme"), variants())
def test_splice_of_no_op_is_the_model(kind, scheme):
    runner = runner_of(kind, scheme)
    x = sample_input(4)
    splice = runner.splice([])
    assert [step[0] for step in splice.steps] == ["cut"]
    (out,) = splice.run(x, compute=None)
    np.testing.assert_array_equal(out, runner.run(x))


@pytest.mark.parametrize(("kind", "scheme"), variants())
def test_splice_computing_ops_with_the_models_own_ops_is_the_model(kind, scheme):
    runner = runner_of(kind, scheme)
    x = sample_input(4)
    g = runner.graph
    ops = runner.op_runner()
    todo = compute_ops(g)
    calls = []

    def compute(op, args):
        calls.append(op)
        return ops.run_outputs(op, args)

    expected = runner.run(x)
    for replaced in ([todo[1]], todo[1:4], todo[::3], [todo[-1]], todo):
        calls.clear()
        (out,) = runner.splice(replaced).run(x, compute)
        assert set(calls) == set(replaced)  # once per chunk for the fixed-batch model
        np.testing.assert_array_equal(out, expected, err_msg=str(replaced))


def _float_twin(fr: OnnxRunner, qr: OnnxRunner, q_to_f: dict[int, int], op: int):
    """The float ops that compute quantized op `op`'s paired output from its paired inputs, as a `compute` callable.

    A QDQ conversion is the identity in float. A quantized op's output is paired directly or, for a Gemm writing a
    graph output, through the output's Q/DQ; its float twin may be several ops (a Conv whose Relu ORT folded away).
    """
    fg, qg = fr.graph, qr.graph
    if qg.is_conversion(qg.op(op)):
        return lambda args: [np.asarray(args[0], np.float32)]

    def float_of(t: int) -> int:
        if t in q_to_f:
            return q_to_f[t]
        (c,) = qg.tensors[t].consumers
        assert qg.is_conversion(qg.op(c))
        return float_of(qg.op(c).outputs[0])

    f_ins = [q_to_f[through_conversions(qg, t)] for t in qr.op_runner().io(op).inputs]
    f_outs = [float_of(t) for t in qg.op(op).outputs]
    ops, todo = set(), list(f_outs)
    while todo:
        t = todo.pop()
        p = fg.tensors[t].producer
        if t in f_ins or p is None or p in ops:
            continue
        ops.add(p)
        todo.extend(i for i in fg.op(p).inputs if i >= 0 and not fg.tensors[i].is_constant)
    sub = Subgraph(fr.model, sorted(ops), outputs=f_outs)
    assert set(sub.inputs) <= set(f_ins)
    return lambda args: sub.run([dict(zip(f_ins, args))[t] for t in sub.inputs])


@pytest.mark.parametrize("scheme", STATIC_SCHEMES)
@pytest.mark.parametrize("kind", MODELS)
def test_every_op_computed_by_its_float_twin_gives_the_float_output(kind, scheme):
    fr, qr = runner_of(kind, None), runner_of(kind, scheme)
    m = match_graphs(fr.graph, qr.graph)
    q_to_f = {p.quant_index: p.float_index for p in m.pairs}
    q_to_f.update({through_conversions(qr.graph, p.quant_index): p.float_index for p in m.pairs})  # QDQ: Q's input
    everything = compute_ops(qr.graph)
    twins = {op: _float_twin(fr, qr, q_to_f, op) for op in everything}
    x = sample_input(4)
    (out,) = qr.splice(everything).run(x, lambda op, args: twins[op](args))
    np.testing.assert_allclose(out, fr.run(x), atol=2e-6)
    assert np.abs(qr.run(x) - fr.run(x)).max() > 1e-3  # ... while the quantized model itself is off


def test_splice_regrids_what_kernels_read_and_keeps_float_between_replaced_ops():
    runner = runner_of("chain", "ort-qdq-int8")
    g, ids = runner.graph, tensor_ids(runner.graph)
    q = g.tensors[ids["relu1_QuantizeLinear_Output"]]
    splice = runner.splice([q.producer])
    assert not splice._stays_float(q.index)  # its DequantizeLinear is the model's own: the value goes on the grid
    s, zp = np.float32(q.quant.scales[0]), np.float32(q.quant.zero_points[0])
    level, lowest = (np.float32(3) - zp) * s, (np.float32(-128) - zp) * s
    off_grid = np.array([level + 0.3 * s, lowest - 5.0], np.float32)  # between two levels; below the range
    np.testing.assert_allclose(splice._on_grid(q.index, off_grid), [level, lowest], rtol=1e-6)
    both = runner.splice([q.producer, *q.consumers])
    assert both._stays_float(q.index)
    conv_out = g.tensors[ids["relu1"]]  # a QDQ op's float output is not on any grid of its own
    np.testing.assert_array_equal(splice._on_grid(conv_out.index, np.float32([0.123])), np.float32([0.123]))


def test_splice_refuses_unknown_ops():
    runner = runner_of("chain", None)
    with pytest.raises(DataError, match="not in the model"):
        runner.splice([10_000])


def test_qoperator_models_run_capture_and_splice():
    """QLinear* ops (contrib ones untyped by ONNX shape inference) get their parameters and dtypes all the same."""
    from tests.backends.onnx.models import qoperator
    from tests.backends.onnx.test_runner import plain_run

    model = qoperator("branchy")
    runner = OnnxRunner(model)
    g, ids = runner.graph, tensor_ids(runner.graph)
    assert {"QLinearConv", "QLinearAdd", "QLinearConcat", "QGemm"} <= {op.type for op in g.ops}
    add_out = g.tensors[ids["res_add_quantized"]]
    assert add_out.dtype == "int8" and add_out.quant is not None and add_out.shape == (1, 12, 10, 10)
    x = sample_input(3)
    np.testing.assert_array_equal(runner.run(x), plain_run(model, x, optimize=False)[0])
    ops = runner.op_runner()
    every = compute_ops(g)
    (out,) = runner.splice(every).run(x, lambda op, args: ops.run_outputs(op, args))
    np.testing.assert_array_equal(out, runner.run(x))
