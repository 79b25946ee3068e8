"""The ONNX Runtime backend of the repair builder: repair actions expressed with ORT's quantizer (`quantize_onnx`).

How each action is expressed (ORT 1.31, `quantize_static` in QDQ format):

- keep float → `nodes_to_exclude`. Ops are named by the tensor they write (as for TFLite); the nodes excluded are the
  node that writes the tensor in the float model and the one that writes it in the scheme's own quantized model (ORT
  drops a Relu after a quantized op, so there the Gemm/Conv writes the Relu's output name: both are kept float).
  `quantize_dynamic` rewrites a Gemm as `<name>_MatMul` + `<name>_Add` before excluding: those names are excluded too.
- per-channel weights of one op → `TensorQuantOverrides` `{weight: [{"axis": a}]}` on its weight initializer (ORT
  quantizes an initializer with an axis override per channel even when the scheme is per-tensor), `a` the axis ORT uses
  by default for the op (Conv 0, ConvTranspose 1, Gemm 0 if transB else 1, MatMul 1).
- 16-bit activations → `TensorQuantOverrides` `{tensor: [{"quant_type": "QInt16"}]}` (ORT raises the opset and keeps
  every other tensor at the scheme's type; the QDQ pair of that tensor is 16-bit).
- a calibration range → `TensorQuantOverrides` `{tensor: [{"rmin": lo, "rmax": hi}]}`, the range chosen by
  `repair.ranges` from a histogram of the float activation on the calibration set (captured with `OnnxRunner`).
- the calibration method (minmax, entropy, percentile) → ORT's own calibrator run once with that method.

Calibration runs once per method (ORT's calibrator on the calibration set, recorded); every build then hands ORT the
recorded ranges instead of calibrating again: the calibrator `quantize_static` creates is replaced, for the duration of
the call, by one that returns the stored ranges (`_stored_calibration`). ORT's own code does everything else, so a build
with no action gives exactly the scheme's model, a recipe's stored ranges rebuild the same bytes without data, and no
build depends on the order or timing of calibration (ORT's quantizer is deterministic for the same inputs: checked).
"""

from __future__ import annotations

import contextlib
import sys
import threading
from typing import Any, Sequence

import numpy as np

from quantdoctor.errors import UserInputError
from quantdoctor.repair.actions import (
    ORT_STATIC_SCHEMES,
    Action,
    Backend,
    CalibrationMethod,
    CalibrationRange,
    Int16Activations,
    KeepFloat,
    PerChannel,
)
from quantdoctor.repair.build import Builder, Ranges

QDQ = ("QuantizeLinear", "DequantizeLinear")
WEIGHTED = ("Conv", "ConvTranspose", "Gemm", "MatMul")
OUTPUT_SUFFIX = "_QuantizeLinear_Input"  # ORT renames what the op before a quantized graph output writes
_LOCK = threading.Lock()


def _proto(model: bytes) -> Any:
    from quantdoctor.backends.onnx.loader import parse_model

    return parse_model(bytes(model))


def named(model: bytes) -> bytes:
    """The model with every unnamed node named after its first output (ORT excludes nodes by name); else unchanged."""
    proto = _proto(model)
    taken = {n.name for n in proto.graph.node if n.name}
    changed = False
    for i, node in enumerate(proto.graph.node):
        if not node.name:
            name = node.output[0] if node.output and node.output[0] not in taken else f"{node.op_type}_{i}"
            node.name, changed = name, True
            taken.add(name)
    return proto.SerializeToString() if changed else bytes(model)


def producers(model: bytes) -> dict[str, Any]:
    """Tensor name → the node that writes it."""
    return {out: node for node in _proto(model).graph.node for out in node.output if out}


def op_names(model: bytes) -> list[tuple[str, str]]:
    """(op type, first output name) of every node, in order (the op names actions use)."""
    return [(n.op_type, n.output[0]) for n in _proto(model).graph.node if n.output]


def weighted_ops(model: bytes) -> list[tuple[str, str]]:
    """(op type, output name as in the float model) of the ops of a quantized model whose weight input is quantized."""
    proto = _proto(model)
    inits = {t.name for t in proto.graph.initializer}
    writer = {out: n for n in proto.graph.node for out in n.output}
    out = []
    for n in proto.graph.node:
        w = writer.get(n.input[1]) if n.op_type in WEIGHTED and len(n.input) > 1 else None
        if w is not None and w.op_type == "DequantizeLinear" and w.input[0] in inits and n.output:
            name = n.output[0]
            out.append((n.op_type, name[: -len(OUTPUT_SUFFIX)] if name.endswith(OUTPUT_SUFFIX) else name))
    return out


