"""What a task is: how the outputs of a model are judged against the float model's outputs.

A *task* (`classify`, `regress`, `segment`, `detect`, or a user function) turns the float and quantized outputs of a
batch into streaming metrics. Every task follows the accumulator contract of `stats/accumulators.py`: `update(...)`
folds one batch in (all outputs of the model, in the model's output order), `merge(other)` returns a new accumulator
holding both streams, `result()` returns a frozen `TaskResult`.

Each task has one **headline** metric: a fraction in [0, 1] where the float model scores 1.0 against itself (top-1
agreement, detection F1 against the float detections, mean IoU against the float masks, regression fidelity). The repair
budget (`--metric`) and the counterfactual recovery of `diagnose/verify.py` read the headline, or another metric the task
lists in `budget_metrics`; a drop is in points: 100 × (float value − quantized value).

Every output is also measured on its own (`OutputMetrics`: SQNR, relative and max error, per channel group), whatever
the task, so a multi-head model shows which head keeps its signal.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import numpy as np

from quantdoctor.backends.base import TensorSpec
from quantdoctor.registry import Registry


@dataclass(frozen=True)
class ChannelGroup:
    """A contiguous run of channels (last axis) of one tensor measured on its own.

    `levels` is how many steps of the tensor's quantization grid the group's float range spans (range / scale; None for
    a float tensor); a group of 1-3 levels is crushed. `sqnr_db` pools the group's elements over all samples.
    """

    name: str  # e.g. "box [0:4]", "scores [4:14]"
    start: int
    stop: int
    float_min: float
    float_max: float
    sqnr_db: float
    levels: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class OutputMetrics:
    """One model output: its role in the task and its error against the float output."""

    index: int  # position among the model's outputs
    name: str
    role: str  # "class scores", "boxes + class scores", "landmarks", "mask logits", "values", ...
    shape: tuple[int, ...]  # per sample
    sqnr_db: float
    relative_error: float  # ||q − f|| / ||f|| over all samples
    max_abs_error: float
    groups: tuple[ChannelGroup, ...] = ()  # channel groups (empty: the output is one quantity)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        d["groups"] = [g.to_dict() for g in self.groups]
        return d


@dataclass(frozen=True)
class TaskResult:
    """The metrics of one task over a data stream.

    `metrics` maps metric names to values (fractions for agreement-like metrics; dB, pixels or units where the name
    says so; nan when undefined). `float_values` holds the float model's own value of a metric where it is not 1.0 by
    definition (accuracy against labels). `headline` names the metric that summarises the task.
    """

    task: str
    headline: str
    metrics: dict[str, float]
    outputs: tuple[OutputMetrics, ...]
    num_samples: int
    float_values: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)  # task-specific extras (e.g. classify's ModelMetrics dict)

    @property
    def value(self) -> float:
        """The headline metric of the quantized model."""
        return self.metrics[self.headline]

    def pair(self, metric: str | None = None) -> tuple[float, float]:
        """(float value, quantized value) of a metric (the headline by default); float is 1.0 unless recorded."""
        name = metric or self.headline
        return self.float_values.get(name, 1.0), self.metrics[name]

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "headline": self.headline,
            "metrics": dict(self.metrics),
            "outputs": [o.to_dict() for o in self.outputs],
            "num_samples": self.num_samples,
            "float_values": dict(self.float_values),
            "details": self.details,
        }


class TaskAccumulator(Protocol):
    """Streams a task's metrics (see the module docstring for the contract)."""

    def update(self, float_outputs: Sequence[np.ndarray], quant_outputs: Sequence[np.ndarray],
               labels: np.ndarray | None = None) -> None: ...

    def merge(self, other: TaskAccumulator) -> TaskAccumulator: ...

    def result(self) -> TaskResult: ...


@dataclass(frozen=True)
class TaskOptions:
    """What the command line (or the API) says about the outputs; None = decide from the outputs.

    Attributes:
        class_output: which output holds the class scores (classify; detect's raw layout).
        layout: detect: "raw" (rows of box values + class scores, YOLO style) or "postprocessed" (boxes, classes,
            scores, count: TFLite's detection post-process op).
        box_slice / score_slice: detect raw layout: the channels of the last axis holding the box and the scores,
            as (start, stop).
        box_format: "cxcywh", "xyxy" or "yxyx".
        score_threshold, iou_threshold: detect: a detection counts when its score ≥ score_threshold; a quantized and a
            float detection match when they have the same class and IoU ≥ iou_threshold.
        top_k: classify's k.
        class_axis: segment: the per-sample axis of the class scores (0 for (C, H, W), 2 or -1 for (H, W, C)).
        metric: a user function `(float_outputs, quant_outputs) -> dict[str, float]` (task "custom"), averaged over
            batches weighted by their sizes.
    """

    class_output: int | None = None
    layout: str | None = None
    box_slice: tuple[int, int] | None = None
    score_slice: tuple[int, int] | None = None
    box_format: str | None = None
    score_threshold: float = 0.25
    iou_threshold: float = 0.5
    top_k: int = 3
    class_axis: int | None = None
    metric: Callable[[list[np.ndarray], list[np.ndarray]], dict[str, float]] | None = None


@dataclass(frozen=True)
class Task:
    """A registered task: its name, headline, the metrics a repair budget may use, and how to build its accumulator.

    `applies(outputs)` says whether `--task auto` may pick it for a model with these outputs (per-sample shapes);
    `build(outputs, options)` returns a fresh accumulator, or raises `UserInputError` naming what to pass when the
    outputs do not fit the task.
    """

    name: str
    summary: str
    headline: str
    budget_metrics: tuple[str, ...]
    needs_labels: tuple[str, ...]  # budget metrics that need labels
    applies: Callable[[Sequence[TensorSpec]], bool]
    build: Callable[[Sequence[TensorSpec], TaskOptions], TaskAccumulator]


TASKS: Registry[Task] = Registry("task")
