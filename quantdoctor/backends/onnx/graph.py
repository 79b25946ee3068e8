"""A read-only view of an ONNX graph in the backend protocol's terms (`backends/base.Graph`).

Indexing: ops are the nodes of the normalized model (`loader.normalize`) in order, index = position. Tensors get integer
ids in order of first appearance: graph inputs, initializers, then each node's inputs and outputs; an omitted optional
input ("") is -1. Names are unique in ONNX, so `tensor_ids(graph)` maps names back to ids.

Shapes come from `onnx.shape_inference`; symbolic or unknown dims (the batch dim, usually) are shown as 1, and a tensor
inference says nothing about has shape () and dtype "undefined" until a runner observes it (`with_observed`).

Quantization parameters are attached to **integer tensors only**, as stored: a QuantizeLinear output, a DequantizeLinear
input (a quantized weight initializer, or the QuantizeLinear output it reads) and the integer inputs and outputs of
QLinear* ops, from the scale / zero-point initializers the op reads. In a QDQ model the op between a DQ and a Q (Conv,
Add, ...) writes a float tensor; the grid it is stored on is that of the QuantizeLinear reading it (its consumer), and
the rounding happens in that QuantizeLinear. Scales computed at run time (DynamicQuantizeLinear) have no static
parameters: those tensors carry `quant=None` and are read as raw integers. Block-wise quantization (`block_size`) is
not described (quant=None).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from quantdoctor.backends.base import Graph, OpInfo, QuantParams, TensorInfo

__all__ = ["CONVERSION_OPS", "WEIGHTED_OPS", "graph_from_onnx", "tensor_ids", "with_observed"]

# Ops whose second input is a weight tensor the quantizer may quantize (QLinearConv/QLinearMatMul carry it fourth:
# see the note in the report on `Graph.weight_info`).
WEIGHTED_OPS = frozenset(
    {"Conv", "ConvTranspose", "Gemm", "MatMul", "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger"}
)
# Ops the quantizer inserts to move between float and integer. DynamicQuantizeLinear belongs here: ORT's
# quantize_dynamic inserts it in front of each ConvInteger/MatMulInteger, it is no layer of the user's model, and its
# first input is the float tensor it converts (what `matching.through_conversions` follows).
CONVERSION_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})

# QLinear* ops: (integer input position, its scale position, its zero-point position) and the output's (scale, zp).
_QLINEAR_IO: dict[str, tuple[tuple[tuple[int, int, int], ...], tuple[int, int]]] = {
    "QLinearConv": (((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearMatMul": (((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearAdd": (((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QLinearMul": (((0, 1, 2), (3, 4, 5)), (6, 7)),
    "QGemm": (((0, 1, 2), (3, 4, 5)), (7, 8)),
    "QLinearSigmoid": (((0, 1, 2),), (3, 4)),
    "QLinearLeakyRelu": (((0, 1, 2),), (3, 4)),
    "QLinearGlobalAveragePool": (((0, 1, 2),), (3, 4)),
    "QLinearAveragePool": (((0, 1, 2),), (3, 4)),
    "QLinearSoftmax": (((0, 1, 2),), (3, 4)),
}
_INTEGER = ("int8", "uint8", "int16", "uint16", "int32", "int4", "uint4")


def dtype_name(elem_type: int) -> str:
    """numpy-style dtype name of an ONNX TensorProto element type ("float32", "int8", ...)."""
    from onnx import TensorProto, helper

    if elem_type == TensorProto.UNDEFINED:
        return "undefined"
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except Exception:  # float8 / int4 without ml_dtypes
        return TensorProto.DataType.Name(elem_type).lower()


def _shape_of(type_proto: Any) -> tuple[int, ...]:
    if not type_proto.tensor_type.HasField("shape"):
        return ()
    dims = type_proto.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in dims)


def _typed(model: Any) -> dict[str, tuple[str, tuple[int, ...], bool]]:
    """name -> (dtype, shape, shape known) for every tensor shape inference can type."""
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception:  # inference is a help, not a requirement: unknown ops or bad value_info leave it empty
        inferred = model
    g = inferred.graph
    out: dict[str, tuple[str, tuple[int, ...], bool]] = {}
    for vi in (*g.input, *g.value_info, *g.output):
        tt = vi.type.tensor_type
        if vi.type.HasField("tensor_type"):
            out[vi.name] = (dtype_name(tt.elem_type), _shape_of(vi.type), tt.HasField("shape"))
    for t in g.initializer:
        out[t.name] = (dtype_name(t.data_type), tuple(int(d) for d in t.dims), True)
    return out


def _attr(node: Any, name: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _quant(values: dict[str, np.ndarray], scale: str, zp: str, dtype: str, axis: int, rank: int) -> QuantParams | None:
    """QuantParams from constant scale / zero-point tensors; None if the scale is not a constant."""
    if scale not in values:
        return None
    s = np.asarray(values[scale], dtype=np.float64).reshape(-1)
    z = np.asarray(values[zp]).reshape(-1).astype(np.int64) if zp in values else np.zeros(s.size, np.int64)
    if s.size > 1 and z.size == 1:
        z = np.repeat(z, s.size)
    per_axis = s.size > 1
    if per_axis and axis < 0 and rank:
        axis += rank
    return QuantParams(dtype=dtype, scales=tuple(float(v) for v in s), zero_points=tuple(int(v) for v in z),
                       axis=int(axis) if per_axis else None)


def _quant_params(model: Any, types: dict[str, tuple[str, tuple[int, ...], bool]]) -> dict[str, QuantParams]:
    """name -> QuantParams for the integer tensors described in the module docstring (fills in `types` of integer
    tensors that shape inference left untyped)."""
    from onnx import numpy_helper

    small = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if int(np.prod(t.dims)) <= 1 << 16}
    out: dict[str, QuantParams] = {}

    def put(name: str, scale: str, zp: str, axis: int) -> None:
        if not name or name in out:
            return
        dtype, shape, known = types.get(name, ("undefined", (), False))
        if dtype == "undefined" and zp in small:  # a contrib op shape inference cannot type: the zero point's type
            dtype = small[zp].dtype.name
            types[name] = (dtype, shape, known)
        if dtype not in _INTEGER:
            return
        q = _quant(small, scale, zp, dtype, axis, len(shape))
        if q is not None:
            out[name] = q

    for node in model.graph.node:
        ins = list(node.input) + [""] * 3
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if int(_attr(node, "block_size", 0)) > 0:
                continue
            axis = int(_attr(node, "axis", 1))
            target = node.output[0] if node.op_type == "QuantizeLinear" else ins[0]
            put(target, ins[1], ins[2], axis)
        elif node.op_type in _QLINEAR_IO:
            spec_in, (s_out, z_out) = _QLINEAR_IO[node.op_type]
            for t, s, z in spec_in:
                # per-channel weights of QLinearConv are quantized along the output channels (axis 0)
                put(ins[t] if t < len(node.input) else "", ins[s], ins[z], 0)
            put(node.output[0], ins[s_out], ins[z_out], 1)
        elif node.op_type == "QLinearConcat":
            put(node.output[0], ins[0], ins[1], 1)
            for k in range(2, len(node.input) - 2, 3):
                put(ins[k], ins[k + 1], ins[k + 2], 1)
    return out


def graph_from_onnx(model: bytes) -> Graph:
    """The graph of an ONNX model (normalized first, see `loader.normalize`)."""
    from quantdoctor.backends.onnx.loader import normalize, parse_model

    proto = parse_model(normalize(bytes(model)))
    g = proto.graph
    types = _typed(proto)
    quant = _quant_params(proto, types)
    ids: dict[str, int] = {}

    def tid(name: str) -> int:
        if not name:
            return -1
        if name not in ids:
            ids[name] = len(ids)
        return ids[name]

    inputs = tuple(tid(vi.name) for vi in g.input)
    constants = {t.name for t in g.initializer}
    for t in g.initializer:
        tid(t.name)
    ops = []
    producers: dict[int, int] = {}
    consumers: dict[int, list[int]] = {}
    for i, node in enumerate(g.node):
        op = OpInfo(i, node.op_type, tuple(tid(n) for n in node.input), tuple(tid(n) for n in node.output))
        ops.append(op)
        for t in op.outputs:
            if t >= 0:
                producers[t] = i
        for t in op.inputs:
            if t >= 0:
                consumers.setdefault(t, []).append(i)
    outputs = tuple(tid(vi.name) for vi in g.output)
    tensors = {}
    for name, idx in ids.items():
        dtype, shape, _ = types.get(name, ("undefined", (), False))
        tensors[idx] = TensorInfo(
            index=idx, name=name, shape=shape, dtype=dtype, quant=quant.get(name), producer=producers.get(idx),
            consumers=tuple(consumers.get(idx, ())), is_constant=name in constants,
        )
    return Graph(tensors=tensors, ops=tuple(ops), inputs=inputs, outputs=outputs, weighted_types=WEIGHTED_OPS,
                 qdq=any(op.type == "QuantizeLinear" for op in ops),
                 conversion_types=CONVERSION_OPS, dynamic_min_elements=0)


def tensor_ids(graph: Graph) -> dict[str, int]:
    """Tensor name -> id."""
    return {t.name: i for i, t in graph.tensors.items()}


def with_observed(graph: Graph, observed: dict[int, np.ndarray]) -> Graph:
    """The graph with the dtype and shape of tensors shape inference left unknown taken from values seen at run time."""
    from dataclasses import replace

    tensors = dict(graph.tensors)
    for t, value in observed.items():
        info = tensors[t]
        if info.dtype == "undefined" or not info.shape:
            tensors[t] = replace(info, dtype=np.asarray(value).dtype.name if info.dtype == "undefined" else info.dtype,
                                 shape=tuple(np.shape(value)) if not info.shape else info.shape)
    return replace(graph, tensors=tensors)
