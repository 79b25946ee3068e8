"""Task `regress`: how far the quantized values are from the float values, per output and per output channel."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from quantdoctor.backends.base import TensorSpec
from quantdoctor.stats.metrics import relative_rmse_from_sums, sqnr_from_sums
from quantdoctor.tasks.base import TASKS, Task, TaskOptions, TaskResult
from quantdoctor.tasks.outputs import OutputsAccumulator, batch_size, check_output_count

MAX_LISTED_CHANNELS = 256  # per output in details["channels"]; wider outputs are summarised by their groups only


def fidelity(relative_errors: Sequence[float]) -> float:
    """Regression fidelity: max(0, 1 − mean_o ‖q_o − f_o‖₂ / ‖f_o‖₂) over the outputs o.

    1.0 when the quantized outputs equal the float ones, 0.0 once the mean relative L2 error reaches 100%; nan when
    an error is nan or there is no output. An output whose float values are all zero has relative error 0 without
    error and +inf with error (fidelity 0), as in `relative_rmse`.
    """
    if not relative_errors:
        return math.nan
    mean = sum(relative_errors) / len(relative_errors)
    return math.nan if math.isnan(mean) else max(0.0, 1.0 - mean)


class RegressAccumulator:
    """Streams the error of every output and of each of its channels."""

    def __init__(self, outputs: Sequence[TensorSpec], options: TaskOptions,
                 scales: Sequence[float | None] | None = None) -> None:
        self.specs, self.options, self.scales = tuple(outputs), options, scales
        self.outputs = OutputsAccumulator(self.specs, scales)
        self.num_samples = 0

    def update(self, float_outputs: Sequence[np.ndarray], quant_outputs: Sequence[np.ndarray],
               labels: np.ndarray | None = None) -> None:
        check_output_count(float_outputs, quant_outputs, len(self.specs))
        self.outputs.update(float_outputs, quant_outputs)
        self.num_samples += batch_size(float_outputs)

    def merge(self, other: RegressAccumulator) -> RegressAccumulator:
        merged = RegressAccumulator(self.specs, self.options, self.scales)
        merged.outputs = self.outputs.merge(other.outputs)
        merged.num_samples = self.num_samples + other.num_samples
        return merged

    def result(self) -> TaskResult:
        """Metrics: `fidelity` (headline), `relative_error` (mean over outputs), `sqnr_db` (the worst output's),
        `max_abs_error` (over all outputs, in the outputs' units)."""
        outputs = self.outputs.result()
        relative = [o.relative_error for o in outputs]
        sqnrs = [o.sqnr_db for o in outputs]
        metrics = {
            "fidelity": fidelity(relative),
            "relative_error": sum(relative) / len(relative) if relative else math.nan,
            "sqnr_db": math.nan if not sqnrs or any(math.isnan(s) for s in sqnrs) else min(sqnrs),
            "max_abs_error": float(np.max([o.max_abs_error for o in outputs])) if outputs else math.nan,
        }
        return TaskResult(task="regress", headline="fidelity", metrics=metrics, outputs=outputs,
                          num_samples=self.num_samples, details={"channels": self._channels()})

    def _channels(self) -> dict[str, list[dict[str, float]]]:
        """Per output index (as a string, for JSON): each channel's relative error, SQNR and max error."""
        table: dict[str, list[dict[str, float]]] = {}
        for i, err in enumerate(self.outputs.channel_errors()):
            if err is None or err.count == 0 or err.num_channels > MAX_LISTED_CHANNELS:
                continue
            table[str(i)] = [
                {"channel": c,
                 "relative_error": relative_rmse_from_sums(err.sum_ref_sq[c], err.sum_err_sq[c]),
                 "sqnr_db": sqnr_from_sums(err.sum_ref_sq[c], err.sum_err_sq[c]),
                 "max_abs_error": err.max_abs_error[c]}
                for c in range(err.num_channels)
            ]
        return table


def build(outputs: Sequence[TensorSpec], options: TaskOptions,
          scales: Sequence[float | None] | None = None) -> RegressAccumulator:
    return RegressAccumulator(outputs, options, scales)


TASKS.add("regress", Task(
    name="regress",
    summary="values (landmarks, depth, embeddings, ...): relative error, SQNR and max error per output and channel",
    headline="fidelity",
    budget_metrics=("fidelity",),
    needs_labels=(),
    applies=lambda outputs: False,  # any tensor is values; auto never guesses it
    build=build,
))
