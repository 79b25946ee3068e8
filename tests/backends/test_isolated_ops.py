"""Ops side by side in one interpreter, each on inputs of its own: what each op's own cut computes."""

from __future__ import annotations

import numpy as np
import pytest

from quantdoctor.backends.tflite.extract import extract_isolated, extract_ops, plan
from quantdoctor.backends.tflite.subgraph import IsolatedOps, OpRunner
from quantdoctor.errors import DataError
from tests.backends.test_extract import capture, converted, sample_input


@pytest.mark.parametrize("scheme", ["float", "int8", "dynamic"])
def test_side_by_side_equals_one_cut_per_op(scheme):
    model = converted()[scheme]
    runner, acts = capture(model, sample_input())
    alone = OpRunner(model, num_threads=1)
    ops = [op.index for op in runner.graph.ops if not runner.graph.is_weight_dequantize(op)]
    group = alone.isolated(ops)
    calls = {op: [acts[t] for t in alone.io(op).inputs] for op in ops}
    together = group.run_each(calls)
    for op in ops:
        want = alone.run_outputs(op, calls[op])
        assert len(together[op]) == len(want)
        for got, expected in zip(together[op], want):
            np.testing.assert_array_equal(got, expected, err_msg=runner.graph.op(op).type)


def test_one_op_group_is_the_one_op_extract_and_keeps_its_io():
    model = converted()["int8"]
    data, (io,) = extract_isolated(model, [1])
    assert io == plan(model, [1])
    from quantdoctor.backends.tflite.extract import _parse

    group, single = _parse(data).subgraphs[0], _parse(extract_ops(model, [1])).subgraphs[0]
    assert [t.name for t in group.tensors] == [t.name for t in single.tensors]
    assert (list(group.inputs), list(group.outputs)) == (list(single.inputs), list(single.outputs))


def test_swapped_constants_apply_to_their_op_only():
    model = converted()["float"]
    runner, acts = capture(model, sample_input())
    convs = [op for op in runner.graph.ops if op.type == "CONV_2D"][:2]
    weight = convs[0].inputs[1]
    halved = {convs[0].index: {weight: runner.constant(weight) * np.float32(0.5)}}
    group = IsolatedOps(model, [c.index for c in convs], constants=halved, num_threads=1)
    out = group.run_each({c.index: [acts[t] for t in group.io[c.index].inputs] for c in convs})
    first = OpRunner(model, num_threads=1, constants=halved).run(convs[0].index, [acts[convs[0].inputs[0]]])
    np.testing.assert_array_equal(out[convs[0].index][0], first)
    assert not np.array_equal(first, acts[convs[0].outputs[0]])
    np.testing.assert_array_equal(out[convs[1].index][0], acts[convs[1].outputs[0]])


def test_a_missing_op_input_is_refused():
    model = converted()["int8"]
    group = IsolatedOps(model, [1, 2], num_threads=1)
    with pytest.raises(DataError, match="op 2 reads"):
        group.run_each({1: [np.zeros((1,) + (4,))]})
