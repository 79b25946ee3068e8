"""compare(): two models, each against its quantized version, and which measured differences explain the gap.

The user's question behind it: two classifiers of one architecture (say 80 and 200 classes) are both fine in float, but
quantized one loses far more than the other. Each model is diagnosed against its own quantized version, the layers of
the two diagnoses are aligned (by Keras label, then by position), and the differences are turned into ranked
`Explanation`s, each stating in numbers how much of the gap it accounts for:

- `margins` / `logit_noise` — the Gaussian margin model of `stats.margins` predicts each side's flip rate from its
  float top-1 margins and the noise on them. Swapping the worse side's noise for the better side's splits the
  predicted gap into a part due to smaller margins (more classes crowd the top) and a part due to more noise at the
  logits: p(m_W, σ_B) − p(m_B, σ_B) and p(m_W, σ_W) − p(m_W, σ_B) (W = worse, B = better side), each over the
  observed gap.
- `parting_layer` — the first aligned layer where the worse side's accumulated SQNR is `PART_DB` below the other's.
- `layer_only_in` — a layer whose own error (isolated SQNR, else the SQNR drop across it) is `DEPART_DB` worse on one
  side only.
- `finding_only_in` — a finding (mechanism at a layer) that the worse side has and the better side does not.
- `no_gap` — both lose the same within one sample's worth; nothing to explain.

Sentences are rendered from the evidence by `report/compare_text.py`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from quantdoctor.diagnose.results import SQNR_CAP_DB, Diagnosis, LayerResult, _json_safe

PART_DB = 3.0  # "where they part": the worse side's accumulated SQNR this far below the other's
DEPART_DB = 3.0  # an op's own error this much worse on one side only
MAX_LAYER_EXPLANATIONS = 3
METRICS = ("top1_agreement", "topk_agreement", "float_top1", "quant_top1", "float_topk", "quant_topk", "logit_sqnr_db")


class AlignMethod(str, Enum):
    """How a layer of model A was paired with one of model B."""

    LABEL = "label"  # same Keras label (the n-th occurrence of a label pairs with the n-th)
    POSITION = "position"  # left over after labels; same op type, same order among the leftovers


class ExplanationKind(str, Enum):
    VERIFIED_CAUSE = "verified_cause"  # a cause proven by a counterfactual on the worse side, absent on the better
    MARGINS = "margins"
    LOGIT_NOISE = "logit_noise"
    PARTING_LAYER = "parting_layer"
    LAYER_ONLY_IN = "layer_only_in"
    FINDING_ONLY_IN = "finding_only_in"
    NO_GAP = "no_gap"


@dataclass(frozen=True)
class MetricPair:
    """One model-level metric of both sides; `gap_points` = 100 × (B − A), None if either side lacks it."""

    name: str
    a: float | None
    b: float | None

    @property
    def gap_points(self) -> float | None:
        if self.a is None or self.b is None:
            return None
        scale = 1.0 if self.name.endswith("_db") else 100.0
        return scale * (self.b - self.a)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "a": self.a, "b": self.b, "gap_points": self.gap_points}


@dataclass(frozen=True)
class LayerPair:
    """An aligned layer: where it sits on each side and its accumulated error on each side."""

    label_a: str
    label_b: str
    position_a: int
    position_b: int
    op_type: str
    shape_a: tuple[int, ...]
    shape_b: tuple[int, ...]
    method: AlignMethod
    sqnr_a_db: float
    sqnr_b_db: float
    own_a_db: float | None  # the op's own error: isolated SQNR, else minus the SQNR drop across it (see _own_db)
    own_b_db: float | None

    @property
    def delta_db(self) -> float:
        """B's accumulated SQNR minus A's, both capped at `SQNR_CAP_DB` (negative: B is worse here)."""
        return _cap(self.sqnr_b_db) - _cap(self.sqnr_a_db)

    @property
    def own_delta_db(self) -> float | None:
        if self.own_a_db is None or self.own_b_db is None:
            return None
        return _cap(self.own_b_db) - _cap(self.own_a_db)

    def to_dict(self) -> dict[str, Any]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d.update(method=self.method.value, shape_a=list(self.shape_a), shape_b=list(self.shape_b))
        d.update(delta_db=self.delta_db, own_delta_db=self.own_delta_db)
        return d


@dataclass(frozen=True)
class Unaligned:
    """A layer of one side with no counterpart on the other."""

    side: str  # "a" or "b"
    position: int
    label: str
    op_type: str

    def to_dict(self) -> dict[str, Any]:
        return {"side": self.side, "position": self.position, "label": self.label, "op_type": self.op_type}


@dataclass(frozen=True)
class Explanation:
    """One measured difference and how much of the gap it explains (`score`: share of the observed gap, nan if the
    difference is real but not convertible to flips)."""

    kind: ExplanationKind
    evidence: dict[str, Any]
    sentence: str
    score: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind.value, "score": self.score, "evidence": dict(self.evidence), "sentence": self.sentence,
        }


@dataclass(frozen=True)
class Comparison:
    """Everything compare measured. `a` and `b` are the two full diagnoses (written as each side's report.json)."""

    name_a: str
    name_b: str
    metrics: tuple[MetricPair, ...]
    layers: tuple[LayerPair, ...]
    unaligned: tuple[Unaligned, ...]
    parting: LayerPair | None
    explanations: tuple[Explanation, ...]
    a: Diagnosis = field(repr=False)
    b: Diagnosis = field(repr=False)

    @property
    def margins_a(self):
        return getattr(self.a, "margins", None)

    @property
    def margins_b(self):
        return getattr(self.b, "margins", None)

    @property
    def findings_a(self) -> tuple:
        return tuple(getattr(self.a, "findings", ()) or ())

    @property
    def findings_b(self) -> tuple:
        return tuple(getattr(self.b, "findings", ()) or ())

    def metric(self, name: str) -> MetricPair:
        return next(m for m in self.metrics if m.name == name)

    @property
    def gap_points(self) -> float:
        """How many points more of top-1 agreement B loses than A (positive: B loses more)."""
        return -self.metric("top1_agreement").gap_points

    def layer(self, label: str) -> LayerPair | None:
        return next((p for p in self.layers if label in (p.label_a, p.label_b)), None)

    def to_dict(self) -> dict[str, Any]:
        def side(d: Diagnosis) -> dict[str, Any]:
            return {"run": d.run.to_dict(), "model": d.model.to_dict(), "onset": d.onset.to_dict() if d.onset else None}

        return _json_safe(
            {
                "tool": "quantdoctor",
                "kind": "compare",
                "name_a": self.name_a,
                "name_b": self.name_b,
                "gap_points": self.gap_points,
                "metrics": [m.to_dict() for m in self.metrics],
                "explanations": [e.to_dict() for e in self.explanations],
                "parting": self.parting.to_dict() if self.parting else None,
                "margins_a": _to_dict(self.margins_a),
                "margins_b": _to_dict(self.margins_b),
                "findings_a": [_to_dict(f) for f in self.findings_a],
                "findings_b": [_to_dict(f) for f in self.findings_b],
                "layers": [p.to_dict() for p in self.layers],
                "unaligned": [u.to_dict() for u in self.unaligned],
                "a": side(self.a),
                "b": side(self.b),
            }
        )

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def summary(self, width: int = 100) -> str:
        from quantdoctor.report.render import render

        return render(self, "terminal", width=width)

    def to_html(self) -> str:
        """The comparison as one self-contained HTML page (what `compare --out` writes as compare.html)."""
        from quantdoctor.report.render import render

        return render(self, "html")

    def _repr_html_(self) -> str:  # Jupyter
        return self.to_html()


def compare(
    model_a: str | Path,
    model_b: str | Path,
    data: Any,
    data_b: Any = None,
    scheme: str | None = None,
    quantized_a: str | Path | None = None,
    quantized_b: str | Path | None = None,
    *,
    scheme_b: str | None = None,
    progress: bool = False,
    **options: Any,
) -> Comparison:
    """Diagnose each model against its own quantized version and explain the gap between them.

    Args:
        model_a, model_b: float models (anything `quantdoctor.diagnose` reads).
        data: evaluation data of A (and of B unless `data_b` is given).
        scheme: quantize both here with this scheme; or give both `quantized_a` and `quantized_b`.
        scheme_b: quantize B with this scheme instead (two runtimes: e.g. A a Keras model under "int8", B its ONNX
            export under "ort-qdq-int8"; layers then align by position and op kind).
        options: further `DiagnoseConfig` fields (preprocess=, top_k=, batch_size=, ...), applied to both sides.

    Raises:
        UserInputError: a bad model, data or option (from diagnose), or only one quantized file.
    """
    from quantdoctor.diagnose.pipeline import diagnose
    from quantdoctor.errors import UserInputError

    if (quantized_a is None) != (quantized_b is None):
        raise UserInputError("give both --quantized-a and --quantized-b, or neither and --scheme NAME")
    if (scheme is None) == (quantized_a is None):
        raise UserInputError("give exactly one of --scheme NAME or --quantized-a FILE --quantized-b FILE")
    diag_a = diagnose(model_a, data, quantized_a, scheme, progress=progress, **options)
    diag_b = diagnose(model_b, data if data_b is None else data_b, quantized_b,
                      None if quantized_b is not None else (scheme_b or scheme), progress=progress, **options)
    return compare_diagnoses(diag_a, diag_b, str(model_a), str(model_b))


def compare_diagnoses(a: Diagnosis, b: Diagnosis, name_a: str = "A", name_b: str = "B") -> Comparison:
    """The comparison of two finished diagnoses (no model is run).

    Raises:
        UserInputError: a diagnosis of a model that is not a classifier (the comparison reads top-1 agreement).
    """
    from quantdoctor.errors import UserInputError

    for name, d in ((name_a, a), (name_b, b)):
        if d.model is None:
            task = d.task.task if d.task is not None else "another task"
            raise UserInputError(f"compare measures classifiers; {name} was judged as '{task}': diagnose each model "
                                 "on its own with `quantdoctor diagnose --task ...`")
    from quantdoctor.diagnose.explain_gap import explain

    metrics = tuple(MetricPair(n, getattr(a.model, n), getattr(b.model, n)) for n in METRICS)
    layers, unaligned = align_layers(a.layers, b.layers)
    parting = parting_layer(layers, worse="b" if _flip_rate(b) >= _flip_rate(a) else "a")
    partial = Comparison(name_a, name_b, metrics, layers, unaligned, parting, (), a, b)
    return Comparison(name_a, name_b, metrics, layers, unaligned, parting, explain(partial), a, b)


# Op types of different runtimes that compute the same layer kind (TFLite builtins → ONNX operators).
OP_KINDS = {
    "CONV_2D": "Conv", "DEPTHWISE_CONV_2D": "Conv", "TRANSPOSE_CONV": "ConvTranspose", "FULLY_CONNECTED": "Gemm",
    "MatMul": "Gemm", "ADD": "Add", "MUL": "Mul", "SUB": "Sub", "CONCATENATION": "Concat", "MEAN": "GlobalAveragePool",
    "ReduceMean": "GlobalAveragePool", "AVERAGE_POOL_2D": "AveragePool", "MAX_POOL_2D": "MaxPool", "RESHAPE": "Reshape",
    "Flatten": "Reshape", "SOFTMAX": "Softmax", "RELU": "Relu", "RELU6": "Clip", "LOGISTIC": "Sigmoid",
}


def op_kind(op_type: str) -> str:
    """The runtime-neutral kind of an op type, so a TFLite and an ONNX model align by position."""
    return OP_KINDS.get(op_type, op_type)


def align_layers(
    layers_a: tuple[LayerResult, ...], layers_b: tuple[LayerResult, ...]
) -> tuple[tuple[LayerPair, ...], tuple[Unaligned, ...]]:
    """Pair A's layers with B's: by Keras label first, then the leftovers by position among the leftovers.

    A label that occurs several times pairs occurrence by occurrence (in position order). Leftovers pair only when the
    op types agree, walking both leftover lists in order (a mismatch skips the side that is behind). Pairs come back in
    A's position order.
    """
    keyed_a, keyed_b = _occurrence_keys(layers_a), _occurrence_keys(layers_b)
    pairs = [_pair(keyed_a[k], keyed_b[k], AlignMethod.LABEL) for k in keyed_a if k in keyed_b]
    rest_a = sorted((l for k, l in keyed_a.items() if k not in keyed_b), key=lambda l: l.position)
    rest_b = sorted((l for k, l in keyed_b.items() if k not in keyed_a), key=lambda l: l.position)
    i = j = 0
    unaligned = []
    while i < len(rest_a) and j < len(rest_b):
        la, lb = rest_a[i], rest_b[j]
        if op_kind(la.op_type) == op_kind(lb.op_type):
            pairs.append(_pair(la, lb, AlignMethod.POSITION))
            i, j = i + 1, j + 1
        elif la.position <= lb.position:
            unaligned.append(Unaligned("a", la.position, la.label, la.op_type))
            i += 1
        else:
            unaligned.append(Unaligned("b", lb.position, lb.label, lb.op_type))
            j += 1
    unaligned += [Unaligned("a", l.position, l.label, l.op_type) for l in rest_a[i:]]
    unaligned += [Unaligned("b", l.position, l.label, l.op_type) for l in rest_b[j:]]
    pairs.sort(key=lambda p: (p.position_a, p.position_b))
    return tuple(pairs), tuple(sorted(unaligned, key=lambda u: (u.side, u.position)))


def parting_layer(layers: tuple[LayerPair, ...], worse: str = "b") -> LayerPair | None:
    """The first aligned layer (in the worse side's order) where the worse side's SQNR is ≥ `PART_DB` below the
    other's."""
    sign = 1.0 if worse == "b" else -1.0
    ordered = sorted(layers, key=lambda p: p.position_b if worse == "b" else p.position_a)
    return next((p for p in ordered if sign * p.delta_db <= -PART_DB), None)


def predicted_flip_rate(margins, sigma: float, mean: float) -> float:
    """The margin model's flip rate for `margins`' top-1 margin histogram under noise N(mean, sigma²).

    Reads the histogram as `stats.margins` does (geometric bucket centres, 0 for the zero bucket), so with a side's own
    noise it reproduces that side's `predicted_flip_rate`; with the other side's noise it is the counterfactual rate.
    """
    from quantdoctor.stats.margins import flip_probability

    edges = np.asarray(getattr(margins, "bin_edges", ()), dtype=np.float64)
    counts = np.asarray(getattr(margins, "top1_counts", ()), dtype=np.float64)
    if counts.sum() == 0 or edges.size != counts.size + 1 or not math.isfinite(sigma) or not math.isfinite(mean):
        return math.nan
    centres = np.concatenate(([0.0], np.sqrt(edges[1:-1] * edges[2:])))
    return float((counts * flip_probability(centres, sigma, mean)).sum() / counts.sum())


def _flip_rate(d: Diagnosis) -> float:
    a = d.model.top1_agreement
    return math.nan if a is None else 1.0 - a


def _occurrence_keys(layers) -> dict[tuple[str, int], LayerResult]:
    seen: dict[str, int] = {}
    keyed = {}
    for l in sorted(layers, key=lambda l: l.position):
        n = seen.get(l.label, 0)
        seen[l.label] = n + 1
        keyed[(l.label, n)] = l
    return keyed


def _pair(la: LayerResult, lb: LayerResult, method: AlignMethod) -> LayerPair:
    return LayerPair(
        label_a=la.label,
        label_b=lb.label,
        position_a=la.position,
        position_b=lb.position,
        op_type=la.op_type if la.op_type == lb.op_type else f"{la.op_type}/{lb.op_type}",
        shape_a=tuple(la.shape),
        shape_b=tuple(lb.shape),
        method=method,
        sqnr_a_db=la.accumulated.sqnr_db,
        sqnr_b_db=lb.accumulated.sqnr_db,
        own_a_db=_own_db(la),
        own_b_db=_own_db(lb),
    )


def _own_db(layer: LayerResult) -> float | None:
    """The op's own error in dB: its isolated SQNR when measured, else minus the SQNR it loses from input to output
    (a comparable scale: both are lower when the op adds more noise)."""
    iso = getattr(layer, "isolated", None)
    if iso is not None and not math.isnan(iso.sqnr_db):
        return iso.sqnr_db
    drop = layer.sqnr_drop_db
    return None if drop is None or math.isnan(drop) else SQNR_CAP_DB - drop


def _cap(v: float) -> float:
    return min(v, SQNR_CAP_DB)


def _to_dict(obj: Any) -> Any:
    return None if obj is None else obj.to_dict() if hasattr(obj, "to_dict") else obj
