"""Cut ops out of a .tflite model into a standalone model: the same kernel, quantization parameters and constants.

An extracted op can be run on any input (the float model's activation, to measure the op's own error) and, saved with
that input, is a minimal reproduction to attach to a bug report. Tensor and op indices are those of the model's primary
subgraph, which are the indices LiteRT reports when no delegate is applied (as in `TfliteRunner`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantdoctor.errors import ModelLoadError, UserInputError
from quantdoctor.files import atomic_write_bytes
from quantdoctor.stats.grid import round_half_away

# Ops that call other subgraphs; cutting them out would need those subgraphs too.
_SUBGRAPH_FIELDS = ("Subgraph", "subgraph")
# Constant buffers are aligned like the converter aligns them, so kernels may read them in place.
_BUFFER_ALIGNMENT = 16


@dataclass(frozen=True)
class ExtractedIO:
    """Which tensors of the source model an extract reads and writes, in the extract's input/output order."""

    ops: tuple[int, ...]  # source op indices kept, in execution order (weight DEQUANTIZE ops included)
    inputs: tuple[int, ...]  # source tensor indices fed from outside
    outputs: tuple[int, ...]  # source tensor indices returned


def _schema() -> Any:
    from ai_edge_litert import schema_py_generated as schema_fb

    return schema_fb


@functools.lru_cache(maxsize=2)
def _parse(model: bytes) -> Any:
    """The flatbuffer object tree of a model; cached because every op of one model is cut from the same bytes.

    The tree is shared: callers copy what they change.
    """
    if model[4:8] != b"TFL3":
        raise ModelLoadError("not a TFLite flatbuffer (no TFL3 identifier); give the bytes of a .tflite file")
    schema_fb = _schema()
    return schema_fb.ModelT.InitFromObj(schema_fb.Model.GetRootAsModel(model, 0))


@functools.lru_cache(maxsize=1)
def _builtin_names() -> dict[int, str]:
    ops = _schema().BuiltinOperator
    return {v: k for k, v in vars(ops).items() if not k.startswith("_") and isinstance(v, int)}


def _opcode_name(code: Any) -> str:
    if code.customCode:
        return code.customCode.decode() if isinstance(code.customCode, bytes) else str(code.customCode)
    builtin = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))  # old files only fill the deprecated field
    return _builtin_names().get(builtin, f"BUILTIN_{builtin}")


def op_type(model: bytes, op_index: int) -> str:
    """The type name of op `op_index` ("CONV_2D", or a custom op's name)."""
    m = _parse(bytes(model))
    return _opcode_name(m.operatorCodes[_operator(m, op_index).opcodeIndex])


def _operator(m: Any, op_index: int) -> Any:
    ops = m.subgraphs[0].operators or []
    if not 0 <= op_index < len(ops):
        raise UserInputError(f"op {op_index} does not exist; the model's main graph has ops 0-{len(ops) - 1}")
    return ops[op_index]


def _has_data(m: Any, tensor: Any) -> bool:
    buf = m.buffers[tensor.buffer] if tensor.buffer < len(m.buffers) else None
    return buf is not None and ((buf.data is not None and len(buf.data) > 0) or buf.offset > 1)


