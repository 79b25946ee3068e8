"""The result of a diagnosis: one frozen data model that every output (terminal, JSON, HTML, pandas) is rendered from."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

# One definition each: the accumulators produce these, the report carries them.
from quantdoctor.backends.base import QuantParams, WeightInfo
from quantdoctor.diagnose.verification import FixCheck, Outcome, Verification
from quantdoctor.matching.types import MatchMethod, Unmatched
from quantdoctor.stats.accumulators import TensorError
from quantdoctor.stats.activations import ActivationStats
from quantdoctor.stats.channels import ChannelError
from quantdoctor.stats.classification import ClassLoss, ModelMetrics
from quantdoctor.stats.grid import GridCoverage
from quantdoctor.stats.margins import OutputMargins
from quantdoctor.stats.weights import WeightReport
from quantdoctor.tasks.base import TaskResult

__all__ = [
    "ClassLoss", "MatchMethod", "ModelMetrics", "QuantParams", "TensorError", "Unmatched", "WeightInfo",
]  # re-exported for the report's users

SCHEMA_VERSION = "1.5"
SQNR_CAP_DB = 60.0


@dataclass(frozen=True)
class LayerResult:
    """One matched tensor pair: where it sits, what produced it, and how far the quantized value departs."""

    position: int  # topological position of the producing op in the quantized graph
    float_tensor: str
    quant_tensor: str
    keras_layers: tuple[str, ...]  # Keras layers folded into this tensor, last one = the layer whose output it is
    op_type: str
    shape: tuple[int, ...]
    match: MatchMethod
    accumulated: TensorError  # end-to-end error: quantized model vs float model at this tensor
    quant: QuantParams | None  # None for float tensors (dynamic-range activations)
    weights: WeightInfo | None
    input_tensors: tuple[str, ...]  # float names of the activation inputs
    input_sqnr_db: float | None  # SQNR of the worst activation input (None: no matched input)
    rmse_over_scale: float | None  # accumulated RMSE in units of the quantization step
    isolated: TensorError | None = None  # the op's own error: the quantized op alone on the float model's input
    expected: TensorError | None = None  # the error its quantization parameters predict (see diagnose/probes.py)
    float_stats: ActivationStats | None = None  # the float activation, with the quantized grid's clipping/zero shares
    quant_stats: ActivationStats | None = None  # the quantized activation (dequantized)
    grid: GridCoverage | None = None  # levels one sample occupies on the quantized grid
    grid_mode: str | None = None  # "static" (the tensor's scale) or "dynamic" (per sample, as hybrid kernels do)
    weight_report: WeightReport | None = None  # the op's weights as the converter quantized them
    output_error_share: float | None = None  # share of the output's noise built up at this op (see build_layers)
    # Per-channel error of a tensor that joins parts (a concatenation's output, a graph output), so each channel
    # group's SQNR is measured, not estimated (`stats/channels.py`); None for other tensors.
    channel_error: ChannelError | None = None

    @property
    def label(self) -> str:
        return self.keras_layers[-1] if self.keras_layers else self.float_tensor

    @property
    def sqnr_drop_db(self) -> float | None:
        """SQNR lost from the worst input to the output, both capped at `SQNR_CAP_DB` (positive = the op made it worse).

        The cap keeps an exact input (+inf dB, or float rounding at ~150 dB) from making the first quantized op look
        like the worst: above the cap the error is rounding noise, not quantization.
        """
        if self.input_sqnr_db is None:
            return None
        return _capped(self.input_sqnr_db) - _capped(self.accumulated.sqnr_db)

    @property
    def excess_db(self) -> float | None:
        """How much worse the runtime is than the op's parameters predict: expected SQNR − isolated SQNR (capped)."""
        if self.isolated is None or self.expected is None:
            return None
        return _capped(self.expected.sqnr_db) - _capped(self.isolated.sqnr_db)

    @property
    def noise_added(self) -> float:
        """Increase of the noise-to-signal power ratio across the op, 10^(-out/10) - 10^(-in/10)."""
        inp = 0.0 if self.input_sqnr_db is None else _nsr(self.input_sqnr_db)
        return _nsr(self.accumulated.sqnr_db) - inp

    def to_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "label": self.label,
            "float_tensor": self.float_tensor,
            "quant_tensor": self.quant_tensor,
            "keras_layers": list(self.keras_layers),
            "op_type": self.op_type,
            "shape": list(self.shape),
            "match": self.match.value,
            "accumulated": self.accumulated.to_dict(),
            "isolated": self.isolated.to_dict() if self.isolated else None,
            "expected": self.expected.to_dict() if self.expected else None,
            "excess_db": _json_number(self.excess_db),
            "float_stats": self.float_stats.to_dict() if self.float_stats else None,
            "quant_stats": self.quant_stats.to_dict() if self.quant_stats else None,
            "grid": self.grid.to_dict() if self.grid else None,
            "grid_mode": self.grid_mode,
            "weight_report": self.weight_report.to_dict() if self.weight_report else None,
            "output_error_share": _json_number(self.output_error_share),
            "channel_error": self.channel_error.to_dict() if self.channel_error else None,
            "quant": self.quant.to_dict() if self.quant else None,
            "weights": self.weights.to_dict() if self.weights else None,
            "input_tensors": list(self.input_tensors),
            "input_sqnr_db": _json_number(self.input_sqnr_db),
            "sqnr_drop_db": _json_number(self.sqnr_drop_db),
            "noise_added": _json_number(self.noise_added),
            "rmse_over_scale": _json_number(self.rmse_over_scale),
        }


