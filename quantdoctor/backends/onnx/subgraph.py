"""Run cuts of an ONNX model on inputs fed from outside: one op alone, or the model with some ops computed elsewhere.

A cut is a ModelProto of the chosen nodes, the initializers they read and the weight-unpacking DequantizeLinear nodes
that feed them (so a QDQ Conv keeps its int8 weights), run in ONNX Runtime with graph optimizations disabled like the
runner's session. A float value fed into an integer tensor is quantized with that tensor's scale and zero point as
ONNX's QuantizeLinear does (round half to even, saturate); integer outputs come back dequantized; integer tensors
without static parameters (DynamicQuantizeLinear outputs) are cast. Tensor and op indices are the source model's
(`graph.graph_from_onnx` of the normalized model).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantdoctor.backends.base import Graph, QuantParams, as_inputs
from quantdoctor.backends.splice import OpRunnerBase, SpliceBase
from quantdoctor.errors import DataError, UserInputError

_INTEGER = ("int8", "uint8", "int16", "uint16", "int32")


@dataclass(frozen=True)
class CutIO:
    """Which tensors of the source model a cut reads and writes, in the cut's input/output order."""

    ops: tuple[int, ...]  # source op indices kept, in execution order (weight DequantizeLinear nodes included)
    inputs: tuple[int, ...]  # source tensors fed from outside
    outputs: tuple[int, ...]  # source tensors returned


@functools.lru_cache(maxsize=4)
def _parsed(model: bytes) -> tuple[Any, Graph, dict[str, Any], int | None]:
    """(normalized ModelProto, its Graph, name -> TypeProto from shape inference, fixed batch dim or None) of a model;
    shared, do not change."""
    import onnx

    from quantdoctor.backends.onnx.graph import graph_from_onnx
    from quantdoctor.backends.onnx.loader import normalize, parse_model

    proto = parse_model(normalize(model))
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False)
    except Exception:
        inferred = proto
    types = {vi.name: vi.type for vi in (*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output)}
    dims = proto.graph.input[0].type.tensor_type.shape.dim if proto.graph.input else ()
    fixed = dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
    return proto, graph_from_onnx(model), types, fixed


def fixed_batch(model: bytes) -> int | None:
    """The batch dim the model's input fixes (1 for most exported models), None if symbolic."""
    return _parsed(bytes(model))[3]


def downstream(graph: Graph, sources: Sequence[int], ops: Sequence[int] | None = None) -> set[int]:
    """Tensors computed from `sources` (included) by `ops` (default all): the ones that carry the batch dim."""
    reached = set(sources)
    for op in graph.ops if ops is None else (graph.op(i) for i in sorted(ops)):
        if any(t in reached for t in op.inputs if t >= 0):
            reached.update(t for t in op.outputs if t >= 0)
    return reached


def in_chunks(fn, arrays: Sequence[np.ndarray], batch: int | None,
              batch_major: Sequence[bool] | None = None) -> list[np.ndarray]:
    """`fn(arrays)` run on chunks of `batch` samples along axis 0 (the last zero-padded), outputs joined.

    Runs at once when there is no fixed batch, the arrays already hold `batch` samples, or not every array is
    batch-major (a run-time scale read by a cut). An output that `batch_major` marks False (computed from constants
    alone) or that lacks the batch dim (a run-time scale) is the first chunk's.
    """
    n = arrays[0].shape[0] if arrays and np.ndim(arrays[0]) else None
    if batch is None or n is None or n == batch or any(np.ndim(a) == 0 or a.shape[0] != n for a in arrays):
        return list(fn(arrays))
    chunks = []
    for start in range(0, n, batch):
        part = [a[start:start + batch] for a in arrays]
        if part[0].shape[0] < batch:
            part = [np.concatenate([p, np.zeros((batch - p.shape[0], *p.shape[1:]), p.dtype)]) for p in part]
        chunks.append(list(fn(part)))
    joined = []
    for k in range(len(chunks[0])):
        parts = [c[k] for c in chunks]
        if (batch_major is None or batch_major[k]) and all(np.ndim(p) and p.shape[0] == batch for p in parts):
            joined.append(np.concatenate(parts)[:n])
        else:
            joined.append(parts[0])
    return joined


