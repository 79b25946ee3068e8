"""The ONNX Runtime quantizer as a quantdoctor scheme: `quantize_onnx(float_bytes, scheme, calibration)`.

A scheme is a small frozen record of `onnxruntime.quantization` settings. Static schemes run `quantize_static` in the
QDQ format (QuantizeLinear/DequantizeLinear pairs around float ops: ORT's recommended format since 1.11, and the one
whose every intermediate tensor stays readable); the dynamic scheme runs `quantize_dynamic` (int8 weights,
activations quantized per batch at run time by DynamicQuantizeLinear, ConvInteger/MatMulInteger kernels).

Before a static quantization the model goes through ORT's `quant_pre_process` (ONNX shape inference and ORT's basic
graph optimizations, e.g. Conv+BatchNormalization folding; symbolic shape inference is skipped: it needs sympy and fails
on data-dependent shapes). Names survive both steps: ORT keeps the original name on the float tensor an op writes and
names what it inserts `<tensor>_QuantizeLinear_Output`, `<tensor>_DequantizeLinear_Output`, `<weight>_quantized`; a
graph output keeps its name on the final DequantizeLinear and the op before it writes `<output>_QuantizeLinear_Input`.
With asymmetric activations ORT drops a Relu/Clip that follows a quantized op (the output grid clips instead): the op
then writes the Relu's output name.

Calibration methods, as ORT 1.31 implements them through `quantize_static`: "minmax"; "percentile" (99.999 % of |x|
by default, `extra_options={"CalibPercentile": ...}`); "distribution" (meant for float8); "entropy" searches KL
thresholds over a 128-bin histogram with 128 quantized bins, and `quantize_static` does not forward other bin counts,
so the only candidate is the whole histogram: on our test models it gives exactly the minmax ranges.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantdoctor.errors import QuantDoctorError, UnknownNameError, UserInputError
from quantdoctor.registry import Registry

__all__ = ["CALIBRATION_METHODS", "ORT_SCHEMES", "OrtScheme", "ort_scheme_table_markdown", "quantize_onnx"]

CALIBRATION_METHODS = {
    "minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile", "distribution": "Distribution",
}


@dataclass(frozen=True)
class OrtScheme:
    """One ONNX Runtime quantization setting.

    Attributes:
        name: registry name, e.g. "ort-qdq-int8".
        summary: one line for humans.
        mode: "static" (`quantize_static`, needs calibration data) or "dynamic" (`quantize_dynamic`).
        activation_type / weight_type: `onnxruntime.quantization.QuantType` member names ("QInt8", "QUInt8", "QInt16").
        per_channel: weights quantized per output channel.
        activation_symmetric: `extra_options["ActivationSymmetric"]` (zero point at 0 / 128).
        version: bumped when a field changes meaning.
    """

    name: str
    summary: str
    mode: str
    activation_type: str
    weight_type: str
    per_channel: bool
    activation_symmetric: bool = False
    version: int = 1

    @property
    def needs_calibration(self) -> bool:
        return self.mode == "static"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OrtScheme:
        return cls(**data)


ORT_SCHEMES: Registry[OrtScheme] = Registry("ONNX Runtime scheme")

for _s in (
    OrtScheme("ort-qdq-int8", "static QDQ: int8 activations, int8 per-channel weights", "static", "QInt8", "QInt8",
              True),
    OrtScheme("ort-qdq-int8-per-tensor", "static QDQ: int8 activations, int8 per-tensor weights", "static", "QInt8",
              "QInt8", False),
    OrtScheme("ort-qdq-uint8", "static QDQ: uint8 activations, int8 per-channel weights (x86 U8S8)", "static", "QUInt8",
              "QInt8", True),
    OrtScheme("ort-qdq-a16w8", "static QDQ: int16 activations, int8 per-channel weights", "static", "QInt16", "QInt8",
              True),
    OrtScheme("ort-dynamic", "dynamic: int8 per-tensor weights, uint8 activations quantized per batch at run time",
              "dynamic", "QUInt8", "QInt8", False),
    OrtScheme("ort-dynamic-uint8", "dynamic: uint8 per-tensor weights, uint8 activations quantized per batch",
              "dynamic", "QUInt8", "QUInt8", False),
):
    ORT_SCHEMES.add(_s.name, _s)


def ort_scheme_table_markdown() -> str:
    """The README table of ONNX Runtime schemes, one row per registered scheme."""
    header = ("Scheme", "What it is", "Mode", "Activations", "Weights", "Calibration")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, s in ORT_SCHEMES.items():
        weights = f"{s.weight_type} {'per-channel' if s.per_channel else 'per-tensor'}"
        cells = (f"`{name}`", s.summary, f"`quantize_{s.mode}`", s.activation_type, weights,
                 "yes" if s.needs_calibration else "no")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


class _Batches:
    """A `CalibrationDataReader` over calibration batches, split into chunks the model's fixed batch dim accepts.

    A batch is one array, one array per model input (in `input_names` order), or a dict of arrays by input name. ORT accepts any object with `get_next`
    as a reader (`CalibrationDataReader.__subclasshook__`), so this needs no onnxruntime import.
    """

    def __init__(self, calibration: Callable[[], Iterable[np.ndarray]], input_names: Sequence[str],
                 fixed_batch: int | None):
        self._make = calibration
        self._names = tuple(input_names)
        self._fixed = fixed_batch
        self._it = None
        self.count = 0

    def _feeds(self):
        for batch in self._make():
            if isinstance(batch, dict):  # by input name
                missing = [n for n in self._names if n not in batch]
                if missing:
                    raise UserInputError(f"the calibration data has no input '{missing[0]}' (it has: "
                                         f"{', '.join(batch)}); key the arrays by the model's input names")
                batch = [batch[n] for n in self._names]
            arrays = [np.asarray(b, dtype=np.float32) for b in (batch if isinstance(batch, (tuple, list)) else (batch,))]
            if len(arrays) != len(self._names):
                raise UserInputError(f"a calibration batch holds {len(arrays)} array(s); the model has "
                                     f"{len(self._names)} inputs ({', '.join(self._names)})")
            n = arrays[0].shape[0]
            if self._fixed is None or n == self._fixed:
                yield dict(zip(self._names, arrays))
            else:
                for i in range(0, n - self._fixed + 1, self._fixed):
                    yield {name: a[i:i + self._fixed] for name, a in zip(self._names, arrays)}

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = self._feeds()
        feed = next(self._it, None)
        if feed is None:
            return None
        self.count += 1
        return feed

    def rewind(self) -> None:
        self._it = None


def _ort_overrides(overrides: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """`TensorQuantOverrides` in the types ORT 1.31 really reads: its docstring says rmin/rmax/scale are floats, but the
    QDQ quantizer reads `.dtype` from them (a plain float fails with "'float' object has no attribute 'dtype'")."""
    from onnxruntime.quantization import QuantType

    out = {}
    for name, entries in overrides.items():
        fixed = []
        for entry in entries:
            e = dict(entry)
            for key in ("rmin", "rmax", "scale"):
                if key in e:
                    e[key] = np.float32(e[key])
            if isinstance(e.get("quant_type"), str):
                e["quant_type"] = QuantType[e["quant_type"]]
            fixed.append(e)
        out[name] = fixed
    return out


def _inputs_of(proto: Any) -> tuple[list[str], int | None]:
    """The model's input names and its fixed batch size (None when the first input's batch dim is free)."""
    inits = {t.name for t in proto.graph.initializer}
    inputs = [vi for vi in proto.graph.input if vi.name not in inits]
    dims = inputs[0].type.tensor_type.shape.dim if inputs else ()
    fixed = dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None
    return [vi.name for vi in inputs], fixed


def quantize_onnx(
    float_bytes: bytes,
    scheme: str | OrtScheme,
    calibration: Callable[[], Iterable[np.ndarray]] | None,
    calib_method: str = "minmax",
    nodes_to_exclude: Sequence[str] = (),
    tensor_overrides: dict[str, list[dict[str, Any]]] | None = None,
    *,
    preprocess: bool = True,
    extra_options: dict[str, Any] | None = None,
) -> bytes:
    """Quantize a float ONNX model with ONNX Runtime.

    Args:
        float_bytes: the float model.
        scheme: an `ORT_SCHEMES` name or an `OrtScheme`.
        calibration: a callable returning an iterable of float batches (called once per pass; ORT may pass twice);
            required by static schemes, ignored by dynamic ones.
        calib_method: "minmax", "entropy", "percentile" or "distribution" (static schemes).
        nodes_to_exclude: node names left in float.
        tensor_overrides: ORT's `TensorQuantOverrides` (tensor name -> list of dicts, e.g. `[{"rmin": 0, "rmax": 6}]`).
        preprocess: run `quant_pre_process` first (static schemes).
        extra_options: more of ORT's `extra_options` (e.g. `{"CalibPercentile": 99.9}`), applied last.

    Returns:
        The quantized model's bytes.

    Raises:
        UnknownNameError: an unknown scheme or calibration method.
        UserInputError: a static scheme without calibration data.
        ModelLoadError: the bytes are not an ONNX model.
        QuantDoctorError: ONNX Runtime failed (its first line quoted).
    """
    from quantdoctor.cache import ORT_PACKAGES, Uncacheable, cached, digest_bytes, digest_calibration, versions

    s = scheme if isinstance(scheme, OrtScheme) else ORT_SCHEMES.get(scheme)
    method = calib_method.lower()
    if method not in CALIBRATION_METHODS:
        raise UnknownNameError(f"unknown calibration method '{calib_method}'; choose one of: "
                               f"{', '.join(CALIBRATION_METHODS)}")
    if s.needs_calibration and calibration is None:
        raise UserInputError(f"scheme {s.name} calibrates activation ranges; give calibration data")
    options = (nodes_to_exclude, tensor_overrides, preprocess, extra_options)

    def parts() -> dict[str, Any]:
        if _calibrator_replaced():
            raise Uncacheable("ORT's calibrator is replaced (a repair build with stored ranges)")
        return {"op": "onnx.quantize", "model": digest_bytes(float_bytes), "scheme": s.to_dict(),
                "calib_method": method if s.needs_calibration else None, "nodes_to_exclude": list(nodes_to_exclude),
                "tensor_overrides": tensor_overrides, "preprocess": preprocess, "extra_options": extra_options,
                "calibration": digest_calibration(calibration) if s.needs_calibration else None,
                "versions": versions(*ORT_PACKAGES)}

    return cached(f"onnx {s.name}", parts, lambda: _quantize_onnx(float_bytes, s, calibration, method, *options))


def _calibrator_replaced() -> bool:
    """True while `repair.build_onnx` stands in for ORT's calibrator: the output then depends on ranges that are not
    arguments of `quantize_onnx`, and the recorded ranges are a side effect a cache hit would skip."""
    import sys

    quantize = sys.modules.get("onnxruntime.quantization.quantize")
    calibrate = sys.modules.get("onnxruntime.quantization.calibrate")
    if quantize is None or calibrate is None:
        return False
    return getattr(quantize, "create_calibrator", None) is not getattr(calibrate, "create_calibrator", None)


def _quantize_onnx(
    float_bytes: bytes, s: OrtScheme, calibration: Callable[[], Iterable[np.ndarray]] | None, method: str,
    nodes_to_exclude: Sequence[str], tensor_overrides: dict[str, list[dict[str, Any]]] | None, preprocess: bool,
    extra_options: dict[str, Any] | None,
) -> bytes:
    from quantdoctor.backends.onnx.loader import parse_model

    proto = parse_model(bytes(float_bytes), "the float model")
    input_names, fixed = _inputs_of(proto)

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quiet = logging.getLogger()
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # ORT logs advice ("consider pre-processing", ...) through the root logger
    try:  # the histogram calibrators print progress to stdout
        with tempfile.TemporaryDirectory(prefix="quantdoctor-ort-") as tmp, contextlib.redirect_stdout(io.StringIO()):
            src, out = Path(tmp) / "float.onnx", Path(tmp) / "quant.onnx"
            src.write_bytes(bytes(float_bytes))
            if s.mode == "dynamic":
                quantize_dynamic(str(src), str(out), per_channel=s.per_channel, weight_type=QuantType[s.weight_type],
                                 nodes_to_exclude=list(nodes_to_exclude) or None,
                                 extra_options={**({"TensorQuantOverrides": _ort_overrides(tensor_overrides)}
                                                   if tensor_overrides else {}), **(extra_options or {})} or None)
                return out.read_bytes()
            if preprocess:
                pre = Path(tmp) / "pre.onnx"
                quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
                src = pre
            reader = _Batches(calibration, input_names, fixed)
            extra: dict[str, Any] = {"ActivationSymmetric": s.activation_symmetric}
            # ORT keeps every calibration batch's activations until the end. Its CalibMaxIntermediateOutputs option
            # would bound that, but in 1.31 it drops each full chunk without merging its ranges (MinMaxCalibrater.
            # collect_data calls clear_collected_data, not compute_data): ranges would come from the last chunk only.
            if tensor_overrides:
                extra["TensorQuantOverrides"] = _ort_overrides(tensor_overrides)
            extra.update(extra_options or {})
            quantize_static(
                str(src), str(out), reader, quant_format=QuantFormat.QDQ, per_channel=s.per_channel,
                activation_type=QuantType[s.activation_type], weight_type=QuantType[s.weight_type],
                nodes_to_exclude=list(nodes_to_exclude) or None,
                calibrate_method=getattr(CalibrationMethod, CALIBRATION_METHODS[method]), extra_options=extra,
            )
            if reader.count == 0:
                raise UserInputError(f"scheme {s.name}: the calibration data gave no batch")
            return out.read_bytes()
    except QuantDoctorError:
        raise
    except Exception as exc:  # ORT raises ValueError, RuntimeError, AssertionError, its pybind errors...
        text = str(exc).strip().splitlines()
        first = text[0] if text else type(exc).__name__
        raise QuantDoctorError(f"ONNX Runtime could not quantize the model with {s.name} ({method}): {first}") from None
    finally:
        quiet.setLevel(level)