def plan(model: bytes, op_indices: Sequence[int], outputs: Sequence[int] | None = None) -> ExtractedIO:
    """Which ops and tensors an extract of `op_indices` holds, without building it.

    Ops that unpack constant weights (a DEQUANTIZE of int8/float16 constants) and feed a chosen op are kept too: the
    op's kernel is then the one the full model runs. Inputs are the tensors read but not produced inside the extract,
    minus constants and variables, each once, in order of first use; outputs are the chosen ops' outputs that are not
    consumed inside, plus those the source model returns or other ops read; `outputs` overrides that choice (tensors
    the extract must produce).

    Raises:
        UserInputError: an index is out of range, an op calls other subgraphs (WHILE, IF, ...), or an `outputs` tensor
            is not produced by the extract.
    """
    m = _parse(bytes(model))
    sg = m.subgraphs[0]
    chosen = sorted(set(int(i) for i in op_indices))
    if not chosen:
        raise UserInputError("no op to extract; give at least one op index")
    producer = {t: i for i, op in enumerate(sg.operators) for t in _tensor_list(op.outputs)}
    kept = set(chosen)
    for i in chosen:
        op = _operator(m, i)
        _refuse_subgraph_calls(m, op, i)
        for t in _tensor_list(op.inputs):
            p = producer.get(t)
            if p is not None and _is_weight_unpack(m, sg.operators[p]):
                kept.add(p)
    order = sorted(kept)
    produced = {t for i in order for t in _tensor_list(sg.operators[i].outputs)}
    inputs: list[int] = []
    for i in order:
        for t in _tensor_list(sg.operators[i].inputs):
            tensor = sg.tensors[t]
            if t in produced or t in inputs or tensor.isVariable or _has_data(m, tensor):
                continue
            inputs.append(t)
    if outputs is not None:
        missing = [int(t) for t in outputs if int(t) not in produced]
        if missing:
            raise UserInputError(f"tensor(s) {missing} are not produced by the ops to extract")
        return ExtractedIO(tuple(order), tuple(inputs), tuple(int(t) for t in outputs))
    consumed_inside = {t for i in order for t in _tensor_list(sg.operators[i].inputs)}
    consumed_outside = {
        t for j, op in enumerate(sg.operators) if j not in kept for t in _tensor_list(op.inputs)
    } | set(_tensor_list(sg.outputs))
    outputs = [  # weight unpack ops are left out: what they write is a constant of the extract, not a result
        t
        for i in chosen
        for t in _tensor_list(sg.operators[i].outputs)
        if t not in consumed_inside or t in consumed_outside
    ]
    return ExtractedIO(tuple(order), tuple(inputs), tuple(outputs))


def _tensor_list(indices: Any) -> list[int]:
    return [int(t) for t in (indices if indices is not None else ()) if t >= 0]


def _is_weight_unpack(m: Any, op: Any) -> bool:
    if _opcode_name(m.operatorCodes[op.opcodeIndex]) != "DEQUANTIZE":
        return False
    ins = _tensor_list(op.inputs)
    return bool(ins) and all(_has_data(m, m.subgraphs[0].tensors[t]) for t in ins)


def _refuse_subgraph_calls(m: Any, op: Any, index: int) -> None:
    for options in (op.builtinOptions, getattr(op, "builtinOptions2", None)):
        if options is not None and any(f in name for name in vars(options) for f in _SUBGRAPH_FIELDS):
            name = _opcode_name(m.operatorCodes[op.opcodeIndex])
            raise UserInputError(f"op {index} ({name}) calls other subgraphs and cannot be cut out on its own")


def extract_ops(
    model: bytes,
    op_indices: Sequence[int],
    constants: dict[int, np.ndarray] | None = None,
    outputs: Sequence[int] | None = None,
) -> bytes:
    """A standalone .tflite holding ops `op_indices` of the primary subgraph (see `plan` for what else it keeps).

    Constants keep their data and quantization parameters; only the buffers they use are copied. `constants` replaces
    the data of float32 constant tensors (source index → array of the same shape), e.g. with the dequantized weights of
    a quantized model to simulate what its parameters predict. Activation tensors keep
    their shape signature, so a batch dimension that was dynamic (-1) stays resizable. Metadata is dropped and one
    signature (`serving_default`, inputs `input_<k>`, outputs `output_<k>`) is rebuilt.

    Raises:
        UserInputError: as `plan`, or the model stores tensors in external buffers.
    """
    data = bytes(model)
    io = plan(data, op_indices, outputs)
    built = _Extract(data)
    built.add(io, constants)
    return built.finish(b"quantdoctor extract of ops " + ",".join(map(str, io.ops)).encode())


