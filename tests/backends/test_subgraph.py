"""Isolated per-op error: quantized ops run alone on the float model's activations."""

from __future__ import annotations

import numpy as np
import pytest

from quantdoctor.backends.tflite.subgraph import OpRunner as IsolatedRunner
from quantdoctor.backends.tflite.runner import TfliteRunner
from quantdoctor.errors import DataError
from tests.backends.test_extract import BATCH, capture, converted, sample_input


def rel_rms(test: np.ndarray, reference: np.ndarray) -> float:
    return float(np.sqrt(np.mean((test - reference) ** 2)) / np.sqrt(np.mean(reference**2)))


def test_float_ops_alone_reproduce_the_full_model():
    model = converted()["float"]
    runner, acts = capture(model, sample_input())
    iso = IsolatedRunner(model, num_threads=1)
    for op in runner.graph.ops:
        out = iso.run(op.index, [acts[t] for t in iso.io(op.index).inputs])
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, acts[op.outputs[0]], atol=1e-6, err_msg=op.type)


def test_int8_ops_take_float_inputs_and_return_float():
    model = converted()["int8"]
    runner, acts = capture(model, sample_input())
    iso = IsolatedRunner(model, num_threads=1)
    for op in runner.graph.ops:
        # float in, quantized with the op input's own scale: the same integers the full model held, so the same output
        out = iso.run(op.index, [acts[t] for t in iso.io(op.index).inputs])
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, acts[op.outputs[0]], err_msg=op.type)
    conv = next(op for op in runner.graph.ops if op.type == "CONV_2D")
    (raw,) = iso.run_raw(conv.index, [np.zeros((2, 16, 16, 3), np.int8)])
    assert raw.dtype == np.int8 and raw.shape == (2, 16, 16, 48)


@pytest.mark.parametrize("kind", ["float", "int8"])
def test_a_byte_cap_runs_the_batch_in_pieces_with_the_same_outputs(kind):
    model = converted()[kind]
    runner, acts = capture(model, sample_input())
    whole, capped = IsolatedRunner(model, num_threads=1), IsolatedRunner(model, num_threads=1)
    conv = next(op for op in runner.graph.ops if op.type == "CONV_2D")
    args = [acts[t] for t in whole.io(conv.index).inputs]
    capped.max_bytes = args[0].nbytes // 3  # a third of the batch: pieces of the power of two below
    pieces = capped._rows(args)
    assert pieces is not None and 1 <= pieces < len(args[0]) and pieces & (pieces - 1) == 0
    np.testing.assert_array_equal(capped.run(conv.index, args), whole.run(conv.index, args))
    assert capped._op(conv.index).interp.get_input_details()[0]["shape"][0] == pieces  # the kept cut holds a piece
    assert capped._rows([np.zeros((len(args[0]), 4), np.int32)]) is None  # a shape, not a batch: whole


def test_isolated_error_of_a_hybrid_conv_is_only_its_own():
    x = sample_input()
    float_runner, float_acts = capture(converted()["float"], x)
    quant = converted()["dynamic"]
    quant_runner, quant_acts = capture(quant, x)
    iso = IsolatedRunner(quant, num_threads=1)
    float_ops, quant_ops = float_runner.graph.ops, quant_runner.graph.ops
    assert [op.type for op in float_ops] == [op.type for op in quant_ops]  # dynamic range keeps the graph
    errors = {}
    for f_op, q_op in zip(float_ops, quant_ops, strict=True):
        isolated = iso.run(q_op.index, [float_acts[t] for t in float_runner.graph.activation_inputs(f_op)])
        reference = float_acts[f_op.outputs[0]]
        errors[q_op.type, q_op.index] = (rel_rms(isolated, reference), rel_rms(quant_acts[q_op.outputs[0]], reference))
    # Measured: stem 0.0035 / 0.0035, proj 0.0138 / 0.0141, fc 0.0088 / 0.0090 (isolated / accumulated).
    stem, proj, fc = (errors[k] for k in errors if k[0] in ("CONV_2D", "FULLY_CONNECTED"))
    assert stem[0] == pytest.approx(stem[1], abs=1e-7)  # the first op sees the model input either way
    for iso_err, acc_err in (proj, fc):
        assert 1e-3 < iso_err < 0.05  # int8 weights and on-the-fly int8 activations do cost something
        assert iso_err < acc_err - 1e-4  # ... but less than that plus what reaches it from the hybrid ops upstream
    for kind in ("DEPTHWISE_CONV_2D", "ADD", "MEAN"):  # float ops (the depthwise weights are under 1024 elements)
        iso_err, acc_err = next(v for k, v in errors.items() if k[0] == kind)
        assert iso_err < 1e-6 < acc_err


