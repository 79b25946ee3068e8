"""The one place an ONNX Runtime session is built, and the one place ONNX bytes are read and normalized.

Every session quantdoctor makes runs on the CPU provider with graph optimizations disabled: ORT's optimizer fuses a
QDQ pattern (DequantizeLinear → Conv → QuantizeLinear) into one integer kernel (QLinearConv) and folds nodes away,
and a fused node's intermediate tensors no longer exist. Disabled, the session runs the graph as written: a QDQ model
computes its float ops on dequantized values and rounds at each QuantizeLinear (the numerics the quantization
parameters describe; on the test models the optimized session's outputs agree to 1e-5).

`normalize` gives every model the form the rest of the backend indexes: `Constant` nodes folded into initializers
(they are data, not layers), initializers dropped from the graph inputs (IR < 4 lists them there), nodes in a stable
topological order. Op indices are node positions in the normalized model.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

from quantdoctor.errors import ModelLoadError

_CONSTANT_VALUE_ATTRS = ("value", "value_float", "value_floats", "value_int", "value_ints")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def read_onnx(path: str | Path) -> bytes:
    """The bytes of an .onnx file (external data loaded into them), checked to be an ONNX ModelProto.

    Raises:
        ModelLoadError: the file is missing or not an ONNX model.
    """
    import onnx

    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"model {p} does not exist; give the path of an .onnx file")
    try:
        model = onnx.load(str(p))
    except Exception as exc:  # protobuf DecodeError, missing external data file, ...
        raise ModelLoadError(f"{p} is not an ONNX model ({_first_line(exc)}); give an .onnx file") from None
    _check_model_proto(model, str(p))
    return model.SerializeToString()


def _check_model_proto(model: Any, what: str) -> None:
    # protobuf parses many byte strings "successfully"; a real model has an IR version and a graph with nodes
    if model.ir_version <= 0 or not model.HasField("graph") or not model.graph.node:
        raise ModelLoadError(f"{what} is not an ONNX model (no IR version or no graph); give an .onnx file")
    if _has_undecodable_text(model):
        raise ModelLoadError(f"{what} is not an ONNX model (a name or text field is not UTF-8; the file is damaged); "
                             "give an .onnx file")


def _has_undecodable_text(message: Any) -> bool:
    """True if a string field holds bytes that are not UTF-8: protobuf's upb parser hands those back as `bytes`, not
    `str`, and a tensor name of that kind breaks every lookup and serialization after it."""
    for field, value in message.ListFields():
        if field.type not in (field.TYPE_STRING, field.TYPE_MESSAGE):
            continue
        repeated = getattr(field, "is_repeated", None)
        values = value if (repeated if repeated is not None else field.label == field.LABEL_REPEATED) else [value]
        if field.type == field.TYPE_STRING:
            if any(isinstance(v, bytes) for v in values):
                return True
        elif any(hasattr(v, "ListFields") and _has_undecodable_text(v) for v in values):  # (map keys: no fields)
            return True
    return False


def parse_model(model: bytes, what: str = "the model") -> Any:
    """An `onnx.ModelProto` from bytes.

    Raises:
        ModelLoadError: the bytes are not an ONNX model.
    """
    import onnx

    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(bytes(model))
    except Exception as exc:
        raise ModelLoadError(f"{what} is not an ONNX model ({_first_line(exc)}); give an .onnx file") from None
    _check_model_proto(proto, what)
    return proto


@functools.lru_cache(maxsize=4)
def normalize(model: bytes) -> bytes:
    """The model in the form the backend indexes (see the module docstring); idempotent."""
    import onnx
    from onnx import helper, numpy_helper

    proto = parse_model(model)
    g = proto.graph
    kept = []
    folded = []
    for node in list(g.node):
        attrs = {a.name: a for a in node.attribute}
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(attrs) == 1 \
                and next(iter(attrs)) in _CONSTANT_VALUE_ATTRS and len(node.output) == 1:
            name, attr = next(iter(attrs.items()))
            value = helper.get_attribute_value(attr)
            if name == "value":
                tensor = onnx.TensorProto()
                tensor.CopyFrom(value)
            else:
                import numpy as np

                dtype = np.float32 if name.startswith("value_float") else np.int64
                tensor = numpy_helper.from_array(np.asarray(value, dtype=dtype))
            tensor.name = node.output[0]
            folded.append(tensor)
        else:
            kept.append(node)
    init_names = {t.name for t in g.initializer} | {t.name for t in folded}
    inputs = [vi for vi in g.input if vi.name not in init_names]
    ordered = _topological(kept, {vi.name for vi in inputs} | init_names)
    changed = bool(folded) or len(inputs) != len(g.input) or any(a is not b for a, b in zip(ordered, kept))
    if not changed:
        return bytes(model)
    g.initializer.extend(folded)
    del g.input[:]
    g.input.extend(inputs)
    new_nodes = [_copy(n) for n in ordered]
    del g.node[:]
    g.node.extend(new_nodes)
    return proto.SerializeToString()


def _copy(node: Any) -> Any:
    import onnx

    n = onnx.NodeProto()
    n.CopyFrom(node)
    return n


def _topological(nodes: list, available: set[str]) -> list:
    """Nodes in a topological order that keeps the file's order wherever the file's order is valid."""
    avail = set(available) | {""}
    pending = list(nodes)
    out = []
    while pending:
        rest = []
        progressed = False
        for n in pending:
            # inputs of control-flow bodies come from the outer scope; only the node's own inputs order it
            if all(i in avail for i in n.input):
                out.append(n)
                avail.update(n.output)
                progressed = True
            else:
                rest.append(n)
        if not progressed:
            missing = sorted({i for n in rest for i in n.input if i not in avail})[:3]
            raise ModelLoadError(f"the ONNX graph reads tensors nothing produces ({', '.join(missing)}); "
                                 "check the model with onnx.checker.check_model")
        pending = rest
    return out


def session_options(num_threads: int | None = None, optimize: bool = False) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    opts.intra_op_num_threads = num_threads or os.cpu_count() or 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3  # errors only: a disabled optimizer makes ORT warn about every unfused pattern
    # Idle intra-op threads spin by default; with one session per cut, their spinning starves the session that runs.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def load_session(model: bytes, *, optimize: bool = False, num_threads: int | None = None,
                 what: str = "the model") -> Any:
    """An `onnxruntime.InferenceSession` on the CPU provider.

    Args:
        model: ONNX bytes.
        optimize: run ORT's graph optimizations (fusions that hide intermediate tensors); off for every session that
            captures tensors or runs a cut.
        num_threads: intra-op threads; default all cores.
        what: how the error message names the model ("the quantized model", "op 12 on its own").

    Raises:
        ModelLoadError: ONNX Runtime cannot load the model (one line, ORT's own first line quoted).
    """
    import onnxruntime as ort

    try:
        return ort.InferenceSession(
            bytes(model), sess_options=session_options(num_threads, optimize), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own pybind exception types (Fail, InvalidGraph, NotImplemented, ...)
        raise ModelLoadError(f"ONNX Runtime cannot load {what}: {_first_line(exc)}") from None
