"""ONNX Runtime's optimized (fused integer) kernels against onnx.reference's QDQ semantics, op by op."""

from __future__ import annotations

import contextlib
import functools
import io
import re

import numpy as np
import pytest

from quantdoctor.backends.onnx.graph import tensor_ids
from quantdoctor.backends.onnx.reference import (
    OptimizedOpRunner, ReferenceOpRunner, kernel_deviation, neighbourhood,
)
from quantdoctor.backends.onnx.repro import write_repro
from quantdoctor.backends.onnx.runner import OnnxRunner
from quantdoctor.errors import DataError, UserInputError
from tests.backends.onnx.models import MODELS, STATIC_SCHEMES, quantized, sample_input

CHECKED = ("Conv", "Gemm", "Add")
# What ORT 1.31 (CPU provider) fuses a one-op QDQ neighbourhood into; 16-bit activations have no integer kernel.
FUSED = {"Conv": "QLinearConv", "Gemm": "QGemm", "Add": "QLinearAdd"}


@functools.cache
def runner(kind: str, scheme: str) -> OnnxRunner:
    return OnnxRunner(quantized(kind, scheme))


@functools.cache
def runners(kind: str, scheme: str) -> tuple[OptimizedOpRunner, ReferenceOpRunner]:
    r = runner(kind, scheme)
    return OptimizedOpRunner(r.model, r.graph, num_threads=1), ReferenceOpRunner(r.model, r.graph)


def inputs_of(kind: str, scheme: str, op: int, n: int = 16) -> list[np.ndarray]:
    """The cut's float inputs as the quantized model computes them on n samples."""
    r = runner(kind, scheme)
    ins = runners(kind, scheme)[1].io(op).inputs
    values = r.capture(sample_input(n, seed=5), list(ins))
    return [values[t] for t in ins]


def checked_ops(kind: str, scheme: str) -> list[int]:
    return [op.index for op in runner(kind, scheme).graph.ops if op.type in CHECKED]


def test_neighbourhood_is_q_dq_op_q_dq():
    r = runner("branchy", "ort-qdq-int8")
    g, ids = r.graph, tensor_ids(r.graph)
    conv = g.tensors[ids["res_conv"]].producer
    hood = neighbourhood(r.model, conv, g)
    types = sorted(g.op(i).type for i in hood.io.ops)
    # Q, DQ of the activation; weight and bias DQs; the Conv; Q, DQ of the output
    assert types == ["Conv", "DequantizeLinear", "DequantizeLinear", "DequantizeLinear", "DequantizeLinear",
                     "QuantizeLinear", "QuantizeLinear"]
    assert hood.io.inputs == (ids["stem_relu"],)  # the float tensor the QuantizeLinear reads
    assert hood.io.outputs == (ids["res_conv_DequantizeLinear_Output"],)
    assert hood.grids[0] == g.tensors[ids["stem_relu_QuantizeLinear_Output"]].quant
    assert hood.out_quant == g.tensors[ids["res_conv_QuantizeLinear_Output"]].quant
    with pytest.raises(UserInputError, match="QuantizeLinear"):
        neighbourhood(r.model, g.tensors[ids["res_conv_QuantizeLinear_Output"]].producer, g)
    with pytest.raises(DataError, match="reads 1 activation"):
        runners("branchy", "ort-qdq-int8")[1].run(conv, [])


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("scheme", STATIC_SCHEMES)
def test_fused_kernels_agree_with_reference(kind, scheme):
    """Measured (ORT 1.31, onnx 1.23, 256 samples): every fused kernel is bit-identical to the reference except
    rounding ties, at most 1 step on at most 4 of 204800 outputs (branchy int8 Conv stem/res_conv 2 each, int8
    per-tensor branch Conv 4); the unfused 16-bit Gemm of the chain 1 step on 3 of 1792 (float accumulation order)."""
    observed, expected = runners(kind, scheme)
    g = runner(kind, scheme).graph
    for op in checked_ops(kind, scheme):
        d = kernel_deviation(runner(kind, scheme).model, g, op, inputs_of(kind, scheme, op),
                             observed=observed, expected=expected)
        want = g.op(op).type if scheme == "ort-qdq-a16w8" else FUSED[g.op(op).type]
        assert d["kernel"] == want and d["fused"] == (want != g.op(op).type), (op, d["kernels"])
        assert d["max_steps"] <= 1.0 and d["mismatch_fraction"] <= 1e-3, (op, d)
        assert d["sqnr_db"] > 60 and not d["kernel_defect"], (op, d)