def test_a_released_runner_makes_its_interpreter_again_with_the_same_tensors():
    model = converted()["int8"]
    runner = TfliteRunner(model, batch_size=BATCH)
    ids = [t for t in runner.graph.activations()]
    before = runner.capture(sample_input(), ids)
    runner.release()
    assert runner._loaded is None
    after = runner.capture(sample_input(), ids)
    assert all(np.array_equal(before[t], after[t]) for t in ids)


def test_batch_size_may_change_between_calls():
    model = converted()["int8"]
    runner, acts = capture(model, sample_input())
    iso = IsolatedRunner(model, num_threads=1)
    add = next(op for op in runner.graph.ops if op.type == "ADD")
    inputs = [acts[t] for t in iso.io(add.index).inputs]
    full = iso.run(add.index, inputs)
    one = iso.run(add.index, [a[1:2] for a in inputs])
    again = iso.run(add.index, inputs)
    assert one.shape[0] == 1 and np.array_equal(one[0], full[1]) and np.array_equal(again, full)


def test_wrong_number_of_inputs_is_a_data_error():
    iso = IsolatedRunner(converted()["float"])
    with pytest.raises(DataError, match="op 3 reads 2 activation tensor"):
        iso.run(3, [np.zeros((1, 16, 16, 48), np.float32)])


@pytest.mark.parametrize("kind", ["int8", "dynamic", "float"])
def test_splice_of_no_op_is_the_model(kind):
    model = converted()[kind]
    x = sample_input()
    runner = TfliteRunner(model, batch_size=BATCH)
    splice = runner.splice([])
    assert [kind for kind, *_ in splice.steps] == ["cut"]
    (out,) = splice.run(x, compute=None)
    np.testing.assert_array_equal(out, runner.run(x))


@pytest.mark.parametrize("kind", ["int8", "dynamic", "float"])
def test_splice_computing_ops_with_the_models_own_kernels_is_the_model(kind):
    """Replaced ops computed by the same model's ops, one by one, change nothing: the segments join up exactly."""
    model = converted()[kind]
    x = sample_input()
    runner = TfliteRunner(model, batch_size=BATCH)
    g = runner.graph
    ops = runner.op_runner()
    compute_ops = [op.index for op in g.ops if not g.is_weight_dequantize(op)]
    calls = []

    def compute(op, args):
        calls.append(op)
        return ops.run_outputs(op, args)

    for replaced in ([compute_ops[1]], compute_ops[1:3], [compute_ops[-1]], compute_ops):
        calls.clear()
        (out,) = runner.splice(replaced).run(x, compute)
        assert sorted(calls) == sorted(replaced)
        np.testing.assert_array_equal(out, runner.run(x), err_msg=str(replaced))


def test_splice_keeps_a_float_value_between_replaced_ops_and_regrids_what_kernels_read():
    model = converted()["int8"]
    x = sample_input()
    runner, acts = capture(model, x)
    g = runner.graph
    conv = next(op for op in g.ops if op.type == "CONV_2D")
    out_t = conv.outputs[0]
    splice = runner.splice([conv.index])
    off_grid = acts[out_t] + 0.37 * g.tensors[out_t].quant.scales[0]  # between two levels of the int8 grid
    assert not splice._stays_float(out_t)  # the next op is an integer kernel: the value goes back on the grid
    np.testing.assert_allclose(splice._on_grid(out_t, off_grid), acts[out_t], atol=1e-6)
    both = runner.splice([conv.index, *g.tensors[out_t].consumers])
    assert both._stays_float(out_t)


def test_splice_refuses_unknown_ops():
    runner = TfliteRunner(converted()["int8"], batch_size=BATCH)
    with pytest.raises(DataError, match="not in the model"):
        runner.splice([10_000])