def quantized_activations(model: bytes) -> set[str]:
    """Names of the activations a QuantizeLinear reads (graph outputs under their float name)."""
    proto = _proto(model)
    inits = {t.name for t in proto.graph.initializer}
    names = {n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits}
    return names | {n[: -len(OUTPUT_SUFFIX)] for n in names if n.endswith(OUTPUT_SUFFIX)}


def model_stats(model: bytes) -> tuple[int, int]:
    """(size in bytes, compute nodes with no quantized input: none read a DequantizeLinear or integer kernel output)."""
    proto = _proto(model)
    writer = {out: n.op_type for n in proto.graph.node for out in n.output}
    integer = ("DequantizeLinear", "DynamicQuantizeLinear")
    count = 0
    for n in proto.graph.node:
        if n.op_type in QDQ or n.op_type == "DynamicQuantizeLinear":
            continue
        if n.op_type.startswith("QLinear") or n.op_type.endswith("Integer"):
            continue
        if not any(writer.get(i) in integer for i in n.input):
            count += 1
    return len(model), count


def weight_axis(node: Any) -> int:
    """The output-channel axis ORT 1.31 uses for the node's weight (operators/conv.py, gemm.py, matmul.py)."""
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return {"Conv": 0, "ConvTranspose": 1, "MatMul": 1}[node.op_type]


class _Stored:
    """Stands in for ORT's calibrator: reads one batch (so the caller sees calibration data) and returns stored ranges."""

    def __init__(self, ranges: Ranges, method: Any) -> None:
        self.ranges, self.method = ranges, method

    def collect_data(self, reader: Any) -> None:
        reader.get_next()

    def compute_data(self) -> Any:
        from onnxruntime.quantization.calibrate import TensorData, TensorsData

        return TensorsData(self.method, {k: TensorData(lowest=np.float32(lo), highest=np.float32(hi))
                                         for k, (lo, hi) in self.ranges.items()})


class _Recording:
    """Wraps ORT's calibrator and keeps the ranges it computes."""

    def __init__(self, real: Any, sink: dict) -> None:
        self._real, self._sink = real, sink

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def compute_data(self) -> Any:
        data = self._real.compute_data()
        for name in data:
            lo, hi = data[name].range_value
            self._sink[name] = (float(np.asarray(lo).reshape(-1)[0]), float(np.asarray(hi).reshape(-1)[0]))
        return data


@contextlib.contextmanager
def _stored_calibration(ranges: Ranges | None, sink: dict):
    """Within the block, `quantize_static` calibrates with `ranges` (None: with ORT's calibrator, recorded in `sink`)."""
    module = sys.modules.get("onnxruntime.quantization.quantize")
    if module is None:
        import onnxruntime.quantization  # noqa: F401 - loads the module

        module = sys.modules["onnxruntime.quantization.quantize"]
    real = module.create_calibrator

    def create(model: Any, op_types: Any = None, *args: Any, **kwargs: Any) -> Any:
        if ranges is not None:
            return _Stored(ranges, kwargs.get("calibrate_method"))
        return _Recording(real(model, op_types, *args, **kwargs), sink)

    with _LOCK:
        module.create_calibrator = create
        try:
            yield
        finally:
            module.create_calibrator = real


