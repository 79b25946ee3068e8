"""What the explain step measures during the passes, besides the accumulated error: per matched tensor the activation
statistics (float and quantized), the per-sample grid coverage, and per quantized op its own (isolated) error and the
error its quantization parameters predict (expected).

Isolated: the quantized op, cut out of the quantized model, runs on the float model's input activations (quantized as
the op's input tensor stores them); its output against the float model's output is the error that op adds by itself.

Expected: the same op of the *float* model, with its weights replaced by the quantized model's dequantized weights, runs
on the float input after the activation quantization the scheme implies (the input tensor's scale for integer ops; for
dynamic-range ops each sample quantized to int8 with its own parameters, as the hybrid kernels do), and its output is
rounded to the output tensor's grid for integer ops. What is left between isolated and expected is what the kernel
computes beyond what its parameters say: a large excess is a converter or kernel defect, not quantization noise.

Both are measured on the first `explain_samples` evaluated samples: enough to estimate a tensor's SQNR to about a dB (a
tensor holds thousands of values per sample), and it keeps the explain step's cost bounded on large data sets. Each op
runs alone, twice, but not in an interpreter of its own: the ops go side by side into a few interpreters
(`IsolatedOps`, bounded by `GROUP_BYTES`), each built, run once per batch and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from quantdoctor.backends.base import Graph
from quantdoctor.matching.match import Matching, through_conversions
from quantdoctor.stats.accumulators import ErrorAccumulator, TensorError
from quantdoctor.stats.activations import ActivationAccumulator, ActivationStats
from quantdoctor.stats.grid import GridCoverage, GridCoverageAccumulator, _dynamic_rows, round_half_away

_INTEGER = ("int8", "uint8", "int16")
_QRANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
# Float32 bytes of the inputs and outputs one interpreter of side-by-side ops may hold: a few of them run the probes
# of a model instead of two cuts per op, and the memory they hold stays bounded.
GROUP_BYTES = 128 << 20


@dataclass(frozen=True)
class Evidence:
    """What the probes measured for one matched tensor pair (keyed by the float tensor index)."""

    float_stats: ActivationStats | None = None
    quant_stats: ActivationStats | None = None
    grid: GridCoverage | None = None
    grid_mode: str | None = None  # "static" (the tensor's own scale) or "dynamic" (per sample, hybrid kernels)
    isolated: TensorError | None = None
    expected: TensorError | None = None
    skipped: str = ""  # why isolated/expected were not measured


@dataclass
class _OpProbe:
    q_op: int
    f_op: int
    f_out: int
    q_inputs: tuple[int, ...]  # float tensors feeding the quantized extract, in its input order
    f_inputs: tuple[int, ...]  # float tensors feeding the float extract, in its input order
    f_modes: tuple[tuple, ...]  # how each float extract input is quantized: ("none",), ("static", s, zp, dtype), ("dynamic",)
    out_mode: tuple
    isolated: ErrorAccumulator
    expected: ErrorAccumulator | None  # None: no float op computes the same thing (a fused op), no prediction
    observed_mode: tuple = ("none",)  # QDQ: the quantize op after the op puts its output on the grid
    kernel_inputs: tuple[int, ...] = ()  # QDQ with a kernel check: float tensors feeding the op's QDQ neighbourhood
    first_inputs: tuple[np.ndarray, ...] = ()  # the first sample's inputs, for a one-op reproduction
    q_modes: tuple[tuple, ...] = ()  # how the quantized extract stores each input (`_static_mode`, or ("none",))


class Probes:
    """Accumulates the explain measurements batch by batch, in memory that does not grow with the data."""

    def __init__(self, float_runner, quant_runner, matching: Matching, dynamic: bool, explain_samples: int) -> None:
        fg, qg = float_runner.graph, quant_runner.graph
        self.fg, self.qg, self.dynamic = fg, qg, dynamic
        self.explain_samples = explain_samples
        self.seen = 0
        self.matching = matching
        self.q_to_f = {p.quant_index: p.float_index for p in matching.pairs}
        self.f_to_q = {p.float_index: p.quant_index for p in matching.pairs}
        hybrid_inputs = _hybrid_inputs(qg) if dynamic else set()
        self.acts: dict[int, tuple[ActivationAccumulator, ActivationAccumulator, GridCoverageAccumulator | None]] = {}
        self.grid_modes: dict[int, str] = {}
        for pair in matching.pairs:
            qt = _grid_tensor(qg, through_conversions(qg, pair.quant_index))
            grid, qrange, step = None, None, None
            if qt.dtype in _INTEGER and qt.quant is not None and len(qt.quant.scales) == 1:
                lo, hi = _QRANGE[qt.dtype]
                scale, zp = qt.quant.scales[0], int(qt.quant.zero_points[0]) if qt.quant.zero_points else 0
                # Half a step beyond the end levels still rounds onto them: only what lies further out is clipped.
                qrange, step = (scale * (lo - zp - 0.5), scale * (hi - zp + 0.5)), scale
                grid = GridCoverageAccumulator(scale, zp, lo, hi)
                self.grid_modes[pair.float_index] = "static"
            elif pair.quant_index in hybrid_inputs or qt.index in hybrid_inputs:
                grid = GridCoverageAccumulator(None, mode="dynamic")
                self.grid_modes[pair.float_index] = "dynamic"
            self.acts[pair.float_index] = (ActivationAccumulator(qrange=qrange, step=step), ActivationAccumulator(), grid)
        self.skipped: dict[int, str] = {}
        self.quant_ops = quant_runner.op_runner()
        # QDQ runtimes that can run an op's fused kernel and the standard's reference: isolated = the kernel a
        # deployed session runs, expected = what the parameters mean (a fused kernel that drifts is a kernel defect).
        self.kernels = quant_runner.kernel_runner() if qg.qdq and hasattr(quant_runner, "kernel_runner") else None
        self.reference = quant_runner.reference_runner() if self.kernels is not None else None
        self.ops = self._plan_ops(float_runner.op_runner(), matching)
        self.float_ops = float_runner.op_runner(constants=self._dequantized_weights(quant_runner))

    @property
    def float_ids(self) -> set[int]:
        """Float tensors the probes read each batch (beyond the matched ones the pipeline captures anyway)."""
        return {t for p in self.ops for t in (*p.q_inputs, *p.f_inputs, *p.kernel_inputs, p.f_out)}

    def update(self, fv: dict[int, np.ndarray], qv: dict[int, np.ndarray]) -> None:
        """Fold in one batch: fv/qv map float/quantized tensor indices to their float32 values.

        The statistics are folded on `FOLD_THREADS` worker threads (numpy releases the GIL in its loops), each
        accumulator by one thread in batch order, so the result is the one a single thread gives; the isolated ops
        run meanwhile. All of it is done before returning: `fv`/`qv` may be views the next invoke overwrites.
        """
        from concurrent.futures import ThreadPoolExecutor

        from quantdoctor.stats.accumulators import FOLD_THREADS, deal

        with ThreadPoolExecutor(FOLD_THREADS) as pool:
            parts = deal({f: fv[f].size for f in self.acts}, FOLD_THREADS)
            folds = [pool.submit(self._fold, part, fv, qv) for part in parts]
            self._probe_ops(fv)
            for fold in folds:
                fold.result()

    def _fold(self, part: list[int], fv: dict[int, np.ndarray], qv: dict[int, np.ndarray]) -> None:
        for f in part:
            f_acc, q_acc, grid = self.acts[f]
            q = self.f_to_q[f]
            f_acc.update(fv[f])
            q_acc.update(qv[q])
            if grid is not None:
                grid.update(qv[q])

    def _probe_ops(self, fv: dict[int, np.ndarray]) -> None:
        take = min(self.explain_samples - self.seen, len(next(iter(fv.values()))) if fv else 0)
        if take > 0:
            for p in self.ops:
                if not p.first_inputs:
                    p.first_inputs = tuple(fv[t][:1].copy() for t in (p.kernel_inputs or p.q_inputs))
            for p in self.ops:
                if p.kernel_inputs:
                    self._kernel_check(p, fv, take)
            for group in _groups([p for p in self.ops if not p.kernel_inputs], fv, take):
                self._isolate(group, fv, take)
            self.seen += take

    def _kernel_check(self, p: _OpProbe, fv: dict[int, np.ndarray], n: int) -> None:
        """The deployed (fused) kernel against the standard's reference on the same integers."""
        ref = fv[p.f_out][:n]
        args = [fv[t][:n] for t in p.kernel_inputs]
        p.isolated.update(ref, self.kernels.run(p.q_op, args).reshape(ref.shape))
        p.expected.update(ref, self.reference.run(p.q_op, args).reshape(ref.shape))

    def _isolate(self, group: list[_OpProbe], fv: dict[int, np.ndarray], n: int) -> None:
        """Isolated and expected error of a group of ops: each side runs the whole group in one interpreter.

        An input on a static grid is quantized once per group: the quantized op gets those integers as its tensor
        stores them, and the float op (same grid, `_input_mode`) their float values.
        """
        stored: dict[tuple, np.ndarray] = {}

        def quantized(t: int, mode: tuple, integers: bool) -> np.ndarray:
            key = (t, mode, integers)
            if key not in stored:
                q = stored.get((t, mode, True))
                if q is None:
                    q = stored[(t, mode, True)] = _stored(fv[t][:n], mode)
                stored[key] = q if integers else _dequantized(q, mode)
            return stored[key]

        # Integers go in as stored only where the cuts take them so (TFLite's `IsolatedOps`); other runtimes get floats.
        integers = hasattr(self.quant_ops, "isolated")
        observed = _run_each(self.quant_ops, {
            p.q_op: [quantized(t, m, True) if m[0] == "static" and integers else fv[t][:n]
                     for t, m in zip(p.q_inputs, p.q_modes)]
            for p in group
        })
        expect = [p for p in group if p.expected is not None]
        simulated = _run_each(self.float_ops, {
            p.f_op: [quantized(t, m, False) if m[0] == "static" else _fake_quant(fv[t][:n], m)
                     for t, m in zip(p.f_inputs, p.f_modes)]
            for p in expect
        })
        del stored
        for p in group:
            ref = fv[p.f_out][:n]
            p.isolated.update(ref, _fake_quant(observed[p.q_op][0], p.observed_mode).reshape(ref.shape))
            if p.expected is not None:
                p.expected.update(ref, _fake_quant(simulated[p.f_op][0], p.out_mode).reshape(ref.shape))

    def inputs_of(self, q_op: int) -> tuple[np.ndarray, ...]:
        """The first evaluated sample's float inputs of quantized op `q_op` (empty if it was not probed)."""
        return next((p.first_inputs for p in self.ops if p.q_op == q_op), ())

    def results(self) -> dict[int, Evidence]:
        """Evidence per float tensor index."""
        by_out = {p.f_out: p for p in self.ops}
        out = {}
        for f, (f_acc, q_acc, grid) in self.acts.items():
            p = by_out.get(f)
            out[f] = Evidence(
                float_stats=f_acc.result(),
                quant_stats=q_acc.result(),
                grid=None if grid is None else grid.result(),
                grid_mode=self.grid_modes.get(f),
                isolated=None if p is None or self.seen == 0 else p.isolated.result(),
                expected=None if p is None or self.seen == 0 or p.expected is None else p.expected.result(),
                skipped=self.skipped.get(f, ""),
            )
        return out

    # -- planning ------------------------------------------------------------------------------------------------
    def _plan_ops(self, float_ops, matching: Matching) -> list[_OpProbe]:
        fg, qg = self.fg, self.qg
        probes = []
        for pair in matching.pairs:
            q_t = through_conversions(qg, pair.quant_index)
            q_prod, f_prod = qg.tensors[q_t].producer, fg.tensors[pair.float_index].producer
            if q_prod is None or f_prod is None:
                continue
            q_op, f_op = qg.op(q_prod), fg.op(f_prod)
            # A QDQ quantizer may fold an activation into the op before it (ORT: Conv+Relu -> Conv whose output grid
            # clips): the op is then measured alone, without a float op to predict it.
            fused = qg.qdq and q_op.type != f_op.type
            if qg.is_conversion(q_op) or (q_op.type != f_op.type and not fused):
                self.skipped[pair.float_index] = f"the quantized op ({q_op.type}) is not the float op ({f_op.type})"
                continue
            q_io, f_io = self.quant_ops.io(q_op.index), float_ops.io(f_op.index)
            q_inputs = [self._float_of(t) for t in q_io.inputs]
            if any(t is None for t in q_inputs) or (not fused and any(t not in self.f_to_q for t in f_io.inputs)):
                self.skipped[pair.float_index] = "an input of the op has no float/quantized counterpart"
                continue
            hybrid = _is_hybrid(qg, q_op)
            f_modes = () if fused else tuple(self._input_mode(t, q_io.inputs, hybrid) for t in f_io.inputs)
            grid_t = qg.tensors[pair.quant_index] if qg.qdq else qg.tensors[q_t]
            out_mode = _static_mode(grid_t) if grid_t.dtype in _INTEGER else ("none",)
            observed_mode = out_mode if qg.qdq and grid_t.index != q_t else ("none",)
            q_modes = tuple(_static_mode(qg.tensors[t]) if qg.tensors[t].dtype in _INTEGER else ("none",)
                            for t in q_io.inputs)
            probes.append(
                _OpProbe(q_op.index, f_op.index, pair.float_index, tuple(q_inputs), tuple(f_io.inputs), f_modes,
                         out_mode, ErrorAccumulator(), None if fused else ErrorAccumulator(), observed_mode,
                         q_modes=q_modes)
            )
            kernel_inputs = self._kernel_inputs(q_op.index)
            if kernel_inputs:
                probes[-1] = replace(probes[-1], kernel_inputs=kernel_inputs,
                                     expected=probes[-1].expected or ErrorAccumulator())
            elif fused:
                self.skipped[pair.float_index] = f"{q_op.type} fused with the float {f_op.type}: no expected error"
        return probes

    def _kernel_inputs(self, q_op: int) -> tuple[int, ...]:
        """Float tensors feeding op `q_op` with its QDQ neighbourhood, or () when it has no kernel check."""
        if self.kernels is None:
            return ()
        try:
            reads = self.kernels.io(q_op).inputs
        except Exception:  # noqa: BLE001 - an op without a QDQ neighbourhood (a Q/DQ op, a float op) has no kernel check
            return ()
        floats = [self._float_of(t) for t in reads]
        return () if any(f is None for f in floats) else tuple(floats)

    def _float_of(self, q: int) -> int | None:
        """The float tensor a quantized one stands for (`Matching.float_of`)."""
        if self.qg.qdq:
            return self.matching.float_of(self.qg, q)
        return self.q_to_f.get(through_conversions(self.qg, q))

    def _input_mode(self, f_in: int, q_reads: tuple[int, ...], hybrid: bool) -> tuple:
        """How the quantized op sees float input `f_in`: through its integer input tensor, per sample, or as is."""
        target = self.f_to_q[f_in]
        for t in q_reads:
            if through_conversions(self.qg, t) == through_conversions(self.qg, target):
                tensor = self.qg.tensors[t]
                if self.qg.qdq and tensor.producer is not None and self.qg.is_conversion(self.qg.op(tensor.producer)):
                    tensor = self.qg.tensors[self.qg.op(tensor.producer).inputs[0]]  # the integer tensor it unpacks
                if tensor.dtype in _INTEGER and tensor.quant is not None:
                    return _static_mode(tensor)
        return ("dynamic",) if hybrid else ("none",)

    def _dequantized_weights(self, quant_runner) -> dict[int, dict[int, np.ndarray]]:
        """For each probed weighted op: its float weight tensor → the quantized model's dequantized weights."""
        from quantdoctor.diagnose.weights import read_weights, _stored_tensor

        out: dict[int, dict[int, np.ndarray]] = {}
        for p in self.ops:
            q_op, f_op = self.qg.op(p.q_op), self.fg.op(p.f_op)
            if not self.qg.is_weighted(q_op) or len(f_op.inputs) < 2:
                continue
            f_w, q_w = _stored_tensor(self.fg, f_op), _stored_tensor(self.qg, q_op)
            if f_w is None or q_w is None or f_w.dtype != "float32" or q_w.dtype not in ("int8", "uint8", "int16"):
                continue
            weights = read_weights(quant_runner.constant, self.qg, q_op)
            if weights is not None and weights.actual.shape == tuple(f_w.shape):
                out[f_op.index] = {f_w.index: weights.actual.astype(np.float32)}
        return out


