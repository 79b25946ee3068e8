"""A QDQ op as ONNX Runtime's optimized (fused integer) kernels compute it, against ONNX's reference evaluator.

Every other session quantdoctor builds runs with graph optimizations off (`loader`): a QDQ graph then computes its float
ops on dequantized values, which is the QDQ semantics but not what a deployed session runs. With optimizations on, ORT
fuses DequantizeLinear → Conv → QuantizeLinear into QLinearConv (Gemm into com.microsoft QGemm, Add into QLinearAdd,
...), integer kernels that requantize with their own arithmetic and can drift from the QDQ semantics by whole output
steps (onnxruntime issue #32132). This module measures that drift op by op:

- observed: the op's QDQ neighbourhood cut out of the model and run in an ORT session *with* optimizations
  (`OptimizedOpRunner`), so ORT fuses it the way it would in the deployed model;
- expected: the same cut evaluated by `onnx.reference.ReferenceEvaluator` (`ReferenceOpRunner`), the numpy oracle of
  the ONNX standard;
- `kernel_deviation` compares the two in output quantization steps; `repro.write_repro` writes a one-op reproduction.

The neighbourhood of op X (`neighbourhood`) is X, the weight-unpacking DequantizeLinear nodes it reads, for each
activation input the DequantizeLinear feeding X *and the QuantizeLinear feeding that DequantizeLinear*, and the
QuantizeLinear reading X's output *with the DequantizeLinear after it*: Q → DQ → X → Q → DQ, as in a model.
Both outer pairs matter: on x86 ORT first rewrites int8 activation Q→DQ pairs to uint8 (its u8s8 kernels; the
optimized cut holds `qdq_s8_to_u8_zp_conversion` zero points) and fuses only groups whose input and output share one
type; with the integer tensors as bare graph inputs/outputs the rewrite cannot happen and an int8 Conv, Add or Gemm
stays unfused (measured with ORT 1.31).

Feeding: the cut's inputs are the float tensors the outer QuantizeLinear nodes read; a float value is first put on the
integer tensor's grid (quantized with its scale and zero point, dequantized back), so the cut's QuantizeLinear
reproduces the integer tensor exactly and both evaluators see the same integers. An activation input that is already an
integer tensor (a model input) is fed quantized. The output is the outer DequantizeLinear's (the integer output
tensor dequantized), so a deviation of k integer levels is k × the output scale.

Limitations: the cut is fused as ORT fuses it alone; in the whole model a DequantizeLinear shared by several consumers
can keep ORT from fusing an op the cut fuses (the tiny branchy int8 model: full-model Conv/Add stay unfused, their cuts
fuse). An op without a QuantizeLinear after it is compared on its float output. onnx 1.23's reference evaluator has no
DequantizeLinear before opset 19: for older opsets its opset-19 implementation is registered in its place (the same
semantics for integer inputs), and the README of a reproduction carries the same shim.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantdoctor.backends.base import Graph, QuantParams
from quantdoctor.backends.onnx.subgraph import (
    CutIO, _broadcast, _parsed, cut_model, downstream, from_tensor, in_chunks, plan, to_tensor,
)
from quantdoctor.errors import DataError, ModelLoadError, UserInputError

__all__ = ["LEVELS", "Neighbourhood", "OptimizedOpRunner", "ReferenceOpRunner", "kernel_deviation",
           "missing_reference_ops", "neighbourhood"]

# nodes of an optimized cut that are not the op's kernel: the boundary conversions and layout changes (NHWC / NCHWc)
_NOT_KERNEL = frozenset({"QuantizeLinear", "DequantizeLinear", "Transpose", "ReorderInput", "ReorderOutput"})
LEVELS = {"disabled": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
           "all": "ORT_ENABLE_ALL"}


@dataclass(frozen=True)
class Neighbourhood:
    """An op with its QDQ neighbourhood, as a cut of the source model.

    Attributes:
        op: the source op index.
        io: the cut's source ops, input tensors (in feed order) and its one output tensor.
        grids: per input, the integer grid a float value is put on before it is fed (None: fed as given).
        input_dtypes: per input, the dtype the cut reads ("float32" for a QuantizeLinear's input, "int8" for an
            integer model input).
        out_quant: the grid of the op's output (its QuantizeLinear's parameters); None if no QuantizeLinear follows.
        out_integer: the source integer tensor the output QuantizeLinear writes (-1 if none).
    """

    op: int
    io: CutIO
    grids: tuple[QuantParams | None, ...]
    input_dtypes: tuple[str, ...]
    out_quant: QuantParams | None
    out_integer: int = -1


def neighbourhood(model: bytes, op: int, graph: Graph | None = None) -> Neighbourhood:
    """The QDQ neighbourhood of op `op` (see the module docstring).

    Raises:
        UserInputError: the op does not exist or is a QuantizeLinear/DequantizeLinear itself.
    """
    g = graph or _parsed(bytes(model))[1]
    if not 0 <= int(op) < len(g.ops):
        raise UserInputError(f"op {op} does not exist; the model has ops 0-{len(g.ops) - 1}")
    o = g.op(int(op))
    if o.type in ("QuantizeLinear", "DequantizeLinear"):
        raise UserInputError(f"op {op} is a {o.type}; give the op it quantizes (Conv, Gemm, Add, ...)")
    ops = {o.index}
    grid_of: dict[int, QuantParams] = {}
    for t in o.inputs:
        p = None if t < 0 else g.tensors[t].producer
        if p is None or g.op(p).type != "DequantizeLinear" or g.is_weight_dequantize(g.op(p)):
            continue
        ops.add(p)
        integer = g.op(p).inputs[0]
        pq = g.tensors[integer].producer
        if pq is not None and g.op(pq).type == "QuantizeLinear" and g.tensors[integer].quant is not None:
            ops.add(pq)
            grid_of[g.op(pq).inputs[0]] = g.tensors[integer].quant
    out = o.outputs[0]
    out_quant, out_integer = None, -1
    q = next((c for c in g.tensors[out].consumers if g.op(c).type == "QuantizeLinear"), None)
    if q is not None:
        ops.add(q)
        out_integer = g.op(q).outputs[0]
        out_quant = g.tensors[out_integer].quant
        out = out_integer
        dq = next((c for c in g.tensors[out_integer].consumers if g.op(c).type == "DequantizeLinear"), None)
        if dq is not None:
            ops.add(dq)
            out = g.op(dq).outputs[0]
    io = plan(bytes(model), sorted(ops), [out])
    grids, dtypes = [], []
    for t in io.inputs:
        info = g.tensors[t]
        if t in grid_of:
            grids.append(grid_of[t])
            dtypes.append("float32")
        else:
            grids.append(info.quant if info.dtype in ("int8", "uint8", "int16", "uint16") else None)
            dtypes.append(info.dtype if info.dtype != "undefined" else "float32")
    return Neighbourhood(o.index, io, tuple(grids), tuple(dtypes), out_quant, out_integer)


class _CutRunner:
    """What both runners share: one neighbourhood cut per op, built on first use and kept."""

    def __init__(self, model: bytes, graph: Graph | None = None,
                 constants: dict[int, dict[int, np.ndarray]] | None = None) -> None:
        self.model = bytes(model)
        self.graph = graph or _parsed(self.model)[1]
        self.constants = constants or {}
        self._hoods: dict[int, Neighbourhood] = {}
        self._cuts: dict[int, bytes] = {}

    def neighbourhood(self, op: int) -> Neighbourhood:
        if op not in self._hoods:
            self._hoods[op] = neighbourhood(self.model, op, self.graph)
        return self._hoods[op]

    def io(self, op: int) -> CutIO:
        """Source tensors the cut of op `op` reads (the order `run` wants its inputs in) and writes."""
        return self.neighbourhood(op).io

    def cut(self, op: int) -> bytes:
        """The serialized one-op cut (the op with its QDQ neighbourhood, `constants` of that op applied)."""
        if op not in self._cuts:
            self._cuts[op] = cut_model(self.model, self.io(op), self.constants.get(op), self.graph)
        return self._cuts[op]

    def feeds(self, op: int, float_inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The arrays the cut is fed for float inputs: put on their integer grids (see the module docstring)."""
        hood = self.neighbourhood(op)
        if len(float_inputs) != len(hood.io.inputs):
            raise DataError(f"op {op} with its QDQ neighbourhood reads {len(hood.io.inputs)} activation tensor(s); "
                            f"{len(float_inputs)} array(s) were given")
        out = []
        for a, grid, dtype in zip(float_inputs, hood.grids, hood.input_dtypes, strict=True):
            a = np.asarray(a)
            if dtype in ("float32", "float16", "float64"):
                if grid is not None:
                    a = from_tensor(to_tensor(a, grid, np.dtype(grid.dtype)), grid)
                out.append(a.astype(dtype, copy=False))
            else:
                out.append(to_tensor(a, grid, np.dtype(dtype)))
        return out

    def _evaluate(self, op: int, arrays: list[np.ndarray]) -> list[np.ndarray]:
        raise NotImplementedError

    def run_raw(self, op: int, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """The cut's output for arrays fed as given (`feeds` output), in the batch chunks the model fixes."""
        hood = self.neighbourhood(op)
        batch = _parsed(self.model)[3]
        major = [hood.io.outputs[0] in downstream(self.graph, hood.io.inputs, hood.io.ops)]
        return in_chunks(lambda xs: self._evaluate(op, list(xs)), list(arrays), batch, major)[0]

    def run(self, op: int, float_inputs: Sequence[np.ndarray]) -> np.ndarray:
        """The float32 output of op `op` (its output quantized and dequantized) for float inputs."""
        value = self.run_raw(op, self.feeds(op, float_inputs))
        hood = self.neighbourhood(op)
        return from_tensor(value, hood.out_quant if np.asarray(value).dtype.kind in "iu" else None)

    def run_outputs(self, op: int, float_inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """`run` as a one-element list (the `OpRunnerLike` shape)."""
        return [self.run(op, float_inputs)]


class OptimizedOpRunner(_CutRunner):
    """Single QDQ ops of a model, each run with its neighbourhood in an ORT session with graph optimizations on.

    Args:
        model: ONNX bytes (op indices are those of the normalized model, `graph.graph_from_onnx`).
        graph: the source graph as the runner observed it (`OnnxRunner.graph`); default from the bytes.
        level: ORT's optimization level: "all" (the default of an ORT session: fusions plus layout changes),
            "extended" (fusions), "basic", or "disabled" (the cut as written: float ops on dequantized values).
        constants: per op, initializers to replace in that op's cut (tensor index → array), e.g. an altered zero
            point to check that a deviation is detected.
        num_threads: intra-op threads; default all cores.
    """

    def __init__(self, model: bytes, graph: Graph | None = None, *, level: str = "all",
                 constants: dict[int, dict[int, np.ndarray]] | None = None, num_threads: int | None = None) -> None:
        super().__init__(model, graph, constants)
        if level not in LEVELS:
            raise UserInputError(f"unknown optimization level {level!r}; use one of {', '.join(LEVELS)}")
        self.level = level
        self._threads = num_threads
        self._sessions: dict[int, Any] = {}
        self._kernels: dict[int, tuple[tuple[str, str], ...]] = {}

    def session(self, op: int) -> Any:
        """The ORT session of op `op`'s cut (built on first use; the optimized graph it runs is read back)."""
        if op not in self._sessions:
            import onnx
            import onnxruntime as ort

            from quantdoctor.backends.onnx.loader import session_options

            opts = session_options(self._threads, optimize=self.level != "disabled")
            opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[self.level])
            with tempfile.TemporaryDirectory(prefix="quantdoctor-ort-") as tmp:
                path = os.path.join(tmp, "optimized.onnx")
                opts.optimized_model_filepath = path
                try:
                    session = ort.InferenceSession(self.cut(op), sess_options=opts,
                                                   providers=["CPUExecutionProvider"])
                except Exception as exc:  # ORT's pybind exception types
                    text = str(exc).strip().splitlines()
                    raise ModelLoadError(f"ONNX Runtime cannot load op {op} with its QDQ neighbourhood: "
                                         f"{text[0] if text else type(exc).__name__}") from None
                nodes = onnx.load(path, load_external_data=False).graph.node if os.path.exists(path) else []
                self._kernels[op] = tuple((n.domain, n.op_type) for n in nodes)
            self._sessions[op] = session
        return self._sessions[op]

    def kernels(self, op: int) -> tuple[str, ...]:
        """Op types of every node of the optimized cut ORT runs ("QuantizeLinear", "QLinearConv", ...)."""
        self.session(op)
        return tuple(t for _, t in self._kernels[op])

    def kernel_of(self, op: int) -> str:
        """The kernel ORT picked for op `op`: "QLinearConv", "QGemm", "QLinearAdd" when it fused the QDQ group,
        the op's own type ("Conv") when it did not; "" if the optimized graph holds only conversions."""
        return next((t for t in self.kernels(op) if t not in _NOT_KERNEL), "")

    def fused(self, op: int) -> bool:
        """Whether ORT replaced the QDQ group by an integer kernel (no float op left between Q and DQ nodes)."""
        return self.kernel_of(op) not in ("", self.graph.op(op).type)

    def _evaluate(self, op: int, arrays: list[np.ndarray]) -> list[np.ndarray]:
        s = self.session(op)
        names = [i.name for i in s.get_inputs()]
        return s.run(None, dict(zip(names, arrays, strict=True)))


class ReferenceOpRunner(_CutRunner):
    """The same cuts as `OptimizedOpRunner`, evaluated by `onnx.reference.ReferenceEvaluator` (numpy, float32 QDQ
    semantics: DequantizeLinear, the float op, QuantizeLinear rounding half to even and saturating)."""

    def __init__(self, model: bytes, graph: Graph | None = None,
                 constants: dict[int, dict[int, np.ndarray]] | None = None) -> None:
        super().__init__(model, graph, constants)
        self._evaluators: dict[int, Any] = {}

    def evaluator(self, op: int) -> Any:
        if op not in self._evaluators:
            from onnx.reference import ReferenceEvaluator

            try:
                self._evaluators[op] = ReferenceEvaluator(self.cut(op), new_ops=missing_reference_ops(self.cut(op)))
            except Exception as exc:
                text = str(exc).strip().splitlines()
                raise ModelLoadError(f"onnx.reference cannot evaluate op {op} with its QDQ neighbourhood: "
                                     f"{text[0] if text else type(exc).__name__}") from None
        return self._evaluators[op]

    def _evaluate(self, op: int, arrays: list[np.ndarray]) -> list[np.ndarray]:
        ev = self.evaluator(op)
        return [np.asarray(v) for v in ev.run(None, dict(zip(ev.input_names, arrays, strict=True)))]


def missing_reference_ops(model: bytes) -> list[type] | None:
    """Implementations onnx.reference lacks for the cut's opset: onnx 1.23 registers DequantizeLinear from opset 19
    only, so a model of opset 13-18 gets the opset-19 kernel (the same semantics for the integer types of those
    opsets: (x − zero_point) × scale, per tensor or along `axis`)."""
    from onnx.reference.ops import load_op

    from quantdoctor.backends.onnx.loader import parse_model

    proto = parse_model(model)
    version = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not 10 <= version < 19 or not any(n.op_type == "DequantizeLinear" for n in proto.graph.node):
        return None
    try:
        load_op("", "DequantizeLinear", version)
        return None
    except Exception:
        from onnx.reference.ops.op_dequantize_linear import DequantizeLinear_19

        def run(self: Any, x: np.ndarray, x_scale: np.ndarray, x_zero_point: np.ndarray | None = None,
                axis: int = 1, **later: Any) -> tuple[np.ndarray]:
            # the evaluator passes the latest schema's attributes (block_size, output_dtype): absent before opset 19
            return DequantizeLinear_19._run(self, x, x_scale, x_zero_point, axis=axis)

        return [type("DequantizeLinear", (DequantizeLinear_19,), {"op_domain": "", "_run": run})]


def _steps(hood: Neighbourhood, shape: tuple[int, ...]) -> np.ndarray | None:
    if hood.out_quant is None:
        return None
    s, _ = _broadcast(hood.out_quant, len(shape))
    return np.broadcast_to(np.asarray(s, dtype=np.float64), shape)


def compare(observed: np.ndarray, expected: np.ndarray, hood: Neighbourhood) -> dict[str, Any]:
    """Deviation of `observed` from `expected` (float32 outputs of one op): in output steps where there is a grid.

    max_steps / mean_steps: |observed − expected| / output scale (None without a QuantizeLinear after the op);
    mismatch_fraction: share of outputs off by half a step or more; sqnr_db: 10·log10(Σ expected² / Σ error²),
    inf when they agree exactly.
    """
    obs = np.asarray(observed, dtype=np.float64)
    exp = np.asarray(expected, dtype=np.float64).reshape(obs.shape)
    diff = np.abs(obs - exp)
    scale = _steps(hood, obs.shape)
    steps = None if scale is None else diff / scale
    noise, signal = float(np.sum(diff ** 2)), float(np.sum(exp ** 2))
    if noise == 0:
        sqnr = math.inf
    elif signal == 0:
        sqnr = -math.inf
    else:
        sqnr = 10 * math.log10(signal / noise)
    q = hood.out_quant
    return {
        "elements": int(diff.size),
        "max_abs": float(diff.max()) if diff.size else 0.0,
        "max_steps": None if steps is None or not steps.size else float(steps.max()),
        "mean_steps": None if steps is None or not steps.size else float(steps.mean()),
        "mismatch_fraction": None if steps is None or not steps.size else float(np.mean(steps >= 0.5)),
        "sqnr_db": sqnr,
        "scale": None if q is None else (q.scales[0] if len(q.scales) == 1 else list(q.scales)),
        "zero_point": None if q is None or not q.zero_points else (
            q.zero_points[0] if len(q.zero_points) == 1 else list(q.zero_points)),
    }


def kernel_deviation(model: bytes, graph: Graph | None, op: int, float_inputs: Sequence[np.ndarray], *,
                     observed: OptimizedOpRunner | None = None, expected: ReferenceOpRunner | None = None,
                     tolerance_steps: float = 1.0) -> dict[str, Any]:
    """How far ORT's optimized kernel for op `op` is from the QDQ reference, on `float_inputs`.

    Args:
        model, graph: the QDQ model (normalized op indices) and its graph (None: from the bytes).
        float_inputs: float values of the cut's inputs, in `neighbourhood(model, op).io.inputs` order (the tensors the
            QuantizeLinear nodes before the op read; on-grid or not: they are quantized first).
        observed, expected: runners to reuse (built for this call if None).
        tolerance_steps: a deviation above this many output steps is a kernel defect (1: an integer kernel may round
            the other way where the float reference lands within float error of a half step).

    Returns:
        `compare`'s fields plus op, op_type, kernel (what ORT ran), kernels, fused, output (tensor name), level,
        tolerance_steps and kernel_defect (max_steps > tolerance_steps; without an output grid, SQNR < 30 dB).
    """
    data = bytes(model)
    obs_runner = observed or OptimizedOpRunner(data, graph)
    ref_runner = expected or ReferenceOpRunner(data, graph)
    hood = ref_runner.neighbourhood(op)
    obs = obs_runner.run(op, float_inputs)
    exp = ref_runner.run(op, float_inputs)
    result = compare(obs, exp, hood)
    g = ref_runner.graph
    kernel = obs_runner.kernel_of(op) if hasattr(obs_runner, "kernel_of") else ""
    defect = (result["sqnr_db"] < 30.0) if result["max_steps"] is None else result["max_steps"] > tolerance_steps
    result.update({
        "op": int(op), "op_type": g.op(op).type, "kernel": kernel,
        "kernels": list(obs_runner.kernels(op)) if hasattr(obs_runner, "kernels") else [],
        "fused": bool(kernel) and kernel != g.op(op).type,
        "output": g.tensors[hood.out_integer if hood.out_integer >= 0 else hood.io.outputs[0]].name,
        "level": getattr(obs_runner, "level", ""), "tolerance_steps": float(tolerance_steps),
        "kernel_defect": bool(defect),
    })
    return result