def extract_isolated(
    model: bytes, op_indices: Sequence[int], constants: dict[int, dict[int, np.ndarray]] | None = None
) -> tuple[bytes, tuple[ExtractedIO, ...]]:
    """One standalone .tflite in which each op of `op_indices` runs on its own, as `extract_op` would cut it.

    Every op gets its own copies of the activation tensors it reads and writes, so no op reads another's output: one
    invoke computes what each one-op extract computes (same kernels, parameters and constants; equal constant buffers
    are shared), in one interpreter instead of one per op. The extract's inputs and outputs are those of the first op,
    then the second's, and so on.

    Args:
        constants: per op index, float32 constants to replace in that op (source tensor index → array).

    Returns:
        The model bytes and each op's `ExtractedIO` (in `op_indices` order).

    Raises:
        UserInputError: as `extract_ops`.
    """
    data = bytes(model)
    ios = tuple(plan(data, [op]) for op in op_indices)
    built = _Extract(data)
    for op, io in zip(op_indices, ios):
        built.add(io, (constants or {}).get(op))
    return built.finish(b"quantdoctor extract of ops " + ",".join(map(str, op_indices)).encode() + b", each alone"), ios


class _Extract:
    """A model being built from cuts of `data`: each `add` brings ops with tensors of their own, constants shared."""

    def __init__(self, data: bytes) -> None:
        self.schema = _schema()
        self.data = data
        self.m = _parse(data)
        self.buffer_map: dict[int, int] = {}  # the converter lets equal constants share one buffer; so does the extract
        self.tensors: list[Any] = []
        self.buffers: list[Any] = [self.schema.BufferT()]  # buffer 0: the empty buffer data-less tensors point to
        self.codes: dict[int, int] = {}
        self.operators: list[Any] = []
        self.inputs: list[int] = []
        self.outputs: list[int] = []

    def add(self, io: ExtractedIO, constants: dict[int, np.ndarray] | None) -> None:
        import copy

        m, sg, data = self.m, self.m.subgraphs[0], self.data
        tensor_map: dict[int, int] = {}

        def keep_tensor(t: int) -> int:
            if t < 0:
                return t
            if t not in tensor_map:
                src = sg.tensors[t]
                if getattr(src, "externalBuffer", 0):
                    raise UserInputError(f"tensor {t} lives in an external buffer; such models cannot be extracted yet")
                new = copy.copy(src)
                new.buffer = 0
                if constants is not None and t in constants:
                    self.buffers.append(_AlignedBuffer(_constant_bytes(src, constants[t], t)))
                    new.buffer = len(self.buffers) - 1
                elif _has_data(m, src):
                    if src.buffer not in self.buffer_map:
                        self.buffers.append(_AlignedBuffer(_buffer_bytes(data, m.buffers[src.buffer])))
                        self.buffer_map[src.buffer] = len(self.buffers) - 1
                    new.buffer = self.buffer_map[src.buffer]
                tensor_map[t] = len(self.tensors)
                self.tensors.append(new)
            return tensor_map[t]

        for t in io.inputs:
            keep_tensor(t)
        for i in io.ops:
            src = sg.operators[i]
            op = copy.copy(src)
            op.opcodeIndex = self.codes.setdefault(src.opcodeIndex, len(self.codes))
            op.inputs = [keep_tensor(int(t)) for t in (src.inputs if src.inputs is not None else ())]
            op.outputs = [keep_tensor(int(t)) for t in (src.outputs if src.outputs is not None else ())]
            if src.intermediates is not None:
                op.intermediates = [keep_tensor(int(t)) for t in src.intermediates]
            if src.largeCustomOptionsSize:
                start = src.largeCustomOptionsOffset
                op.customOptions = np.frombuffer(data[start : start + src.largeCustomOptionsSize], dtype=np.uint8)
                op.largeCustomOptionsOffset = op.largeCustomOptionsSize = 0
            op.debugMetadataIndex = -1
            self.operators.append(op)
        self.inputs += [tensor_map[t] for t in io.inputs]
        self.outputs += [tensor_map[t] for t in io.outputs]

    def finish(self, description: bytes) -> bytes:
        import copy

        import flatbuffers

        schema_fb, m = self.schema, self.m
        sub = schema_fb.SubGraphT()
        sub.tensors = self.tensors
        sub.inputs = self.inputs
        sub.outputs = self.outputs
        sub.operators = self.operators
        sub.name = b"extract"
        sub.debugMetadataIndex = -1

        out = schema_fb.ModelT()
        out.version = m.version
        out.description = description
        out.operatorCodes = [copy.copy(m.operatorCodes[c]) for c, _ in sorted(self.codes.items(), key=lambda kv: kv[1])]
        out.subgraphs = [sub]
        out.buffers = self.buffers
        out.signatureDefs = [_signature(schema_fb, sub)]

        builder = flatbuffers.Builder(1024)
        builder.Finish(out.Pack(builder), file_identifier=b"TFL3")
        return bytes(builder.Output())


