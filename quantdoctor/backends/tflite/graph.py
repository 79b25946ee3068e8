"""A read-only view of a .tflite graph: tensors, ops, who produces and who consumes what, quantization parameters."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from quantdoctor.diagnose.results import QuantParams, WeightInfo

# Ops whose second input is a weight tensor the converter may quantize.
WEIGHTED_OPS = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "TRANSPOSE_CONV", "CONV_3D"})
# Ops the converter inserts to move between float and integer; they are not layers of the user's model.
CONVERSION_OPS = frozenset({"QUANTIZE", "DEQUANTIZE"})
# Dynamic-range quantization leaves weight tensors smaller than this in float (TF 1.11 did the same).
DYNAMIC_RANGE_MIN_ELEMENTS = 1024


@dataclass(frozen=True)
class TensorInfo:
    index: int
    name: str
    shape: tuple[int, ...]  # as allocated (batch dimension included for activations)
    dtype: str
    quant: QuantParams | None
    producer: int | None  # index of the op that writes it; None for constants and graph inputs
    consumers: tuple[int, ...]
    is_constant: bool

    @property
    def num_elements(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


@dataclass(frozen=True)
class OpInfo:
    index: int
    type: str
    inputs: tuple[int, ...]  # -1 = optional input left out
    outputs: tuple[int, ...]


@dataclass(frozen=True)
class Graph:
    """Tensors and ops of the primary subgraph, in the interpreter's execution order."""

    tensors: dict[int, TensorInfo]
    ops: tuple[OpInfo, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    @cached_property
    def _ops_by_index(self) -> dict[int, OpInfo]:
        return {op.index: op for op in self.ops}

    def op(self, index: int) -> OpInfo:
        return self._ops_by_index[index]

    def producer_type(self, tensor: int) -> str:
        p = self.tensors[tensor].producer
        return "INPUT" if p is None else self.op(p).type

    def is_weight_dequantize(self, op: OpInfo) -> bool:
        """A DEQUANTIZE that unpacks a constant (fp16 or int8 weights), not an activation."""
        return op.type == "DEQUANTIZE" and self.tensors[op.inputs[0]].is_constant

    def activations(self) -> list[int]:
        """Tensors that carry data at run time: graph inputs and op outputs, minus unpacked weights."""
        out = list(self.inputs)
        for op in self.ops:
            if self.is_weight_dequantize(op):
                continue
            out.extend(t for t in op.outputs if t >= 0)
        return out

    def activation_inputs(self, op: OpInfo) -> tuple[int, ...]:
        """Inputs of an op that carry data (not constants, not unpacked weights)."""
        res = []
        for t in op.inputs:
            if t < 0 or self.tensors[t].is_constant:
                continue
            p = self.tensors[t].producer
            if p is not None and self.is_weight_dequantize(self.op(p)):
                continue
            res.append(t)
        return tuple(res)

    def weight_info(self, op: OpInfo, dynamic_range: bool) -> WeightInfo | None:
        """How the weights of a conv / depthwise / dense op are stored and computed with."""
        if op.type not in WEIGHTED_OPS or len(op.inputs) < 2 or op.inputs[1] < 0:
            return None
        w = self.tensors[op.inputs[1]]
        act_dtype = self.tensors[op.inputs[0]].dtype
        note = ""
        if w.producer is not None and self.op(w.producer).type == "DEQUANTIZE":
            src = self.tensors[self.op(w.producer).inputs[0]]
            return WeightInfo(src.name, src.shape, src.dtype, "float (dequantized at load)", src.quant)
        if w.dtype in ("int8", "uint8", "int4"):
            kernel = "integer" if act_dtype in ("int8", "int16", "uint8") else "hybrid (dynamic range)"
        else:
            kernel = "float"
            if dynamic_range and w.num_elements < DYNAMIC_RANGE_MIN_ELEMENTS:
                note = f"left in float: {w.num_elements} < {DYNAMIC_RANGE_MIN_ELEMENTS} elements"
        return WeightInfo(w.name, w.shape, w.dtype, kernel, w.quant, note)


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
    return Graph(tensors=tensors, ops=ops, inputs=inputs, outputs=outputs)
