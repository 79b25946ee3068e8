"""A read-only view of a .tflite graph: tensors, ops, who produces and who consumes what, quantization parameters."""

from __future__ import annotations

import numpy as np

from quantdoctor.backends.base import Graph, OpInfo, QuantParams, TensorInfo

__all__ = ["CONVERSION_OPS", "DYNAMIC_RANGE_MIN_ELEMENTS", "WEIGHTED_OPS", "Graph", "OpInfo", "TensorInfo", "graph_from_interpreter"]

# Ops whose second input is a weight tensor the converter may quantize.
WEIGHTED_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D"})
# Ops the converter inserts to move between float and integer; they are not layers of the user's model.
CONVERSION_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})
# Dynamic-range quantization leaves weight tensors smaller than this in float (TF 1.11 did the same).
DYNAMIC_RANGE_MIN_ELEMENTS = 1024


def quant_params(detail: dict) -> QuantParams | None:
    """QuantParams from an interpreter tensor detail; None for float tensors."""
    qp = detail.get("quantization_parameters") or {}
    scales = np.asarray(qp.get("scales", ()), dtype=np.float64)
    if scales.size == 0:
        return None
    zps = np.asarray(qp.get("zero_points", ()), dtype=np.int64)
    axis = int(qp.get("quantized_dimension", 0)) if scales.size > 1 else None
    return QuantParams(
        dtype=np.dtype(detail["dtype"]).name,
        scales=tuple(float(s) for s in scales),
        zero_points=tuple(int(z) for z in zps),
        axis=axis,
    )


def graph_from_interpreter(interpreter) -> Graph:
    """Read the primary subgraph of an allocated LiteRT interpreter."""
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    ops = tuple(
        OpInfo(int(o["index"]), str(o["op_name"]), tuple(int(i) for i in o["inputs"]), tuple(int(i) for i in o["outputs"]))
        for o in interpreter._get_ops_details()
    )
    producers: dict[int, int] = {}
    consumers: dict[int, list[int]] = {}
    for op in ops:
        for t in op.outputs:
            producers[t] = op.index
        for t in op.inputs:
            if t >= 0:
                consumers.setdefault(t, []).append(op.index)
    inputs = tuple(int(d["index"]) for d in interpreter.get_input_details())
    outputs = tuple(int(d["index"]) for d in interpreter.get_output_details())
    tensors = {}
    for idx, d in details.items():
        tensors[idx] = TensorInfo(
            index=idx,
            name=str(d["name"]),
            shape=tuple(int(s) for s in d["shape"]),
            dtype=np.dtype(d["dtype"]).name,
            quant=quant_params(d),
            producer=producers.get(idx),
            consumers=tuple(consumers.get(idx, ())),
            is_constant=idx not in producers and idx not in inputs,
        )
    return Graph(
        tensors=tensors, ops=ops, inputs=inputs, outputs=outputs, weighted_types=WEIGHTED_OPS,
        conversion_types=CONVERSION_OPS, dynamic_min_elements=DYNAMIC_RANGE_MIN_ELEMENTS,
    )
