"""Repair actions: small, named changes to how one op (or one op type, or one tensor) is quantized.

Each action is a frozen dataclass registered in `ACTIONS` under its `kind`, with a JSON round trip (`to_dict` /
`action_from_dict`) so a recipe can replay it. An action only *describes* the change; `repair.build` expresses it with a
real quantizer (the TFLite converter's `mlir_quantize`, ai-edge-quantizer) or a flatbuffer edit of parameters, and
`unsupported()` says, in one sentence, when the chosen backend cannot express it.

Ops are named by their output tensor name in the float (or calibrated) .tflite: the converter and ai-edge-quantizer both
keep these names, so a name stays valid while other ops are re-quantized around it (op indices shift, names do not).
For an ONNX model, likewise by the tensor name a node writes in the float model; ONNX Runtime keeps it on the float tensor
of the quantized model (`repair.build_onnx` maps it to node names and tensor overrides).
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import Enum
from typing import Any, ClassVar

from quantdoctor.errors import UserInputError
from quantdoctor.registry import Registry


class Backend(str, Enum):
    """The real quantizer a repair builds with."""

    CONVERTER = "converter"  # TFLite converter: calibrate once, then mlir_quantize with denylists / edited ranges
    AEQ = "ai-edge-quantizer"  # ai-edge-quantizer recipes (regex scopes) on the float .tflite
    ORT = "onnxruntime"  # ONNX Runtime's quantizer: nodes_to_exclude, TensorQuantOverrides, stored calibration ranges


class RangeMethod(str, Enum):
    MINMAX = "minmax"
    PERCENTILE = "percentile"
    MSE = "mse"
    KL = "kl"
    DECISION = "decision"  # the model's output: the range that keeps the top-k decisions (repair.ranges.decision_range)


ACTIONS: Registry[type["Action"]] = Registry("repair action")

DYNAMIC_SCHEMES = frozenset({"dynamic", "dynamic-per-tensor"})
STATIC_SCHEMES = frozenset({"int8", "int8-io", "int8-per-tensor", "int16x8"})
# ONNX Runtime schemes (quantize/onnxrt.py): static QDQ ones calibrate activation ranges, dynamic ones do not.
ORT_STATIC_SCHEMES = frozenset({"ort-qdq-int8", "ort-qdq-int8-per-tensor", "ort-qdq-uint8", "ort-qdq-a16w8"})
ORT_DYNAMIC_SCHEMES = frozenset({"ort-dynamic", "ort-dynamic-uint8"})
CALIBRATED_SCHEMES = STATIC_SCHEMES | ORT_STATIC_SCHEMES  # schemes whose activations have calibrated ranges


def short_name(tensor: str) -> str:
    """A readable op name: the first fused location, without the model scope and Keras' `_1` suffix."""
    first = tensor.split(";")[0]
    parts = first.split("/")
    core = parts[1] if len(parts) > 2 else parts[-1]
    return core[:-2] if core.endswith("_1") else core


@dataclass(frozen=True)
class Action:
    """Base class: a change to the quantization of some ops. Subclasses set `kind` and register themselves."""

    kind: ClassVar[str] = ""

    def targets(self) -> tuple[str, ...]:
        """The op output names this action touches (empty when it names an op type; the builder expands that)."""
        return tuple(getattr(self, "ops", ()))

    def describe(self) -> str:
        raise NotImplementedError

    def unsupported(self, backend: Backend, scheme: str) -> str | None:
        """None if `backend` can express this action for `scheme`, else one sentence saying why not."""
        return None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind}
        for f in fields(self):
            value = getattr(self, f.name)
            data[f.name] = list(value) if isinstance(value, tuple) else (value.value if isinstance(value, Enum) else value)
        return data


def action_from_dict(data: dict[str, Any]) -> Action:
    """Inverse of `Action.to_dict`.

    Raises:
        UnknownNameError: an unknown action kind.
        UserInputError: fields that do not fit the kind.
    """
    data = dict(data)
    cls = ACTIONS.get(str(data.pop("kind", "")))
    try:
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**kwargs)
    except TypeError as exc:
        raise UserInputError(f"repair action '{cls.kind}' has bad fields ({exc}); fix the recipe file") from None


def _register(cls: type[Action]) -> type[Action]:
    ACTIONS.add(cls.kind, cls)
    return cls


def _ops_text(ops: tuple[str, ...], op_type: str | None) -> str:
    if op_type and not ops:
        return f"every {op_type}"
    names = [short_name(o) for o in ops]
    return ", ".join(names) if len(names) <= 4 else f"{', '.join(names[:3])} and {len(names) - 3} more"


@_register
@dataclass(frozen=True)
class PerChannel(Action):
    """Per-channel weight scales for some ops (or every op of `op_type`)."""

    kind: ClassVar[str] = "per_channel"
    ops: tuple[str, ...] = ()
    op_type: str | None = None

    def describe(self) -> str:
        return f"per-channel weights for {_ops_text(self.ops, self.op_type)}"

    def unsupported(self, backend: Backend, scheme: str) -> str | None:
        if backend == Backend.CONVERTER:
            return "mlir_quantize switches per-channel weights for the whole model only, not per op"
        if backend == Backend.ORT and scheme in ORT_DYNAMIC_SCHEMES:
            return "quantize_dynamic sets per-channel weights for the whole model only, not per op"
        if scheme == "float16":
            return "float16 weights have no scales"
        return None