@dataclass(frozen=True)
class Coverage:
    """Share of float activation tensors matched, overall and for the layer kinds that carry weights."""

    matched: int
    float_tensors: int
    weighted_layers_matched: int  # Keras conv / depthwise / dense layers found in a matched tensor
    weighted_layers: int

    @property
    def ratio(self) -> float:
        return self.matched / self.float_tensors if self.float_tensors else 1.0

    @property
    def weighted_ratio(self) -> float:
        return self.weighted_layers_matched / self.weighted_layers if self.weighted_layers else 1.0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio"] = self.ratio
        d["weighted_ratio"] = self.weighted_ratio
        return d


@dataclass(frozen=True)
class RunInfo:
    """What was compared, on what data, and how long it took."""

    float_model: str
    float_kind: str
    quantized_model: str  # a path, or "converted with scheme X"
    scheme: str | None
    data: str
    preprocess: str
    calibration: str  # which samples calibrated the quantized model (or "none needed")
    num_eval_samples: int
    batch_size: int
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Onset:
    """The first layer where the error jumps."""

    position: int
    label: str
    sqnr_db: float
    input_sqnr_db: float | None
    rule: str  # the rule that picked it, in words

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_number(v) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Repro:
    """What a one-op reproduction needs: the quantized model, the op, and one sample's float inputs (not in the JSON)."""

    op_index: int
    op_type: str
    model: bytes = field(repr=False)
    inputs: tuple[Any, ...] = field(repr=False)
    runtime: str = "tflite"  # which writer makes the files: a one-op .tflite, or an ONNX QDQ neighbourhood cut


class Severity(str, Enum):
    CRITICAL = "critical"
    WARNING = "warning"
    INFO = "info"




