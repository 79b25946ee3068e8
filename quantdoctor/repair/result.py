"""The result of a repair: the actions kept, the trajectory of the search, and what it cost."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

from quantdoctor.repair.actions import Action


@dataclass(frozen=True)
class TrajectoryRow:
    """One accepted (or undone, or pruned) step, measured on the ranking subset unless `full`."""

    step: int
    change: str  # "baseline", "+ <action>", "- <action> (step back)", "- <action> (pruned)", "final"
    metric: float  # the budget metric, fraction
    drop: float  # points below float
    size_bytes: int
    float_ops: int
    latency_ms: float
    evaluations: int  # quantized evaluations so far
    seconds: float  # wall time so far
    full: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RepairResult:
    """What `repair()` found. `model` is the repaired .tflite (the best found when the budget is not met)."""

    scheme: str
    backend: str
    metric: str
    max_drop: float
    baseline_metric: float  # full evaluation set
    final_metric: float  # full evaluation set, fresh evaluation of `model`
    actions: tuple[Action, ...]
    changed_ops: int
    trajectory: tuple[TrajectoryRow, ...]
    evaluations: int
    seconds: float
    budget_met: bool
    skipped: tuple[str, ...]  # actions the backend could not express, with the reason
    message: str
    model: bytes = b""
    splice_evaluations: int = 0  # counterfactual passes of the diagnoses that verified causes (cut models, not builds)
    float_model: str = ""  # the float model as the user named it (shown in the HTML header)

    @property
    def final_drop(self) -> float:
        return 100.0 * (1.0 - self.final_metric) if self.metric == "agreement" else float("nan")

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k not in ("model", "actions", "trajectory")}
        data["actions"] = [a.to_dict() for a in self.actions]
        data["trajectory"] = [r.to_dict() for r in self.trajectory]
        data["skipped"] = list(self.skipped)
        data["model_size_bytes"] = len(self.model)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def to_html(self) -> str:
        """The repair report as one self-contained HTML document (`report.render`)."""
        from quantdoctor.report.render import render

        return render(self, "html")

    def summary(self) -> str:
        """The terminal view: outcome, changes, and the trajectory table (`report.render`)."""
        from quantdoctor.report.render import render

        return render(self, "terminal")

    def _repr_html_(self) -> str:
        from quantdoctor.report.render import render

        return render(self, "html")
