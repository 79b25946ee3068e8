"""Tasks: how a model's outputs are judged (see `base.py`); importing this package registers every task.

`resolve_task` turns `--task NAME` (or `auto`) and the model's outputs into a `Task`; `build_accumulator` makes its
streaming accumulator.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

from quantdoctor.backends.base import TensorSpec
from quantdoctor.errors import UserInputError
from quantdoctor.tasks import classify, custom, detect, regress, segment  # noqa: F401  (they register themselves)
from quantdoctor.tasks.base import TASKS, Task, TaskAccumulator, TaskOptions, TaskResult
from quantdoctor.tasks.classify import classification_metrics

AUTO_ORDER = ("detect", "segment", "classify")  # the first whose `applies` accepts the outputs wins

__all__ = ["TASKS", "Task", "TaskAccumulator", "TaskOptions", "TaskResult", "build_accumulator",
           "classification_metrics", "resolve_task"]


def resolve_task(name: str, outputs: Sequence[TensorSpec], options: TaskOptions) -> Task:
    """The task `name` names, or for "auto" the one the outputs show, checked against the outputs.

    Auto rules, in order: the 4 outputs of TFLite's detection post-process → detect; any (H, W, C) / (C, H, W)
    output → segment; all outputs of rank ≤ 1 per sample, one a vector of ≥ 2 scores → classify.

    Raises:
        UnknownNameError: no task has that name.
        UserInputError: auto finds no rule that fits, or the named task does not fit the outputs (the message says
            what to pass).
    """
    if name == "auto":
        task = next((TASKS.get(n) for n in AUTO_ORDER if TASKS.get(n).applies(outputs)), None)
        if task is None:
            shapes = ", ".join(f"{s.name} {tuple(s.shape)}" for s in outputs) or "none"
            raise UserInputError(f"cannot tell the task from the outputs ({shapes} per sample); pass --task "
                                 "detect|segment|classify|regress (a raw (anchors, 4+classes) detection head "
                                 "looks like any other matrix)")
    else:
        task = TASKS.get(name)
    task.build(outputs, options)  # raises UserInputError, naming what to pass, when the outputs do not fit
    return task


def build_accumulator(task: Task, outputs: Sequence[TensorSpec], options: TaskOptions,
                      scales: Sequence[float | None] | None = None) -> TaskAccumulator:
    """A fresh accumulator of `task`; `scales` (each output's quantization scale, None if float) give the channel
    groups their grid levels. The built-in tasks' `build` take `scales` as a keyword; a task that does not is built
    without them."""
    if scales is None or "scales" not in inspect.signature(task.build).parameters:
        return task.build(outputs, options)
    return task.build(outputs, options, scales=scales)  # type: ignore[call-arg]
