"""The task and its outputs in words and table rows (`Diagnosis.task`), shared by the terminal and HTML views.

A detector, segmenter or regressor has no classifier metrics (`Diagnosis.model is None`): its headline comes from the
task. Every output, whatever the task, is measured on its own, and so is each channel group of an output that packs
several quantities on one grid (YOLO's boxes and class scores in one tensor).
"""

from __future__ import annotations

import math

from quantdoctor.report.sentences import DASH, fmt_db, fmt_num, fmt_ratio
from quantdoctor.tasks.base import ChannelGroup, OutputMetrics, TaskResult

KEEP_DB = 20.0
"""A channel group at or above this SQNR keeps its signal..."""
COLLAPSE_DB = 10.0
"""...one below this has collapsed (the noise is within 10 dB of the signal)."""

TASK_NOUNS = {
    "classify": "classification", "detect": "detection", "segment": "segmentation", "regress": "regression",
    "custom": "custom metric",
}
_WORDS = {
    "f1": "F1", "iou": "IoU", "miou": "mIoU", "map": "mAP", "ap": "AP", "top1": "top-1", "topk": "top-k",
    "sqnr": "SQNR", "db": "dB", "mae": "MAE", "rmse": "RMSE", "mse": "MSE", "kl": "KL", "px": "px",
}
_COUNTS = {2: "two", 3: "three", 4: "four", 5: "five"}

OUTPUT_COLUMNS = ("#", "Output", "Role", "Shape", "SQNR", "Rel err", "Max err")
GROUP_COLUMNS = ("Output", "Group", "Channels", "Float range", "Levels", "SQNR")
TASK_METRIC_COLUMNS = ("Metric", "Quantized", "Float")


def metric_title(name: str) -> str:
    """A metric key as words: "f1" -> "F1", "mean_iou" -> "mean IoU", "top1_agreement" -> "top-1 agreement"."""
    return " ".join(_WORDS.get(w.lower(), w) for w in name.split("_") if w)


def outcome_metric(outcome) -> str:
    """What a counterfactual's `top1_agreement` holds, in words: a classifier's top-1 agreement, else the task's
    headline ("F1", "mIoU"); the words the verification sentences use."""
    name = getattr(outcome, "metric", "agreement")
    return "top-1 agreement" if name == "agreement" else metric_title(name)


def fmt_metric(name: str, v: float | None) -> str:
    """A metric value: dB with one decimal, anything else with three (so a column of them lines up), large values in
    three significant digits."""
    if name.endswith("_db"):
        return fmt_db(v)
    if v is not None and math.isfinite(v) and abs(v) < 1000:
        return fmt_ratio(v)
    return fmt_num(v)


def companions(task: TaskResult) -> list[str]:
    """The metrics the headline is made of, quoted next to it: precision and recall beside an F1."""
    h = task.headline
    if "f1" not in h.split("_"):
        return []
    parts = ["_".join("precision" if w == "f1" else w for w in h.split("_")),
             "_".join("recall" if w == "f1" else w for w in h.split("_"))]
    return [p for p in parts if p in task.metrics]


def headline_sentence(task: TaskResult) -> str:
    """The task's headline, e.g. "detection F1 vs float 0.12 (precision 0.50, recall 0.07), 1.00 for the float model".

    "vs float" when the metric compares with the float model's outputs (1.0 for the float model by definition); without
    it when the float model has a value of its own (accuracy against labels).
    """
    name = task.headline
    noun = TASK_NOUNS.get(task.task, task.task)
    against = "" if name in task.float_values else " vs float"
    f, q = task.pair()
    text = f"{noun} {metric_title(name)}{against} {_two(q)}"
    parts = [f"{metric_title(c)} {_two(task.metrics[c])}" for c in companions(task)]
    if parts:
        text += f" ({', '.join(parts)})"
    return f"{text}, {_two(f)} for the float model"


