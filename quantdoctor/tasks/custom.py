"""Task `custom` (Python API only): the user's own metric function, averaged over the stream."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from quantdoctor.backends.base import TensorSpec
from quantdoctor.errors import UserInputError
from quantdoctor.tasks.base import TASKS, Task, TaskOptions, TaskResult
from quantdoctor.tasks.outputs import OutputsAccumulator, batch_size, check_output_count


class CustomAccumulator:
    """Calls `options.metric(float_outputs, quant_outputs) -> dict[str, float]` on every batch and averages each
    value over batches weighted by their sizes; the headline is the first key the function returns.

    The function should score the float model 1.0 against itself for its headline to read like the other tasks'.
    """

    def __init__(self, outputs: Sequence[TensorSpec], options: TaskOptions,
                 scales: Sequence[float | None] | None = None) -> None:
        if options.metric is None:
            raise UserInputError("task custom needs a metric: pass TaskOptions(metric=fn) with "
                                 "fn(float_outputs, quant_outputs) -> dict[str, float]")
        self.specs, self.options, self.scales = tuple(outputs), options, scales
        self.outputs = OutputsAccumulator(self.specs, scales)
        self.sums: dict[str, float] = {}  # key order = the function's first answer
        self.num_samples = 0

    def update(self, float_outputs: Sequence[np.ndarray], quant_outputs: Sequence[np.ndarray],
               labels: np.ndarray | None = None) -> None:
        check_output_count(float_outputs, quant_outputs, len(self.specs))
        self.outputs.update(float_outputs, quant_outputs)
        n = batch_size(float_outputs)
        if n == 0:
            return
        values = self.options.metric(list(float_outputs), list(quant_outputs))
        self._add(_check_values(values, self.options.metric), n)

    def _add(self, values: dict[str, float], weight: int) -> None:
        if self.sums and list(values) != list(self.sums):
            raise UserInputError(f"the custom metric returned keys {list(values)} after {list(self.sums)}; "
                                 "return the same keys for every batch")
        self.sums = {k: self.sums.get(k, 0.0) + weight * v for k, v in values.items()}
        self.num_samples += weight

    def merge(self, other: CustomAccumulator) -> CustomAccumulator:
        merged = CustomAccumulator(self.specs, self.options, self.scales)
        merged.outputs = self.outputs.merge(other.outputs)
        if self.sums and other.sums and list(self.sums) != list(other.sums):
            raise UserInputError(f"cannot merge custom metrics with keys {list(self.sums)} and {list(other.sums)}")
        merged.sums = {k: self.sums.get(k, 0.0) + other.sums.get(k, 0.0) for k in (self.sums or other.sums)}
        merged.num_samples = self.num_samples + other.num_samples
        return merged

    def result(self) -> TaskResult:
        if not self.sums:
            raise UserInputError("the custom metric saw no sample; pass a data set with at least one sample")
        metrics = {k: v / self.num_samples for k, v in self.sums.items()}
        return TaskResult(task="custom", headline=next(iter(metrics)), metrics=metrics,
                          outputs=self.outputs.result(), num_samples=self.num_samples)


def _check_values(values: object, fn: object) -> dict[str, float]:
    name = getattr(fn, "__name__", "the custom metric")
    if not isinstance(values, dict) or not values:
        raise UserInputError(f"{name} returned {type(values).__name__}; it must return a non-empty dict of "
                             "metric name -> float")
    checked = {}
    for key, value in values.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not isinstance(key, str) or not math.isfinite(number):
            raise UserInputError(f"{name} returned {key!r}: {value!r}; it must return str keys and finite numbers")
        checked[key] = number
    return checked


def build(outputs: Sequence[TensorSpec], options: TaskOptions,
          scales: Sequence[float | None] | None = None) -> CustomAccumulator:
    return CustomAccumulator(outputs, options, scales)


TASKS.add("custom", Task(
    name="custom",
    summary="your function (float_outputs, quant_outputs) -> dict[str, float], averaged over samples (API only)",
    headline="the first key the metric returns",
    budget_metrics=(),
    needs_labels=(),
    applies=lambda outputs: False,
    build=build,
))
