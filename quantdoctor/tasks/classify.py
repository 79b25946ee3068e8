"""Task `classify`: top-1 / top-k agreement of the quantized class scores with the float ones (and accuracy)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from quantdoctor.backends.base import TensorSpec
from quantdoctor.errors import UserInputError
from quantdoctor.stats.classification import ClassificationAccumulator, ModelMetrics
from quantdoctor.tasks.base import TASKS, Task, TaskOptions, TaskResult
from quantdoctor.tasks.outputs import OutputsAccumulator, check_output_count


def is_class_scores(spec: TensorSpec) -> bool:
    """One vector of at least two scores per sample."""
    return len(spec.shape) == 1 and spec.shape[0] is not None and spec.shape[0] >= 2


def find_class_output(outputs: Sequence[TensorSpec], options: TaskOptions) -> int:
    """The output holding the class scores: `options.class_output`, else the first (C,) output with C ≥ 2.

    Raises:
        UserInputError: the chosen output does not exist or is not a vector of scores, or none is.
    """
    if options.class_output is not None:
        i = options.class_output
        if not 0 <= i < len(outputs):
            raise UserInputError(f"--class-output {i} does not exist: the model has {len(outputs)} outputs (0.."
                                 f"{len(outputs) - 1})")
        if not is_class_scores(outputs[i]):
            raise UserInputError(f"output {i} ({outputs[i].name}) has shape {tuple(outputs[i].shape)} per sample, "
                                 "not a vector of class scores; pass --class-output with a (C,) output or another "
                                 "--task")
        return i
    for i, spec in enumerate(outputs):
        if is_class_scores(spec):
            return i
    shapes = ", ".join(str(tuple(s.shape)) for s in outputs)
    raise UserInputError(f"no output is a vector of class scores (outputs per sample: {shapes}); "
                         "pass --task detect|segment|regress")


class ClassifyAccumulator:
    """Streams `ModelMetrics` of the class output and the error of every output."""

    def __init__(self, outputs: Sequence[TensorSpec], options: TaskOptions,
                 scales: Sequence[float | None] | None = None) -> None:
        self.specs, self.options, self.scales = tuple(outputs), options, scales
        self.index = find_class_output(self.specs, options)
        self.classes = ClassificationAccumulator(int(self.specs[self.index].shape[0]), options.top_k)
        roles = ["class scores" if i == self.index else "values" for i in range(len(self.specs))]
        self.outputs = OutputsAccumulator(self.specs, scales, roles=roles)

    def update(self, float_outputs: Sequence[np.ndarray], quant_outputs: Sequence[np.ndarray],
               labels: np.ndarray | None = None) -> None:
        check_output_count(float_outputs, quant_outputs, len(self.specs))
        self.classes.update(float_outputs[self.index], quant_outputs[self.index], labels)
        self.outputs.update(float_outputs, quant_outputs)

    def merge(self, other: ClassifyAccumulator) -> ClassifyAccumulator:
        merged = ClassifyAccumulator(self.specs, self.options, self.scales)
        merged.classes = self.classes.merge(other.classes)
        merged.outputs = self.outputs.merge(other.outputs)
        return merged

    def result(self) -> TaskResult:
        m = self.classes.result()
        labelled = m.num_labelled > 0
        metrics = {
            "agreement": m.top1_agreement,
            "topk_agreement": m.topk_agreement,
            "top1": _or_nan(m.quant_top1),
            "topk": _or_nan(m.quant_topk),
            "kl_mean": m.kl_mean,
            "logit_sqnr_db": m.logit_sqnr_db,
        }
        # Without labels the float accuracy is unknown, not 1.0: record nan so `pair("top1")` says so.
        float_values = {"top1": _or_nan(m.float_top1), "topk": _or_nan(m.float_topk)} if labelled else \
            {"top1": math.nan, "topk": math.nan}
        return TaskResult(task="classify", headline="agreement", metrics=metrics, outputs=self.outputs.result(),
                          num_samples=m.num_samples, float_values=float_values,
                          details={"classification": m.to_dict()})


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def classification_metrics(result: TaskResult) -> ModelMetrics | None:
    """The classifier's `ModelMetrics` carried by a classify result; None for other tasks."""
    data = result.details.get("classification")
    return ModelMetrics.from_dict(data) if data is not None else None


def build(outputs: Sequence[TensorSpec], options: TaskOptions,
          scales: Sequence[float | None] | None = None) -> ClassifyAccumulator:
    return ClassifyAccumulator(outputs, options, scales)


def applies(outputs: Sequence[TensorSpec]) -> bool:
    """All outputs of rank ≤ 1 per sample, one of them a vector of ≥ 2 scores."""
    return all(len(s.shape) <= 1 for s in outputs) and any(is_class_scores(s) for s in outputs)


TASKS.add("classify", Task(
    name="classify",
    summary="class scores: top-1/top-k agreement with the float model, accuracy with labels",
    headline="agreement",
    budget_metrics=("agreement", "top1", "topk"),
    needs_labels=("top1", "topk"),
    applies=applies,
    build=build,
))