def extract_op(model: bytes, op_index: int, constants: dict[int, np.ndarray] | None = None) -> bytes:
    """A standalone .tflite holding op `op_index` (plus the DEQUANTIZE ops that unpack its constant weights, if any)."""
    return extract_ops(model, [op_index], constants)


def _constant_bytes(tensor: Any, array: np.ndarray, index: int) -> bytes:
    shape = tuple(int(n) for n in (tensor.shape if tensor.shape is not None else ()))
    if _type_name(tensor.type) != "FLOAT32" or tuple(np.shape(array)) != shape:
        raise UserInputError(
            f"tensor {index} is {_type_name(tensor.type)} {shape}; a replacement must be float32 of that shape, "
            f"got {np.asarray(array).dtype} {np.shape(array)}"
        )
    return np.ascontiguousarray(array, dtype="<f4").tobytes()


def _buffer_bytes(data: bytes, buf: Any) -> bytes:
    if buf.offset > 1:  # models over 2 GB keep buffers after the flatbuffer
        return data[buf.offset : buf.offset + buf.size]
    return np.asarray(buf.data, dtype=np.uint8).tobytes()


def _signature(schema_fb: Any, sub: Any) -> Any:
    def tensor_map(prefix: str, indices: list[int]) -> list[Any]:
        maps = []
        for k, t in enumerate(indices):
            tm = schema_fb.TensorMapT()
            tm.name, tm.tensorIndex = f"{prefix}_{k}".encode(), t
            maps.append(tm)
        return maps

    sig = schema_fb.SignatureDefT()
    sig.signatureKey = b"serving_default"
    sig.subgraphIndex = 0
    sig.inputs = tensor_map("input", sub.inputs)
    sig.outputs = tensor_map("output", sub.outputs)
    return sig