class OrtBuilder(Builder):
    """Builds quantized ONNX models with ONNX Runtime for one float model (normalized bytes) and ORT scheme.

    Args:
        ranges: the calibrated (min, max) of every activation ORT calibrates (static schemes; the minmax method), or a
            recipe's stored ranges.
        calibration: a `Dataset` (None when replaying a recipe).
    """

    runtime = "onnx"

    def __init__(self, scheme: str, float_model: bytes, ranges: Ranges | None = None, calibration: Any = None) -> None:
        super().__init__(scheme, Backend.ORT, named(float_model), ranges, calibration)
        self.float_model = bytes(float_model)  # what evaluations and diagnoses compare against (node names aside)
        self._named = named(float_model)
        self._method_ranges: dict[str, Ranges] = {"minmax": dict(self.ranges)} if self.ranges else {}
        self._base: bytes | None = None
        self._writers: tuple[dict, dict, dict] | None = None

    def _op_names(self) -> list[tuple[str, str]]:
        return op_names(self.float_model)

    def quantized_activations(self, model: bytes) -> set[str] | None:
        return quantized_activations(model)

    @classmethod
    def prepare_onnx(cls, float_model: bytes, scheme: str, calib_ds: Any = None) -> OrtBuilder:
        """Calibrate once with ORT's calibrator (static schemes) and return a builder; `float_model` normalized."""
        from quantdoctor.quantize.onnxrt import ORT_SCHEMES

        if ORT_SCHEMES.get(scheme).needs_calibration and calib_ds is None:
            raise UserInputError(f"scheme '{scheme}' needs calibration data; give --calib or more --data")
        builder = cls(scheme, float_model, None, calib_ds)
        if scheme in ORT_STATIC_SCHEMES:
            builder.ranges = builder._calibrate("minmax")
        return builder

    # -- calibration ---------------------------------------------------------------------------------------------------
    def _calibrate(self, method: str) -> Ranges:
        """ORT's ranges with `method` on the calibration set (the scheme's quantization run, recorded)."""
        from quantdoctor.quantize.converter import calibration_from
        from quantdoctor.quantize.onnxrt import quantize_onnx

        if method not in self._method_ranges:
            sink: Ranges = {}
            with _stored_calibration(None, sink):
                model = quantize_onnx(self._named, self.scheme, calibration_from(self.calibration), method)
            self._method_ranges[method] = sink
            if method == "minmax":
                self._base = model
        return self._method_ranges[method]

    def _dummy(self):
        """Calibration 'data' for a build with stored ranges: one zero sample (ORT needs a batch to read)."""
        from quantdoctor.backends.onnx.runner import OnnxRunner

        runner = OnnxRunner(self.float_model, 1)
        shape = runner.inputs()[0].shape
        batch = runner._fixed_batch or 1
        return lambda: iter([np.zeros((batch, *shape), np.float32)])

    # -- checks --------------------------------------------------------------------------------------------------------
    def unsupported(self, action: Action) -> str | None:
        reason = action.unsupported(self.backend, self.scheme)
        if reason:
            return reason
        if isinstance(action, CalibrationMethod):
            if self.calibration is None and action.method not in self._method_ranges:
                return "no calibration data to calibrate with another method"
            return None
        if isinstance(action, CalibrationRange):
            if action.tensor not in self.ranges:
                return f"tensor {action.tensor} has no calibrated range"
            if self.calibration is None and action not in self._range_cache:
                return "no calibration data to histogram the activation"
            return None
        names = {name for _, name in self.ops}
        missing = [t for t in action.targets() if t not in names]
        if missing:
            return f"no op writes {missing[0]}"
        if isinstance(action, PerChannel):
            if not self._weights(action):
                return "no weight initializer to quantize per channel"
        return None

    # -- ranges --------------------------------------------------------------------------------------------------------
    def final_ranges(self, actions: Sequence[Action]) -> Ranges:
        """The ranges of the last calibration-method action (else minmax), with every range action applied."""
        methods = [a.method for a in actions if isinstance(a, CalibrationMethod)]
        ranges = dict(self._calibrate(methods[-1]) if methods and methods[-1] != "minmax" else self.ranges)
        for a in actions:
            if isinstance(a, CalibrationRange):
                ranges[a.tensor] = self.range_for(a)
        return ranges

    # -- building ------------------------------------------------------------------------------------------------------
    def _base_model(self) -> bytes:
        """The scheme's own quantized model (its structure tells which node writes a tensor after ORT's fusions)."""
        if self._base is None:
            self._base = self._quantize([], self.ranges)
        return self._base

    def _nodes(self, tensor: str) -> list[Any]:
        """The float model's nodes that compute `tensor`: its writer there, and its writer in the scheme's model."""
        if self._writers is None:  # parsed once: (float writers, scheme's model writers, float nodes by name)
            self._writers = (producers(self._named), producers(self._base_model()),
                             {n.name: n for n in _proto(self._named).graph.node})
        float_writers, quant_writers, by_name = self._writers
        nodes = []
        float_writer = float_writers.get(tensor)
        quant_writer = quant_writers.get(tensor, quant_writers.get(tensor + OUTPUT_SUFFIX))
        for w in (float_writer, quant_writer):
            if w is not None and w.op_type not in QDQ and w.name in by_name and by_name[w.name] not in nodes:
                nodes.append(by_name[w.name])
        return nodes

    def _weights(self, action: PerChannel) -> dict[str, int]:
        """Weight initializer → channel axis of the ops a per-channel action names."""
        graph = _proto(self._named).graph
        inits = {t.name: len(t.dims) for t in graph.initializer}
        nodes = [n for n in graph.node if n.op_type == action.op_type] if action.op_type else []
        nodes += [n for op in action.ops for n in self._nodes(op)]
        out = {}
        for n in nodes:
            if n.op_type in WEIGHTED and len(n.input) > 1 and inits.get(n.input[1], 0) >= 2:
                out[n.input[1]] = weight_axis(n)
        return out

    def _quantize(self, actions: Sequence[Action], ranges: Ranges) -> bytes:
        from quantdoctor.quantize.onnxrt import quantize_onnx

        kept = [n for a in actions if isinstance(a, KeepFloat) for op in a.ops for n in self._nodes(op)]
        # quantize_dynamic first rewrites a Gemm as MatMul + Add named after it, and excludes by the new names.
        excluded = sorted({n.name for n in kept} | {f"{n.name}_{part}" for n in kept if n.op_type == "Gemm"
                                                     and self.scheme not in ORT_STATIC_SCHEMES for part in ("MatMul", "Add")})
        overrides: dict[str, dict[str, Any]] = {}
        for a in actions:
            if isinstance(a, PerChannel):
                for w, axis in self._weights(a).items():
                    overrides.setdefault(w, {})["axis"] = axis
            elif isinstance(a, Int16Activations):
                for op in a.ops:
                    overrides.setdefault(op, {})["quant_type"] = "QInt16"
            elif isinstance(a, CalibrationRange):
                lo, hi = ranges[a.tensor]
                overrides.setdefault(a.tensor, {}).update(rmin=lo, rmax=hi)
        methods = [a.method for a in actions if isinstance(a, CalibrationMethod)]
        method = methods[-1] if methods else "minmax"
        tensor_overrides = {k: [v] for k, v in sorted(overrides.items())} or None
        if self.scheme not in ORT_STATIC_SCHEMES:
            return quantize_onnx(self._named, self.scheme, None, nodes_to_exclude=excluded,
                                 tensor_overrides=tensor_overrides)
        with _stored_calibration(ranges, {}):
            return quantize_onnx(self._named, self.scheme, self._dummy(), method, excluded, tensor_overrides)