def _bias_shift(kind: str, scheme: str, op: int, steps: int) -> dict[int, np.ndarray]:
    """The op's int32 bias moved by `steps` output steps: what a fused kernel drifting by k × scale returns."""
    r = runner(kind, scheme)
    g = r.graph
    dq = g.op(g.tensors[g.op(op).inputs[2]].producer)
    bias_q, bias_scale = dq.inputs[0], r.constant(dq.inputs[1]).astype(np.float64)
    out_scale = neighbourhood(r.model, op, g).out_quant.scales[0]
    shifted = r.constant(bias_q).astype(np.int64) + np.rint(steps * out_scale / bias_scale).astype(np.int64)
    return {bias_q: shifted.astype(np.int32)}


def test_kernel_drifting_by_steps_is_flagged():
    kind, scheme = "chain", "ort-qdq-int8"
    r = runner(kind, scheme)
    conv = checked_ops(kind, scheme)[1]
    ins = inputs_of(kind, scheme, conv)
    altered = OptimizedOpRunner(r.model, r.graph, constants={conv: _bias_shift(kind, scheme, conv, 4)})
    d = kernel_deviation(r.model, r.graph, conv, ins, observed=altered, expected=runners(kind, scheme)[1])
    assert d["kernel"] == "QLinearConv" and d["kernel_defect"]
    # 4 steps, one more where the reference sat on a rounding tie, less where the output grid clips
    assert 3.5 <= d["max_steps"] <= 5.5 and d["mean_steps"] > 1 and d["mismatch_fraction"] > 0.2
    assert d["sqnr_db"] < 30
    # the reference is unaltered: the same op of the model itself is still clean
    clean = kernel_deviation(r.model, r.graph, conv, ins, observed=runners(kind, scheme)[0],
                             expected=runners(kind, scheme)[1])
    assert not clean["kernel_defect"] and clean["max_steps"] == 0


def test_patched_observed_kernel_is_flagged(monkeypatch):
    kind, scheme = "branchy", "ort-qdq-uint8"
    r = runner(kind, scheme)
    add = next(op for op in checked_ops(kind, scheme) if r.graph.op(op).type == "Add")
    observed = OptimizedOpRunner(r.model, r.graph)
    scale = neighbourhood(r.model, add, r.graph).out_quant.scales[0]
    original = OptimizedOpRunner.run
    monkeypatch.setattr(observed, "run", lambda op, xs: original(observed, op, xs) - np.float32(3 * scale))
    d = kernel_deviation(r.model, r.graph, add, inputs_of(kind, scheme, add), observed=observed,
                         expected=runners(kind, scheme)[1])
    assert d["kernel"] == "QLinearAdd" and d["kernel_defect"]
    assert d["max_steps"] == pytest.approx(3, abs=1e-3) and d["mismatch_fraction"] == 1.0


def _readme_script(text: str) -> str:
    block = text.split("Reproduce (python, in this folder):\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines)


@pytest.mark.parametrize(("kind", "scheme"), [("branchy", "ort-qdq-int8-per-tensor"), ("chain", "ort-qdq-int8")])
def test_repro_files_reproduce_the_numbers(tmp_path, monkeypatch, kind, scheme):
    r = runner(kind, scheme)
    conv = checked_ops(kind, scheme)[-2 if kind == "branchy" else 0]
    ins = inputs_of(kind, scheme, conv, n=32)
    observed, expected = runners(kind, scheme)
    result = write_repro(r.model, conv, ins, tmp_path, graph=r.graph, observed=observed, expected=expected)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["README.txt", "cut.onnx", "expected.npy", "input_0.npy", "observed.npy"]
    text = (tmp_path / "README.txt").read_text()
    assert "QLinearConv" in text and f"op {conv} (Conv)" in text
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_readme_script(text), "README.txt", "exec"), scope)  # noqa: S102 - our own README
    steps = float(re.search(r"max deviation: (\S+) output steps", out.getvalue()).group(1))
    assert steps == pytest.approx(result["max_steps"], abs=1e-3)
    np.testing.assert_array_equal(scope["observed"], np.load("observed.npy"))
    np.testing.assert_array_equal(scope["expected"], np.load("expected.npy"))
    assert np.load("input_0.npy").shape == ins[0].shape
