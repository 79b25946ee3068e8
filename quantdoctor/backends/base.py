"""The backend protocol: what every runtime gives the rest of quantdoctor.

- a **graph view** (`Graph`): ops in execution order, tensors with their quantization parameters, producers and
  consumers, and the op groupings the runtime defines (weighted ops, conversion ops);
- a **runner** (`Runner`): runs a float batch and captures any tensors **by index**, dequantized to float32;
- a **sub-graph runner** (`SubgraphRunner`): runs a cut of the model — one op, or every op but a chosen few — on inputs
  taken from elsewhere. The isolated/expected error of an op and the counterfactual splices of `diagnose/verify.py`
  (the quantized model with some ops' outputs replaced by the float model's) are both such cuts.

A runtime is one folder under `backends/` (`tflite/` today) whose `loader` builds these; nothing above `backends/`
branches on the framework. Shared value types (quantization parameters, weight storage) live here so that backends never
import the layers above them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any, Callable, Protocol

import numpy as np


# A batch for a model: one array for a single-input model, a tuple with one array per input (in the model's input
# order) for a model with several inputs. Samples are on the first axis of every array.
Batch = np.ndarray | tuple[np.ndarray, ...]


def as_inputs(batch: Batch) -> tuple[np.ndarray, ...]:
    """The arrays of a batch, one per model input."""
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def batch_len(batch: Batch) -> int:
    """How many samples a batch holds."""
    return int(as_inputs(batch)[0].shape[0])


def batch_slice(batch: Batch, stop: int) -> Batch:
    """The first `stop` samples of a batch, in the batch's own form."""
    if isinstance(batch, (tuple, list)):
        return tuple(b[:stop] for b in batch)
    return batch[:stop]


@dataclass(frozen=True)
class TensorSpec:
    """Name, per-sample shape and dtype of a model input or output."""

    name: str
    shape: tuple[int, ...]  # without the batch dimension
    dtype: str


@dataclass(frozen=True)
class QuantParams:
    """Quantization parameters of one tensor as stored in the .tflite file."""

    dtype: str
    scales: tuple[float, ...]
    zero_points: tuple[int, ...]
    axis: int | None  # quantized dimension for per-channel, None for per-tensor

    @property
    def granularity(self) -> str:
        return "per-channel" if len(self.scales) > 1 else "per-tensor"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["scales"] = list(self.scales)
        d["zero_points"] = list(self.zero_points)
        d["granularity"] = self.granularity
        return d


@dataclass(frozen=True)
class WeightInfo:
    """How the converter stored the weights of one op."""

    tensor: str
    shape: tuple[int, ...]
    storage: str  # "int8", "float16", "float32", ...
    kernel: str  # "integer", "hybrid (dynamic range)", "float (dequantized at load)", "float"
    quant: QuantParams | None
    note: str = ""  # e.g. "left in float: fewer than 1024 elements"

    def to_dict(self) -> dict[str, Any]:
        return {
            "tensor": self.tensor,
            "shape": list(self.shape),
            "storage": self.storage,
            "kernel": self.kernel,
            "quant": self.quant.to_dict() if self.quant else None,
            "note": self.note,
        }


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
    # Op groupings the backend supplies: ops that carry a weight tensor as their second input, and ops the quantizer
    # inserts to move between float and integer (not layers of the user's model).
    weighted_types: frozenset[str] = frozenset()
    conversion_types: frozenset[str] = frozenset()
    # Dynamic-range quantization leaves weight tensors smaller than this in float (0: no such rule).
    dynamic_min_elements: int = 0
    # QDQ form (ONNX): ops compute in float and a quantize op after them puts the value on the grid, so a tensor's
    # quantized value is the output of the quantize op that reads it (matching pairs that one).
    qdq: bool = False

    def quantized_form(self, t: int) -> int:
        """In a QDQ graph, the integer output of the quantize op that reads float tensor `t`; else `t` itself."""
        integer = ("int8", "uint8", "int16", "uint16")
        if not self.qdq or self.tensors[t].dtype in integer:
            return t
        for c in self.tensors[t].consumers:
            op = self.op(c)
            if self.is_conversion(op) and op.outputs and op.outputs[0] >= 0:
                out = self.tensors[op.outputs[0]]
                if out.dtype in integer and out.quant is not None:
                    return out.index
        return t

    @cached_property
    def _ops_by_index(self) -> dict[int, OpInfo]:
        return {op.index: op for op in self.ops}

    def op(self, index: int) -> OpInfo:
        return self._ops_by_index[index]

    def producer_type(self, tensor: int) -> str:
        p = self.tensors[tensor].producer
        return "INPUT" if p is None else self.op(p).type

    def is_conversion(self, op: OpInfo) -> bool:
        return op.type in self.conversion_types

    def is_weighted(self, op: OpInfo) -> bool:
        return op.type in self.weighted_types and len(op.inputs) >= 2 and op.inputs[1] >= 0

    def is_weight_dequantize(self, op: OpInfo) -> bool:
        """A conversion op that unpacks a constant (fp16 or int8 weights), not an activation."""
        return op.type in self.conversion_types and bool(op.inputs) and self.tensors[op.inputs[0]].is_constant

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
        if not self.is_weighted(op):
            return None
        w = self.tensors[op.inputs[1]]
        act_dtype = self.tensors[op.inputs[0]].dtype
        note = ""
        if w.producer is not None and self.is_weight_dequantize(self.op(w.producer)):
            src = self.tensors[self.op(w.producer).inputs[0]]
            return WeightInfo(src.name, src.shape, src.dtype, "float (dequantized at load)", src.quant)
        if w.dtype in ("int8", "uint8", "int4"):
            kernel = "integer" if act_dtype in ("int8", "int16", "uint8") else "hybrid (dynamic range)"
        else:
            kernel = "float"
            if dynamic_range and w.num_elements < self.dynamic_min_elements:
                note = f"left in float: {w.num_elements} < {self.dynamic_min_elements} elements"
        return WeightInfo(w.name, w.shape, w.dtype, kernel, w.quant, note)