def _groups(probes: list[_OpProbe], fv: dict[int, np.ndarray], n: int) -> list[list[_OpProbe]]:
    """Probes in execution order, cut into groups whose inputs and outputs stay under `GROUP_BYTES` at `n` samples
    (a group's interpreter holds them all at once; each group is built, run and dropped in turn)."""
    groups: list[list[_OpProbe]] = [[]]
    size = 0
    for p in sorted(probes, key=lambda p: p.q_op):
        per_sample = sum(fv[t][:1].nbytes for t in (*p.q_inputs, *p.f_inputs, p.f_out))
        if groups[-1] and size + per_sample * n > GROUP_BYTES:
            groups.append([])
            size = 0
        groups[-1].append(p)
        size += per_sample * n
    return [g for g in groups if g]


def _run_each(ops, calls: dict[int, list[np.ndarray]]) -> dict[int, list[np.ndarray]]:
    """Each op's outputs on its inputs: all in one interpreter where the runtime can (`isolated`), else one by one."""
    if not calls:
        return {}
    isolated = getattr(ops, "isolated", None)
    if isolated is None:
        return {op: ops.run_outputs(op, args) for op, args in calls.items()}
    return isolated(list(calls)).run_each(calls)


def _grid_tensor(qg: Graph, t: int):
    """The tensor whose grid quantizes `t`: itself, or the output of the QUANTIZE that reads a float `t` (int8 input)."""
    tensor = qg.tensors[t]
    if tensor.dtype in _INTEGER:
        return tensor
    for op in qg.ops:
        if (qg.is_conversion(op) and op.inputs and op.inputs[0] == t and op.outputs
                and qg.tensors[op.outputs[0]].dtype in _INTEGER):
            return qg.tensors[op.outputs[0]]
    return tensor