@dataclass(frozen=True)
class Finding:
    """One suspect: where, by which mechanism, with what evidence, and what to do about it."""

    mechanism: str  # a key of DETECTORS
    severity: Severity
    positions: tuple[int, ...]  # quantized op indices (LayerResult.position)
    layers: tuple[str, ...]  # their labels
    op_types: tuple[str, ...]
    evidence: dict[str, Any] = field(default_factory=dict)  # numbers (and a few names) the sentences quote
    fix: str = ""  # the action it suggests, in words
    score: float = 0.0  # estimated share of the output error it accounts for (0..1, nan if unknown)
    verified: bool = False  # its counterfactual recovered at least the verification target of the loss
    check: Outcome | None = None  # the counterfactual measured for it (diagnose/verify.py), None if not measured
    role: str = "suspect"  # "cause" (verified), "context" (a symptom shown with the cause), "suspect" (not proven)
    fix_check: FixCheck | None = None  # its fix built with the real quantizer and evaluated (`--verify-fixes`)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mechanism": self.mechanism,
            "severity": self.severity.value,
            "positions": list(self.positions),
            "layers": list(self.layers),
            "op_types": list(self.op_types),
            "evidence": dict(self.evidence),
            "fix": self.fix,
            "score": self.score,
            "verified": self.verified,
            "check": None if self.check is None else self.check.to_dict(),
            "role": self.role,
            "fix_check": None if self.fix_check is None else self.fix_check.to_dict(),
        }



@dataclass(frozen=True)
class Diagnosis:
    """Everything one diagnose run measured. Renderers read this and nothing else."""

    run: RunInfo
    model: ModelMetrics | None  # the classifier metrics; None when the task is not `classify`
    layers: tuple[LayerResult, ...]
    unmatched: tuple[Unmatched, ...]
    coverage: Coverage
    onset: Onset | None
    margins: OutputMargins | None = None
    findings: tuple[Finding, ...] = ()  # ranked: verified causes first (see diagnose/verify.py), then by severity
    verification: Verification | None = None  # counterfactuals at the output: located causes, sensitivity table
    repros: tuple[Repro, ...] = ()  # one per kernel-defect finding, written next to the report
    task: TaskResult | None = None  # the task's metrics and every output measured on its own (quantdoctor/tasks)
    schema_version: str = SCHEMA_VERSION

    def layer_at(self, position: int) -> LayerResult | None:
        return next((l for l in self.layers if l.position == position), None)

    def worst_layers(self, n: int = 10) -> list[LayerResult]:
        """Layers with the largest SQNR drop from input to output (see `LayerResult.sqnr_drop_db`)."""
        ranked = [l for l in self.layers if l.sqnr_drop_db is not None and not math.isnan(l.sqnr_drop_db)]
        return sorted(ranked, key=lambda l: (-l.sqnr_drop_db, l.position))[:n]

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(self._to_dict())

    def _to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "tool": "quantdoctor",
            "run": self.run.to_dict(),
            "model": None if self.model is None else self.model.to_dict(),
            "task": None if self.task is None else self.task.to_dict(),
            "coverage": self.coverage.to_dict(),
            "onset": self.onset.to_dict() if self.onset else None,
            "worst_layers": [l.position for l in self.worst_layers()],
            "margins": self.margins.to_dict() if self.margins else None,
            "findings": [f.to_dict() for f in self.findings],
            "verification": None if self.verification is None else self.verification.to_dict(),
            "layers": [l.to_dict() for l in self.layers],
            "unmatched": [u.to_dict() for u in self.unmatched],
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    # Views, rendered by `quantdoctor.report.render` (the data model holds numbers only).
    def to_html(self) -> str:
        from quantdoctor.report.render import render

        return render(self, "html")

    def summary(self, width: int = 100) -> str:
        from quantdoctor.report.render import render

        return render(self, "terminal", width=width)

    def layers_frame(self):  # -> pandas.DataFrame
        from quantdoctor.report.render import render

        return render(self, "frame")

    def _repr_html_(self) -> str:  # Jupyter
        return self.to_html()


def _nsr(sqnr_db: float) -> float:
    if math.isnan(sqnr_db):
        return math.nan
    if sqnr_db == math.inf:
        return 0.0
    if sqnr_db == -math.inf:
        return math.inf
    return 10.0 ** (-sqnr_db / 10.0)


def _capped(sqnr_db: float) -> float:
    return min(sqnr_db, SQNR_CAP_DB)


def _json_safe(obj: Any) -> Any:
    """Recursively encode inf/nan as strings: JSON has neither."""
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return _json_number(obj)


def _json_number(v: Any) -> Any:
    """JSON has no inf/nan: encode them as strings so the file stays valid JSON."""
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
    return v