class Runner(Protocol):
    """A loaded model that runs float batches and reads back its tensors."""

    graph: Graph
    model: bytes

    def inputs(self) -> list[TensorSpec]: ...

    def outputs(self) -> list[TensorSpec]: ...

    def run(self, batch: Batch) -> np.ndarray:
        """First output for a float batch, as float32 (quantized outputs are dequantized)."""
        ...

    def run_all(self, batch: Batch) -> list[np.ndarray]:
        """Every output for a float batch, in the model's output order, as float32."""
        ...

    def capture(self, batch: Batch, names: Sequence[int], copy: bool = True) -> dict[int, np.ndarray]:
        """Values (float32, dequantized) of the given tensors for a float batch."""
        ...

    def splice(self, replaced: Sequence[int]) -> SpliceRunner:
        """The model run with ops `replaced` computed by the caller, everything else by its own kernels."""
        ...

    def op_runner(self, constants: dict[int, dict[int, np.ndarray]] | None = None) -> OpRunnerLike:
        """Runs single ops of this model on float inputs (its isolated ops); `constants` (op → tensor → float32
        array) replaces constants in those ops' cuts, e.g. float weights by a quantized model's dequantized ones."""
        ...

    def constant(self, index: int) -> np.ndarray:
        """A constant tensor (weights, bias) as the model stores it."""
        ...

    def release(self) -> None:
        """Free the buffers that keep every tensor of a batch readable; the next run allocates them again."""
        ...


class SubgraphRunner(Protocol):
    """A cut of a model that runs on inputs fed from outside, in the source model's tensor indices."""

    inputs: tuple[int, ...]  # source tensors fed from outside, in the order `run` takes them
    outputs: tuple[int, ...]  # source tensors returned, in order

    def run(self, float_inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Float32 outputs for float inputs; a float input to an integer tensor is quantized as the model stores it."""
        ...


class SpliceRunner(Protocol):
    """A model run with some ops computed by the caller (the counterfactuals of `diagnose/verify.py`)."""

    outputs: tuple[int, ...]  # the graph outputs

    def run(self, x: Batch, compute: Callable[[int, list[np.ndarray]], list[np.ndarray]]) -> list[np.ndarray]:
        """Float32 graph outputs; `compute(op, input values)` returns each replaced op's outputs."""
        ...


class OpRunnerLike(Protocol):
    """Single ops of a model run alone on float inputs."""

    def io(self, op_index: int) -> Any:
        """`.inputs` / `.outputs`: the source tensors the op reads (the order `run_outputs` takes) and writes."""
        ...

    def run_outputs(self, op_index: int, float_inputs: Sequence[np.ndarray]) -> list[np.ndarray]: ...