def task_line(task: TaskResult) -> str:
    """Which task judged the outputs, on how many samples."""
    return f"Task: {task.task} ({task.num_samples} samples; headline {metric_title(task.headline)})"


def task_metric_rows(task: TaskResult) -> list[tuple[str, str, str]]:
    """(metric, quantized, float) for every task metric; the float column only where the float model has a value."""
    return [(metric_title(k), fmt_metric(k, v), fmt_metric(k, task.float_values[k]) if k in task.float_values
             else DASH) for k, v in task.metrics.items()]


def output_row(o: OutputMetrics) -> tuple[str, ...]:
    """One row of the outputs table, matching `OUTPUT_COLUMNS`."""
    return (str(o.index), o.name, o.role, "x".join(str(n) for n in o.shape) or "scalar", fmt_db(o.sqnr_db),
            fmt_num(o.relative_error), fmt_num(o.max_abs_error))


def group_rows(task: TaskResult) -> list[tuple[str, ...]]:
    """One row per channel group of every output, matching `GROUP_COLUMNS`."""
    return [(o.name, g.name, f"[{g.start}:{g.stop}]", f"{sig3(g.float_min)}..{sig3(g.float_max)}",
             DASH if g.levels is None else fmt_levels(g.levels), fmt_db(g.sqnr_db))
            for o in task.outputs for g in o.groups]


def group_label(g: ChannelGroup) -> str:
    """The group's name with its channel range ("box [0:4]"), the range added when the name lacks it."""
    return g.name if "[" in g.name else f"{g.name} [{g.start}:{g.stop}]"


def group_sentence(o: OutputMetrics) -> str:
    """When one channel group keeps its signal and another collapses, say so with both groups' numbers ("" if not).

    e.g. "output 'Identity' mixes two quantities: box [0:4] keeps 38.1 dB (spans 0..63.8, 121 levels), scores [4:14]
    collapses to 2.1 dB (spans 0..1.00, 2 levels)".
    """
    measured = [g for g in o.groups if not math.isnan(g.sqnr_db)]
    if len(measured) < 2:
        return ""
    best = max(measured, key=lambda g: g.sqnr_db)
    worst = min(measured, key=lambda g: g.sqnr_db)
    if best.sqnr_db < KEEP_DB or worst.sqnr_db >= COLLAPSE_DB:
        return ""
    n = len(o.groups)
    text = (f"output '{o.name}' mixes {_COUNTS.get(n, str(n))} quantities: {group_label(best)} keeps "
            f"{fmt_db(best.sqnr_db)} dB ({_span(best)}), {group_label(worst)} collapses to {fmt_db(worst.sqnr_db)} dB "
            f"({_span(worst)})")
    if best.levels is not None and worst.levels is not None and worst.levels < best.levels:
        text += "; both share one grid, whose step the wider range sets"
    return text + "."


def group_sentences(task: TaskResult) -> list[str]:
    return [t for t in (group_sentence(o) for o in task.outputs) if t]


def sig3(v: float) -> str:
    """Three significant digits, trailing zeros kept ("1.00", "63.8", "121"); 0 is "0"."""
    if v == 0:
        return "0"
    if not math.isfinite(v):
        return fmt_num(v)
    text = format(v, "#.3g")
    return text if "e" in text else text.rstrip(".")


def fmt_levels(levels: float) -> str:
    """Levels of the grid a range spans: whole numbers from 10 up or when (nearly) whole, else one decimal."""
    if not math.isfinite(levels):
        return fmt_num(levels)
    return str(round(levels)) if levels >= 10 or abs(levels - round(levels)) < 0.05 else f"{levels:.1f}"


def _span(g: ChannelGroup) -> str:
    text = f"spans {sig3(g.float_min)}..{sig3(g.float_max)}"
    if g.levels is not None:
        n = fmt_levels(g.levels)
        text += f", {n} level{'' if n == '1' else 's'}"
    return text


def _two(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:.2f}"