def plan(model: bytes, op_indices: Sequence[int], outputs: Sequence[int] | None = None) -> CutIO:
    """Which ops and tensors a cut of `op_indices` holds (the rules of `backends/tflite/extract.plan`).

    Inputs are the tensors read but not produced inside, minus initializers, each once in order of first use; outputs
    are the chosen ops' outputs not consumed inside, plus those the model returns or other ops read (`outputs`
    overrides).

    Raises:
        UserInputError: no op, an index out of range, or an `outputs` tensor the cut does not produce.
    """
    g = _parsed(bytes(model))[1]
    chosen = sorted({int(i) for i in op_indices})
    if not chosen:
        raise UserInputError("no op to cut out; give at least one op index")
    bad = [i for i in chosen if not 0 <= i < len(g.ops)]
    if bad:
        raise UserInputError(f"op {bad[0]} does not exist; the model has ops 0-{len(g.ops) - 1}")
    kept = set(chosen)
    for i in chosen:
        for t in g.ops[i].inputs:
            p = None if t < 0 else g.tensors[t].producer
            if p is not None and g.is_weight_dequantize(g.ops[p]):
                kept.add(p)
    order = sorted(kept)
    produced = {t for i in order for t in g.ops[i].outputs if t >= 0}
    inputs: list[int] = []
    for i in order:
        for t in g.ops[i].inputs:
            if t >= 0 and t not in produced and t not in inputs and not g.tensors[t].is_constant:
                inputs.append(t)
    if outputs is not None:
        missing = [int(t) for t in outputs if int(t) not in produced]
        if missing:
            raise UserInputError(f"tensor(s) {missing} are not produced by the ops to cut out")
        return CutIO(tuple(order), tuple(inputs), tuple(int(t) for t in outputs))
    consumed_inside = {t for i in order for t in g.ops[i].inputs}
    consumed_outside = {t for op in g.ops if op.index not in kept for t in op.inputs} | set(g.outputs)
    outs = [t for i in chosen for t in g.ops[i].outputs
            if t >= 0 and (t not in consumed_inside or t in consumed_outside)]
    return CutIO(tuple(order), tuple(inputs), tuple(outs))


def cut_model(model: bytes, io: CutIO, constants: dict[int, np.ndarray] | None = None,
              graph: Graph | None = None) -> bytes:
    """The ModelProto of a cut, serialized (opsets, IR version and local functions of the source kept).

    Args:
        constants: initializers to replace (source tensor index → array of the same shape).
        graph: the source graph with dtypes observed at run time (`OnnxRunner.graph`), for tensors shape inference
            cannot type (outputs of contrib ops); cut inputs must be typed.
    """
    import onnx
    from onnx import helper, numpy_helper

    proto, g, types, _ = _parsed(bytes(model))
    g = graph or g
    nodes = [proto.graph.node[i] for i in io.ops]
    needed = {n for node in nodes for n in node.input}
    constants = constants or {}
    replace = {g.tensors[t].name: a for t, a in constants.items()}
    inits = []
    for t in proto.graph.initializer:
        if t.name in needed:
            if t.name in replace:
                inits.append(numpy_helper.from_array(np.asarray(replace[t.name]).astype(
                    numpy_helper.to_array(t).dtype), t.name))
            else:
                inits.append(t)

    def value_info(t: int) -> Any:
        name = g.tensors[t].name
        elem = types[name].tensor_type.elem_type if name in types and types[name].HasField("tensor_type") else 0
        if not elem and g.tensors[t].dtype != "undefined":  # a contrib op's output typed by the graph view
            elem = helper.np_dtype_to_tensor_dtype(np.dtype(g.tensors[t].dtype))
        if elem:
            return helper.make_tensor_value_info(name, elem, None)  # rank left open: any batch, any size
        return helper.make_empty_tensor_value_info(name)

    graph = helper.make_graph(nodes, "quantdoctor_cut", [value_info(t) for t in io.inputs],
                              [value_info(t) for t in io.outputs], inits)
    out = helper.make_model(graph, opset_imports=list(proto.opset_import), ir_version=proto.ir_version)
    out.functions.extend(proto.functions)
    return out.SerializeToString() if isinstance(out, onnx.ModelProto) else bytes(out)