def infer_ort_scheme(model: bytes) -> str:
    """The ORT scheme a quantized .onnx was most likely made with, from its QDQ types and weight scales."""
    from onnx import TensorProto

    proto = _proto(model)
    inits = {t.name: t for t in proto.graph.initializer}
    ops = {n.op_type for n in proto.graph.node}
    if "DynamicQuantizeLinear" in ops or any(o.endswith("Integer") for o in ops):
        weights = [inits[n.input[1]] for n in proto.graph.node
                   if n.op_type in ("MatMulInteger", "ConvInteger") and len(n.input) > 1 and n.input[1] in inits]
        return "ort-dynamic-uint8" if weights and weights[0].data_type == TensorProto.UINT8 else "ort-dynamic"
    quants = [n for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    if not quants:
        raise UserInputError("the --quantized model holds no QuantizeLinear of an activation; give a QDQ model made by "
                             "ONNX Runtime's quantizer")
    types = {inits[n.input[2]].data_type for n in quants if len(n.input) > 2 and n.input[2] in inits}
    if TensorProto.INT16 in types:
        return "ort-qdq-a16w8"
    if TensorProto.UINT8 in types:
        return "ort-qdq-uint8"
    writer = {out: n for n in proto.graph.node for out in n.output}
    per_channel = False
    for n in proto.graph.node:
        w = writer.get(n.input[1]) if n.op_type in WEIGHTED and len(n.input) > 1 else None
        if w is not None and w.op_type == "DequantizeLinear" and w.input[1] in inits:
            per_channel |= int(np.prod(inits[w.input[1]].dims or [1])) > 1
    return "ort-qdq-int8" if per_channel else "ort-qdq-int8-per-tensor"
