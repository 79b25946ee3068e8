"""A one-op reproduction of an ONNX QDQ op for a bug report: the op's neighbourhood cut, its inputs, what ORT's fused
kernel and ONNX's reference evaluator return, and a README with the script that reruns both (see `reference.py`)."""

from __future__ import annotations

import io as _io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quantdoctor.backends.base import Graph
from quantdoctor.backends.onnx.reference import (
    LEVELS, OptimizedOpRunner, ReferenceOpRunner, kernel_deviation, missing_reference_ops,
)


def _npy(array: np.ndarray) -> bytes:
    buf = _io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


_README = """\
One-op reproduction written by quantdoctor: op {op} ({op_type}) of the model, with its QDQ neighbourhood
(QuantizeLinear -> DequantizeLinear -> {op_type} -> QuantizeLinear -> DequantizeLinear, weights as stored).

ONNX Runtime {ort_version} with graph optimizations ({level}) runs it as: {kernels}
The QDQ semantics, evaluated by onnx.reference (onnx {onnx_version}), differ from it by
  max {max_steps} output step(s) (scale {scale}), {mismatch} of {elements} outputs off, SQNR {sqnr} dB.

Files: cut.onnx (the model), {inputs} (the inputs, float values already on their integer grids),
expected.npy (onnx.reference) and observed.npy (onnxruntime, optimized) as this machine computed them.

Reproduce (python, in this folder):

    import numpy as np, onnx, onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    feeds = {feeds}
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.{ort_level}
    observed = ort.InferenceSession("cut.onnx", options, providers=["CPUExecutionProvider"]).run(None, feeds)[0]
{shim}    expected = ReferenceEvaluator("cut.onnx"{new_ops}).run(None, feeds)[0]
    print("max deviation:", np.abs(observed - expected).max() / {scale_expr}, "output steps")

observed.npy comes from the session that measured the deviation (its cut may carry replaced constants); cut.onnx is
the model's own op. With ORT_DISABLE_ALL instead, ONNX Runtime runs the graph as written (float ops on dequantized
values).
"""


_SHIM = """\
    # onnx 1.23's reference registers DequantizeLinear from opset 19 on; for integer types opset 13's is the same
    from onnx.reference.ops.op_dequantize_linear import DequantizeLinear_19

    class DequantizeLinear(DequantizeLinear_19):
        op_domain = ""

        def _run(self, x, scale, zero_point=None, axis=1, **later):
            return DequantizeLinear_19._run(self, x, scale, zero_point, axis=axis)

"""


def write_repro(model: bytes, op: int, inputs: Sequence[np.ndarray], out_dir: str | os.PathLike[str], *,
                graph: Graph | None = None, observed: OptimizedOpRunner | None = None,
                expected: ReferenceOpRunner | None = None) -> dict[str, Any]:
    """Write a one-op reproduction of op `op` into `out_dir` (each file atomically): cut.onnx (the neighbourhood cut,
    as the model holds it: `expected`'s constants), input_<k>.npy (the feeds, inputs put on their grids), expected.npy,
    observed.npy and README.txt (how to rerun with onnxruntime optimized vs onnx.reference, with the numbers).

    Returns:
        `kernel_deviation`'s result plus "files" (paths written) and "feeds" (input name → file name).
    """
    from quantdoctor.files import atomic_write_bytes, atomic_write_text

    data = bytes(model)
    obs_runner = observed or OptimizedOpRunner(data, graph)
    ref_runner = expected or ReferenceOpRunner(data, graph)
    result = kernel_deviation(data, graph, op, inputs, observed=obs_runner, expected=ref_runner)
    cut = ref_runner.cut(op)
    feeds = ref_runner.feeds(op, inputs)
    names = [obs_runner.graph.tensors[t].name for t in obs_runner.io(op).inputs]
    out = Path(out_dir)
    files = [atomic_write_bytes(out / "cut.onnx", cut)]
    feed_files = {}
    for k, (name, arr) in enumerate(zip(names, feeds, strict=True)):
        feed_files[name] = f"input_{k}.npy"
        files.append(atomic_write_bytes(out / f"input_{k}.npy", _npy(arr)))
    files.append(atomic_write_bytes(out / "expected.npy", _npy(ref_runner.run(op, inputs))))
    files.append(atomic_write_bytes(out / "observed.npy", _npy(obs_runner.run(op, inputs))))

    import onnx
    import onnxruntime as ort

    scale = result["scale"]
    per_tensor = isinstance(scale, float)
    level = getattr(obs_runner, "level", "all")
    text = _README.format(
        op=op, op_type=result["op_type"], ort_version=ort.__version__, onnx_version=onnx.__version__,
        level=level, kernels=" -> ".join(result["kernels"]) or "(unknown)",
        max_steps="n/a" if result["max_steps"] is None else f"{result['max_steps']:.3g}",
        scale=scale if per_tensor else "per channel" if scale else "none",
        mismatch="n/a" if result["mismatch_fraction"] is None else round(result["mismatch_fraction"] *
                                                                         result["elements"]),
        elements=result["elements"], sqnr=f"{result['sqnr_db']:.1f}",
        inputs=", ".join(feed_files.values()),
        feeds="{" + ", ".join(f"{n!r}: np.load({f!r})" for n, f in feed_files.items()) + "}",
        ort_level=LEVELS.get(level, "ORT_ENABLE_ALL"),
        shim=_SHIM if missing_reference_ops(cut) else "", new_ops=", new_ops=[DequantizeLinear]" if
        missing_reference_ops(cut) else "",
        scale_expr=repr(scale) if per_tensor else "1.0",
    )
    files.append(atomic_write_text(out / "README.txt", text))
    result["files"] = [str(f) for f in files]
    result["feeds"] = feed_files
    return result