@_register
@dataclass(frozen=True)
class KeepFloat(Action):
    """Leave some ops in float (selective quantization)."""

    kind: ClassVar[str] = "keep_float"
    ops: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"keep {_ops_text(self.ops, None)} in float"


@_register
@dataclass(frozen=True)
class Int16Activations(Action):
    """16-bit activations with 8-bit weights (16x8) for some ops."""

    kind: ClassVar[str] = "int16_activations"
    ops: tuple[str, ...] = ()

    def describe(self) -> str:
        return f"int16 activations (16x8) for {_ops_text(self.ops, None)}"

    def unsupported(self, backend: Backend, scheme: str) -> str | None:
        if scheme == "ort-qdq-a16w8":
            return "the scheme's activations are 16-bit already"
        if scheme not in CALIBRATED_SCHEMES:
            return f"scheme {scheme} has float activations already"
        if backend == Backend.CONVERTER:
            return "mlir_quantize sets the activation type for the whole model only, not per op"
        return None


@_register
@dataclass(frozen=True)
class CalibrationRange(Action):
    """Choose the range of one activation tensor from a histogram of its float values on the calibration set."""

    kind: ClassVar[str] = "calibration_range"
    tensor: str = ""
    method: str = RangeMethod.MSE.value
    percentile: float | None = None

    def __post_init__(self) -> None:
        RangeMethod(self.method)  # raises ValueError on a typo in a recipe
        if self.method == RangeMethod.PERCENTILE.value and not (self.percentile and 50.0 < self.percentile <= 100.0):
            raise UserInputError(f"percentile range needs 50 < percentile <= 100, got {self.percentile}")

    def targets(self) -> tuple[str, ...]:
        return (self.tensor,)

    def describe(self) -> str:
        method = f"percentile {self.percentile:g}" if self.method == RangeMethod.PERCENTILE.value else self.method
        return f"{method} calibration range for {short_name(self.tensor)}"

    def unsupported(self, backend: Backend, scheme: str) -> str | None:
        if scheme not in CALIBRATED_SCHEMES:
            return f"scheme {scheme} has no calibrated activation ranges"
        return None


@_register
@dataclass(frozen=True)
class CalibrationMethod(Action):
    """Calibrate every activation range of the model with another of ONNX Runtime's methods (minmax is the default)."""

    kind: ClassVar[str] = "calibration_method"
    method: str = "percentile"

    def __post_init__(self) -> None:
        if self.method not in ("minmax", "entropy", "percentile"):
            raise UserInputError(f"calibration method must be minmax, entropy or percentile, got {self.method!r}")

    def targets(self) -> tuple[str, ...]:
        return ()

    def describe(self) -> str:
        return f"{self.method} calibration of every activation range"

    def unsupported(self, backend: Backend, scheme: str) -> str | None:
        if backend != Backend.ORT:
            return "the TFLite quantizers calibrate min-max ranges; choose ranges per tensor (calibration_range)"
        if scheme not in ORT_STATIC_SCHEMES:
            return f"scheme {scheme} has no calibrated activation ranges"
        return None


@_register
@dataclass(frozen=True)
class WeightGranularity(Action):
    """Weight granularity ("per-channel" or "per-tensor") of some ops of a dynamic-range model."""

    kind: ClassVar[str] = "weight_granularity"
    ops: tuple[str, ...] = ()
    granularity: str = "per-channel"

    def __post_init__(self) -> None:
        if self.granularity not in ("per-channel", "per-tensor"):
            raise UserInputError(f"weight granularity must be per-channel or per-tensor, got {self.granularity!r}")

    def describe(self) -> str:
        return f"{self.granularity} weights for {_ops_text(self.ops, None)} (dynamic range)"

    def unsupported(self, backend: Backend, scheme: str) -> str | None:
        if scheme not in DYNAMIC_SCHEMES:
            return f"weight granularity per op is offered for dynamic-range schemes, not {scheme}"
        if backend != Backend.AEQ:
            return "only ai-edge-quantizer sets weight granularity per op"
        return None


@_register
@dataclass(frozen=True)
class KernelWorkaround(Action):
    """Store a per-tensor weight scale as per-channel, the same scale repeated for every output channel.

    The int8 values and the arithmetic they describe are unchanged; only the parameter layout differs. It steers LiteRT
    2.3 away from its hybrid DEPTHWISE_CONV_2D kernel's per-tensor path, which reads scales past the single stored one.
    """

    kind: ClassVar[str] = "kernel_workaround_per_channel_scale"
    ops: tuple[str, ...] = ()
    op_type: str | None = None

    def describe(self) -> str:
        return f"kernel workaround: repeat the per-tensor weight scale per channel for {_ops_text(self.ops, self.op_type)}"

    def unsupported(self, backend: Backend, scheme: str) -> str | None:
        if backend == Backend.ORT:
            return "the workaround targets a LiteRT kernel; ONNX Runtime does not run it"
        if scheme not in DYNAMIC_SCHEMES:
            return "the workaround targets hybrid (dynamic-range) kernels; integer kernels also tie bias scales to it"
        return None