def _hybrid_inputs(qg: Graph) -> set[int]:
    """Float activations that dynamic-range (hybrid) ops quantize on the fly."""
    return {t for op in qg.ops if _is_hybrid(qg, op) for t in qg.activation_inputs(op)}


def _is_hybrid(qg: Graph, op) -> bool:
    if not qg.is_weighted(op):
        return False
    w, x = qg.tensors[op.inputs[1]], qg.tensors[op.inputs[0]]
    return w.dtype in ("int8", "uint8", "int4") and x.dtype == "float32"


def _static_mode(tensor) -> tuple:
    q = tensor.quant
    if q is None or len(q.scales) != 1:
        return ("none",)
    return ("static", float(q.scales[0]), int(q.zero_points[0]) if q.zero_points else 0, tensor.dtype)


def _stored(x: np.ndarray, mode: tuple) -> np.ndarray:
    """x as an integer tensor on the static grid `mode` stores it (the QUANTIZE kernel's rounding)."""
    from quantdoctor.backends.tflite.extract import to_tensor_dtype

    _, scale, zp, dtype = mode
    return to_tensor_dtype(x, np.dtype(dtype), np.array([scale]), np.array([zp]))


def _dequantized(q: np.ndarray, mode: tuple) -> np.ndarray:
    """(q − zero_point) · scale in float32, computed in place (no two more full-size copies)."""
    _, scale, zp, _ = mode
    out = q.astype(np.float32)
    out -= np.float32(zp)
    out *= np.float32(scale)
    return out


def _fake_quant(x: np.ndarray, mode: tuple) -> np.ndarray:
    """x rounded to the grid `mode` describes and back to float (see the module docstring)."""
    if mode[0] == "static":
        return _dequantized(_stored(x, mode), mode)
    if mode[0] == "dynamic":
        rows = np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1)
        scale, zp, inverse = _dynamic_rows(rows, symmetric=False)
        q = np.clip(round_half_away(rows * inverse[:, None] + zp[:, None].astype(np.float32)), -128, 127)
        return ((q - zp[:, None]) * scale[:, None]).astype(np.float32).reshape(x.shape)
    return np.asarray(x, dtype=np.float32)