class _AlignedBuffer:
    """A BufferT whose data vector starts on a 16-byte boundary (the generated `BufferT.Pack` aligns to 1 byte)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def Pack(self, builder: Any) -> int:  # noqa: N802 - the flatbuffers object API calls this name
        schema_fb = _schema()
        n = len(self.data)
        builder.StartVector(1, n, _BUFFER_ALIGNMENT)
        builder.head -= n
        builder.Bytes[builder.head : builder.head + n] = self.data
        vector = builder.EndVector()
        schema_fb.BufferStart(builder)
        schema_fb.BufferAddData(builder, vector)
        return schema_fb.BufferEnd(builder)


def write_repro(model: bytes, op_index: int, input_arrays: Sequence[np.ndarray], out_dir: str | Path) -> list[Path]:
    """Write a minimal reproduction of op `op_index`: its one-op .tflite, its inputs as .npy and a README.txt.

    Args:
        model: the .tflite the op comes from.
        input_arrays: one array per extract input (`plan(model, [op_index]).inputs`); float arrays fed to an integer
            input are quantized with that input's scale and zero point.
        out_dir: created if missing; every file is written to a temporary name and renamed into place.

    Returns:
        The paths written: the .tflite, the .npy files, the README.

    Raises:
        UserInputError: the number of arrays does not match the op's inputs.
    """
    data = bytes(model)
    io = plan(data, [op_index])
    if len(input_arrays) != len(io.inputs):
        raise UserInputError(f"op {op_index} takes {len(io.inputs)} input(s); {len(input_arrays)} array(s) were given")
    m = _parse(data)
    kind = op_type(data, op_index)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path = out / f"op_{op_index}_{_safe(kind)}.tflite"
    atomic_write_bytes(model_path, extract_op(data, op_index))
    written = [model_path]
    for k, (t, array) in enumerate(zip(io.inputs, input_arrays, strict=True)):
        path = out / f"op_{op_index}_input{k}.npy"
        atomic_write_bytes(path, _npy_bytes(to_tensor_dtype(array, *tensor_quantization(data, t))))
        written.append(path)
    readme = out / "README.txt"
    atomic_write_bytes(readme, _readme(m, op_index, kind, io, [p.name for p in written]).encode())
    written.append(readme)
    return written


def tensor_quantization(model: bytes, tensor: int) -> tuple[np.dtype, np.ndarray, np.ndarray, int]:
    """(dtype, scales, zero points, quantized axis) of a primary-subgraph tensor; scales are empty if not quantized."""
    t = _parse(bytes(model)).subgraphs[0].tensors[tensor]
    try:
        dtype = np.dtype(_type_name(t.type).lower())
    except TypeError:  # STRING, RESOURCE, INT4, ...: no numpy equivalent, nothing to quantize
        dtype = np.dtype(object)
    q = t.quantization
    scales = np.asarray(q.scale if q is not None and q.scale is not None else (), dtype=np.float64)
    zps = np.asarray(q.zeroPoint if q is not None and q.zeroPoint is not None else (), dtype=np.int64)
    return dtype, scales, zps, int(q.quantizedDimension) if q is not None else 0


def to_tensor_dtype(
    array: np.ndarray, dtype: np.dtype, scales: np.ndarray, zero_points: np.ndarray, axis: int = 0
) -> np.ndarray:
    """`array` as a tensor of `dtype` would hold it.

    Float values going into a quantized integer tensor are quantized as TFLite's QUANTIZE kernel does:
    q = clamp(round_half_away_from_zero(x / scale) + zero_point); anything else is cast.
    """
    a = np.asarray(array)
    if dtype.kind not in "iu" or a.dtype.kind != "f" or scales.size == 0:
        return a.astype(dtype, copy=False)
    if scales.size == 1:
        return _quantize_per_tensor(a, dtype, float(scales[0]), float(zero_points[0]) if zero_points.size else 0.0)
    s = scales.astype(np.float64)
    z = zero_points.astype(np.float64) if zero_points.size else np.zeros_like(s)
    if s.size > 1:  # per-channel activations are rare, but the broadcast is cheap to get right
        shape = [1] * a.ndim
        shape[axis] = s.size
        s, z = s.reshape(shape), z.reshape(shape)
    v = a.astype(np.float64) / s
    info = np.iinfo(dtype)
    return np.clip(round_half_away(v) + z, info.min, info.max).astype(dtype)


_CHUNK = 1 << 16  # elements quantized per pass: the float64 temporaries stay in cache


def _quantize_per_tensor(a: np.ndarray, dtype: np.dtype, scale: float, zero_point: float) -> np.ndarray:
    """`to_tensor_dtype` with one scale, chunk by chunk into preallocated buffers: the same float64 arithmetic
    (x / scale, round half away, + zero point, clamp), without a float64 copy of the whole array per step."""
    flat = np.ascontiguousarray(a).reshape(-1)
    out = np.empty(flat.size, dtype)
    info = np.iinfo(dtype)
    value = np.empty(min(_CHUNK, flat.size), np.float64)
    whole = np.empty_like(value)
    for start in range(0, flat.size, _CHUNK):
        chunk = flat[start : start + _CHUNK]
        v, w = value[: chunk.size], whole[: chunk.size]
        np.divide(chunk, scale, out=v, dtype=np.float64)
        round_half_away(v, w)
        w += zero_point
        np.clip(w, info.min, info.max, out=w)
        out[start : start + chunk.size] = w
    return out.reshape(a.shape)


def _type_name(code: int) -> str:
    names = {v: k for k, v in vars(_schema().TensorType).items() if isinstance(v, int)}
    return names.get(code, f"TYPE_{code}")


def _describe_tensor(m: Any, t: int) -> str:
    tensor = m.subgraphs[0].tensors[t]
    name = tensor.name.decode(errors="replace") if isinstance(tensor.name, bytes) else str(tensor.name)
    dims = tensor.shapeSignature if tensor.shapeSignature is not None else tensor.shape
    shape = [int(d) for d in (dims if dims is not None else ())]  # -1: resizable (the batch)
    text = f"{_type_name(tensor.type)} {shape} {'const ' if _has_data(m, tensor) else ''}'{name}'"
    q = tensor.quantization
    if q is not None and q.scale is not None and len(q.scale):
        zps = list(q.zeroPoint) if q.zeroPoint is not None else [0]
        if len(q.scale) == 1:
            text += f" scale={float(q.scale[0]):.6g} zero_point={int(zps[0])}"
        else:
            text += (f" per-channel axis {q.quantizedDimension}: {len(q.scale)} scales in "
                     f"[{float(np.min(q.scale)):.6g}, {float(np.max(q.scale)):.6g}]")
    return text


def _describe_options(op: Any) -> str:
    if op.builtinOptions is None:
        return "none"
    schema_fb = _schema()
    enums = {"padding": schema_fb.Padding, "fusedActivationFunction": schema_fb.ActivationFunctionType}
    parts = []
    for key, value in vars(op.builtinOptions).items():
        if key in enums:
            value = next((k for k, v in vars(enums[key]).items() if v == value), value)
        parts.append(f"{key}={value}")
    return ", ".join(parts) or "none"


def _readme(m: Any, op_index: int, kind: str, io: ExtractedIO, files: list[str]) -> str:
    sg = m.subgraphs[0]
    op = sg.operators[op_index]
    version = m.operatorCodes[op.opcodeIndex].version
    extra = [i for i in io.ops if i != op_index]
    lines = [
        f"Op {op_index} ({kind}, version {version}) cut out of a .tflite model by quantdoctor"
        + (f", with the weight DEQUANTIZE op(s) {extra} that feed it." if extra else "."),
        f"Options: {_describe_options(op)}",
        "Op inputs:",
        *(f"  {k}: {_describe_tensor(m, t)}" for k, t in enumerate(_tensor_list(op.inputs))),
        "Op outputs:",
        *(f"  {k}: {_describe_tensor(m, t)}" for k, t in enumerate(_tensor_list(op.outputs))),
        f"Inputs of {files[0]}, in order: {', '.join(files[1:]) or 'none'}",
        "",
        "Run it with LiteRT (pip install ai-edge-litert):",
        "  import numpy as np",
        "  from ai_edge_litert.interpreter import Interpreter, OpResolverType",
        f"  it = Interpreter(model_path='{files[0]}', "
        "experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)",
        f"  xs = [np.load(f) for f in {files[1:]!r}]",
        "  for d, x in zip(it.get_input_details(), xs): it.resize_tensor_input(d['index'], x.shape)",
        "  it.allocate_tensors(); [it.set_tensor(d['index'], x) for d, x in zip(it.get_input_details(), xs)]",
        "  it.invoke(); print(it.get_tensor(it.get_output_details()[0]['index']))",
    ]
    return "\n".join(lines) + "\n"


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()
