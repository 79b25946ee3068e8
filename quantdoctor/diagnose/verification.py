"""What verification measured: counterfactual outcomes at the model output, the sensitivity table, the located causes.

A counterfactual changes the quantized model in one controlled way and measures the *output* (top-1/top-k agreement
with the float model, accuracy on labels, logit SQNR) on the verification subset. The kinds:

- `quantized` — the quantized model as it is (the baseline the others recover from);
- `op_exact` — the chosen ops' outputs replaced by the float model's values (requantized into integer tensors), every
  other op as quantized: what fixing those ops perfectly would give;
- `alone_quantized` — every *other* candidate op exact, only the chosen ones as quantized: the loss they cause alone.

recovery = (a_cf − a_q) / (1 − a_q) with a = top-1 agreement (or, for a task other than classify, its headline metric): the share of the quantized model's lost decisions the
counterfactual wins back (1 = all of them, 0 = none, negative = it loses more); nan when nothing was lost.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Outcome:
    """One counterfactual evaluated at the output."""

    kind: str  # "quantized", "op_exact", "alone_quantized", "fix_applied"
    ops: tuple[int, ...]  # quantized op indices (LayerResult.position) it changes
    top1_agreement: float
    topk_agreement: float
    accuracy: float | None  # quantized top-1 on labelled samples (None without labels)
    logit_sqnr_db: float  # a classifier's logit SQNR; for other tasks the SQNR of the worst output
    recovery: float  # see the module docstring
    # What `top1_agreement` holds: "agreement" for a classifier; for another task its headline metric (e.g. "f1",
    # detection F1 against the float detections), which then also fills `topk_agreement`.
    metric: str = "agreement"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ops"] = list(self.ops)
        if self.metric == "agreement":  # a classifier's outcome reads as it always did
            del d["metric"]
        return d


@dataclass(frozen=True)
class Sensitivity:
    """One row of the sensitivity table: what one op does to the output, measured by splices."""

    position: int
    label: str
    op_type: str
    exact: Outcome  # this op exact, the rest quantized
    alone: Outcome | None  # only this op quantized (None: not measured)
    in_causes: bool  # member of the located cause set

    @property
    def loss_alone(self) -> float | None:
        """Top-1 agreement lost (fraction) when only this op is quantized."""
        return None if self.alone is None else 1.0 - self.alone.top1_agreement

    def to_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "label": self.label,
            "op_type": self.op_type,
            "exact": self.exact.to_dict(),
            "alone": None if self.alone is None else self.alone.to_dict(),
            "loss_alone": self.loss_alone,
            "in_causes": self.in_causes,
        }


@dataclass(frozen=True)
class Verification:
    """Everything the verify step measured for one diagnosis.

    `causes` is the smallest set of ops found whose exactness recovers at least `target` of the loss (empty when the
    model loses nothing worth locating, or no set of candidate ops recovers it); `all_exact` checks the splice: every
    candidate op exact should give the float model's decisions.
    """

    samples: int
    candidates: int  # ops that can be made exact (every output has a float counterpart)
    target: float  # recovery a cause set must reach
    baseline: Outcome
    all_exact: Outcome | None
    causes: tuple[int, ...]
    cause_outcome: Outcome | None
    table: tuple[Sensitivity, ...]
    evaluations: int
    seconds: float
    note: str = ""  # why no cause was located, in words
    cause_labels: tuple[str, ...] = ()  # labels of `causes`, in order
    decided_early: int = 0  # evaluations whose first batches settled their decision (`Counterfactuals.recovers`)

    @property
    def loss(self) -> float:
        return 1.0 - self.baseline.top1_agreement

    def to_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "candidates": self.candidates,
            "target": self.target,
            "baseline": self.baseline.to_dict(),
            "all_exact": None if self.all_exact is None else self.all_exact.to_dict(),
            "causes": list(self.causes),
            "cause_outcome": None if self.cause_outcome is None else self.cause_outcome.to_dict(),
            "table": [row.to_dict() for row in self.table],
            "evaluations": self.evaluations,
            "seconds": self.seconds,
            "note": self.note,
            "cause_labels": list(self.cause_labels),
            "decided_early": self.decided_early,
        }


def recovery(quantized: float, counterfactual: float, reference: float = 1.0) -> float:
    """(counterfactual − quantized) / (reference − quantized); nan when the quantized model lost nothing."""
    lost = reference - quantized
    if not lost > 1e-12 or math.isnan(counterfactual):
        return math.nan
    return (counterfactual - quantized) / lost


@dataclass(frozen=True)
class FixCheck:
    """A finding's suggested fix, built with the real quantizer and evaluated at the output (repair/fixes.py)."""

    action: str  # the fix, in words ("keep b2_dw_relu in float", ...)
    before: float  # top-1 agreement of the model the quantizer builds without the fix, on the same samples
    outcome: Outcome  # kind "fix_applied"
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return {"action": self.action, "before": self.before, "outcome": self.outcome.to_dict(), "samples": self.samples}
