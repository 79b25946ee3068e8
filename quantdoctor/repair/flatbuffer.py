"""Edits of quantization *parameters* in a .tflite flatbuffer (never of values): weight-scale layout and tensor ranges.

Built on the tflite schema object API (as `backends.tflite.extract`), re-packed with constant buffers aligned to 16 bytes
as the converter writes them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from quantdoctor.backends.tflite.extract import _AlignedBuffer, _buffer_bytes, _opcode_name, _schema

# Output-channel axis of the weight tensor, per op type (TFLite layouts: conv OHWI, depthwise 1HWC, dense OI).
_CHANNEL_AXIS = {"CONV_2D": 0, "DEPTHWISE_CONV_2D": 3, "FULLY_CONNECTED": 0, "TRANSPOSE_CONV": 0, "CONV_3D": 4}


def _unpack(model: bytes) -> Any:
    schema_fb = _schema()
    return schema_fb.ModelT.InitFromObj(schema_fb.Model.GetRootAsModel(bytes(model), 0))


def _pack(m: Any, data: bytes) -> bytes:
    import flatbuffers

    buffers = []
    for buf in m.buffers:
        payload = _buffer_bytes(data, buf) if (buf.data is not None or buf.offset > 1) else b""
        buffers.append(_AlignedBuffer(payload) if payload else _schema().BufferT())
    m.buffers = buffers
    builder = flatbuffers.Builder(max(1024, len(data) + 1024))
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def _name(tensor: Any) -> str:
    return tensor.name.decode() if isinstance(tensor.name, bytes) else str(tensor.name)


def op_names(model: bytes) -> list[tuple[str, str]]:
    """(op type, output tensor name) of every op of the primary subgraph, in order."""
    m = _unpack(model)
    sg = m.subgraphs[0]
    out = []
    for op in sg.operators:
        outputs = [int(t) for t in (op.outputs if op.outputs is not None else ()) if t >= 0]
        out.append((_opcode_name(m.operatorCodes[op.opcodeIndex]), _name(sg.tensors[outputs[0]]) if outputs else ""))
    return out


def repeat_weight_scale(model: bytes, ops: set[str], op_type: str | None = None) -> tuple[bytes, list[str]]:
    """Rewrite per-tensor int8 weight quantization as per-channel with the one scale repeated per output channel.

    Args:
        model: the quantized .tflite.
        ops: output tensor names of the ops to change.
        op_type: also change every op of this type.

    Returns:
        (new model, output names of the ops changed). Ops whose weights are float or already per-channel are left alone.
    """
    data = bytes(model)
    m = _unpack(data)
    sg = m.subgraphs[0]
    changed: list[str] = []
    for op in sg.operators:
        kind = _opcode_name(m.operatorCodes[op.opcodeIndex])
        outputs = [int(t) for t in (op.outputs if op.outputs is not None else ()) if t >= 0]
        name = _name(sg.tensors[outputs[0]]) if outputs else ""
        inputs = list(op.inputs if op.inputs is not None else ())
        if kind not in _CHANNEL_AXIS or len(inputs) < 2 or inputs[1] < 0 or not (name in ops or kind == op_type):
            continue
        weight = sg.tensors[int(inputs[1])]
        q = weight.quantization
        if q is None or q.scale is None or len(q.scale) != 1 or weight.type != _schema().TensorType.INT8:
            continue
        axis = _CHANNEL_AXIS[kind]
        channels = int(weight.shape[axis])
        q.scale = np.full(channels, float(q.scale[0]), dtype=np.float32)
        zp = int(q.zeroPoint[0]) if q.zeroPoint is not None and len(q.zeroPoint) else 0
        q.zeroPoint = np.full(channels, zp, dtype=np.int64)
        q.quantizedDimension = axis
        changed.append(name)
    if not changed:
        return data, []
    return _pack(m, data), changed


def read_ranges(model: bytes) -> dict[str, tuple[float, float]]:
    """The calibrated (min, max) of every tensor that has them, by name (a calibrated float model stores them)."""
    m = _unpack(model)
    ranges = {}
    for t in m.subgraphs[0].tensors:
        q = t.quantization
        if q is not None and q.min is not None and len(q.min) == 1 and q.max is not None and len(q.max) == 1:
            ranges[_name(t)] = (float(q.min[0]), float(q.max[0]))
    return ranges


def write_ranges(model: bytes, ranges: dict[str, tuple[float, float]]) -> bytes:
    """Set the (min, max) of the named tensors, which `mlir_quantize` turns into scales and zero points.

    Raises:
        KeyError: a name that no tensor carries, or a tensor that has no calibrated range.
    """
    data = bytes(model)
    m = _unpack(data)
    by_name = {_name(t): t for t in m.subgraphs[0].tensors}
    for name, (lo, hi) in ranges.items():
        t = by_name[name]
        if t.quantization is None or t.quantization.min is None:
            raise KeyError(name)
        t.quantization.min = np.array([lo], dtype=np.float32)
        t.quantization.max = np.array([hi], dtype=np.float32)
    return _pack(m, data)