class Subgraph:
    """Ops of a model cut out and run on their own (`SubgraphRunner` of `backends/base.py`).

    Args:
        model: the source ONNX bytes.
        ops: source op indices to keep (weight-unpacking DequantizeLinear nodes that feed them are added).
        constants: initializers to replace (source tensor index → array), e.g. a float op's weights swapped for a
            quantized model's dequantized ones.
        outputs: source tensors to return; default as `plan` chooses.
        graph: the source graph as the runner observed it (see `cut_model`).
    """

    def __init__(self, model: bytes, ops: Sequence[int], *, constants: dict[int, np.ndarray] | None = None,
                 outputs: Sequence[int] | None = None, num_threads: int | None = None,
                 graph: Graph | None = None) -> None:
        from quantdoctor.backends.onnx.loader import load_session

        data = bytes(model)
        io = plan(data, ops, outputs)
        self.ops, self.inputs, self.outputs = io.ops, io.inputs, io.outputs
        self.graph, self.batch = graph or _parsed(data)[1], _parsed(data)[3]
        reached = downstream(self.graph, self.inputs, self.ops)
        self._batch_major = [t in reached for t in self.outputs]
        what = f"op {io.ops[-1]} on its own" if len(ops) == 1 else f"a cut of {len(io.ops)} ops"
        self.session = load_session(cut_model(data, io, constants, graph), num_threads=num_threads, what=what)
        self._in_names = [i.name for i in self.session.get_inputs()]
        self._out_names = [o.name for o in self.session.get_outputs()]
        self._in_types = [_np_type(i.type) for i in self.session.get_inputs()]

    def _invoke(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        if len(arrays) != len(self._in_names):
            raise DataError(
                f"the cut reads {len(self._in_names)} activation tensor(s); {len(arrays)} array(s) were given")
        return self.session.run(self._out_names, dict(zip(self._in_names, arrays, strict=True)))

    def run_raw(self, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Outputs as the kernels write them (integers stay integers); inputs are cast, not quantized."""
        feed = [np.asarray(a).astype(d, copy=False) if d is not None else np.asarray(a)
                for a, d in zip(arrays, self._in_types, strict=False)]
        return in_chunks(self._invoke, feed, self.batch, self._batch_major)

    def run(self, float_inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Float32 outputs for float inputs (quantized into integer input tensors; integer outputs dequantized)."""
        feed = [to_tensor(np.asarray(a), self.graph.tensors[t].quant, d)
                for a, t, d in zip(float_inputs, self.inputs, self._in_types, strict=False)]
        outs = in_chunks(self._invoke, feed, self.batch, self._batch_major)
        return [from_tensor(v, self.graph.tensors[t].quant) for v, t in zip(outs, self.outputs, strict=True)]


class OpRunner(OpRunnerBase):
    """Single ops of an ONNX model (the runner's normalized bytes), each cut out and run alone (`OpRunnerBase`);
    `constants` replace initializers in an op's cut."""

    def __init__(self, model: bytes, num_threads: int | None = None,
                 constants: dict[int, dict[int, np.ndarray]] | None = None, graph: Graph | None = None) -> None:
        super().__init__(model, num_threads, constants)
        self.graph = graph

    def _plan(self, op_index: int) -> CutIO:
        return plan(self.model, [op_index])

    def _cut_op(self, op_index: int) -> Subgraph:
        outputs = tuple(t for t in _parsed(self.model)[1].ops[op_index].outputs if t >= 0)
        return Subgraph(self.model, [op_index], constants=self.constants.get(op_index), outputs=outputs,
                        num_threads=self._threads, graph=self.graph)


class Splice(SpliceBase):
    """An ONNX model run in segments with the ops in `replaced` computed by the caller (see `SpliceBase`).

    Only integer tensors have a grid: a QDQ op's float output stays float, its QuantizeLinear does the rounding. A model
    with a fixed batch dim runs chunk by chunk, every step on the same samples as the runner's session (`compute` is
    then called once per chunk).
    """

    def __init__(self, model: bytes, graph: Graph, replaced: Sequence[int], num_threads: int | None = None) -> None:
        self._data, self._threads = bytes(model), num_threads
        super().__init__(graph, replaced)
        self.batch = fixed_batch(self._data)

    def _cut(self, ops: list[int], outputs: list[int]) -> Subgraph:
        return Subgraph(self._data, ops, outputs=outputs, num_threads=self._threads, graph=self.graph)

    def _op_inputs(self, op: int) -> tuple[int, ...]:
        return plan(self._data, [op]).inputs

    def run(self, x, compute) -> list[np.ndarray]:
        arrays = [np.asarray(a, dtype=np.float32) for a in as_inputs(x)]
        return in_chunks(lambda xs: super(Splice, self).run(tuple(xs), compute), arrays, self.batch)

    def _on_grid(self, t: int, value: np.ndarray) -> np.ndarray:
        info = self.graph.tensors[t]
        if info.quant is None or info.dtype not in _INTEGER:
            return np.asarray(value, dtype=np.float32)
        return from_tensor(to_tensor(np.asarray(value, dtype=np.float32), info.quant, np.dtype(info.dtype)), info.quant)


_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16,
    "tensor(int8)": np.int8, "tensor(uint8)": np.uint8, "tensor(int16)": np.int16, "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32, "tensor(int64)": np.int64, "tensor(uint32)": np.uint32, "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


def _np_type(ort_type: str) -> np.dtype | None:
    t = _ORT_TYPES.get(ort_type)
    return None if t is None else np.dtype(t)


def _broadcast(q: QuantParams, ndim: int) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(q.scales, dtype=np.float32)
    z = np.asarray(q.zero_points, dtype=np.float32) if q.zero_points else np.zeros_like(s)
    if s.size > 1 and q.axis is not None and ndim > q.axis:
        shape = [1] * ndim
        shape[q.axis] = s.size
        s, z = s.reshape(shape), z.reshape(shape)
    return s, z


def to_tensor(array: np.ndarray, quant: QuantParams | None, dtype: np.dtype | None) -> np.ndarray:
    """`array` as a tensor of `dtype` holds it: float quantized like ONNX QuantizeLinear when `quant` is given.

    q = saturate(round_half_to_even(x / scale) + zero_point), computed in float32 as ORT's CPU kernel does.
    """
    a = np.asarray(array)
    if dtype is None:
        return a
    if dtype.kind not in "iu" or a.dtype.kind != "f" or quant is None:
        return a.astype(dtype, copy=False)
    s, z = _broadcast(quant, a.ndim)
    info = np.iinfo(dtype)
    return np.clip(np.rint(a.astype(np.float32) / s) + z, info.min, info.max).astype(dtype)


def from_tensor(value: np.ndarray, quant: QuantParams | None) -> np.ndarray:
    """A tensor's value as float32: (q − zero_point) × scale for integer tensors with parameters, else a cast."""
    v = np.asarray(value)
    if quant is None or v.dtype.kind not in "iu":
        return v.astype(np.float32)
    s, z = _broadcast(quant, v.ndim)
    return ((v.astype(np.float32) - z) * s).astype(np.float32)
