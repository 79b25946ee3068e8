"""One self-contained HTML file for a `RepairResult`: outcome, changes, what could not be expressed, the trajectory
table and its figures (inline CSS and SVG, nothing fetched from anywhere, every name from the model escaped)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from quantdoctor.repair.result import RepairResult, TrajectoryRow
from quantdoctor.report.sentences import DASH

TRAJECTORY_COLUMNS = ("step", "change", "metric", "drop (points)", "size (bytes)", "float ops", "ms / sample",
                      "evaluations", "seconds", "measured on")
"""One column per `TrajectoryRow` field, in field order (`full` is shown as the set the step was measured on)."""
_TEXT_COLUMNS = {"change", "measured on"}


def render_repair_html(result: RepairResult) -> str:
    """The repair report as one HTML document (jinja2, autoescaped: op names are text, never markup)."""
    from markupsafe import Markup

    from quantdoctor.report.html import _environment
    from quantdoctor.report.repair_plots import latency_caption, latency_svg, tradeoff_caption, tradeoff_svg

    figures = []
    if result.trajectory:
        # matplotlib writes the SVGs and escapes their text itself; they hold no script and no external reference.
        figures = [
            ("tradeoff", "Drop against model size and ops in float", Markup(tradeoff_svg(result)),
             tradeoff_caption(result)),
            ("latency", "Measured latency per step", Markup(latency_svg(result)), latency_caption(result)),
        ]
    final_index = len(result.trajectory) - 1
    return _environment().get_template("repair.html.j2").render(
        r=result,
        title=result.float_model or "repair",
        outcome=outcome_sentence(result),
        header_rows=header_rows(result),
        changes=[change_view(a) for a in result.actions],
        skipped=skipped_groups(result.skipped),
        columns=TRAJECTORY_COLUMNS,
        text_columns=_TEXT_COLUMNS,
        rows=[(_row_class(row, i == final_index, result.max_drop), trajectory_cells(row))
              for i, row in enumerate(result.trajectory)],
        no_trajectory=("The baseline already meets the budget, so nothing was searched or changed."
                       if result.budget_met else "The search recorded no steps."),
        figures=figures,
    )


def outcome_sentence(r: RepairResult) -> str:
    """The outcome in words, budget met or NOT met, with the numbers behind it."""
    drop = final_drop(r)
    drop_text = f" (drop {drop:.2f} points)" if drop is not None else ""
    verdict = "Budget met" if r.budget_met else "Budget NOT met"
    what = (f"{len(r.actions)} change{'s' if len(r.actions) != 1 else ''} to {r.changed_ops} "
            f"op{'s' if r.changed_ops != 1 else ''}" if r.actions else "no change")
    tail = "" if r.budget_met else "; the best model found is written anyway"
    return (f"{verdict}: {r.metric} {r.baseline_metric:.4f} → {r.final_metric:.4f}{drop_text}, at most "
            f"{r.max_drop:g} point{'s' if r.max_drop != 1 else ''} below float allowed, with {what}{tail}.")


def final_drop(r: RepairResult) -> float | None:
    """Points below float of the model written: exact for agreement, else the last full-set step of the trajectory."""
    if r.metric == "agreement":
        return 100.0 * (1.0 - r.final_metric)
    full = [row for row in r.trajectory if row.full]
    return full[-1].drop if full else None


def header_rows(r: RepairResult) -> list[tuple[str, str]]:
    met = "met" if r.budget_met else "NOT met"
    return [
        ("float model", r.float_model or DASH),
        ("scheme", r.scheme),
        ("quantizer", r.backend),
        ("metric", _metric_summary(r.metric)),
        ("budget", f"at most {r.max_drop:g} point{'s' if r.max_drop != 1 else ''} below the float model: {met}"),
        ("baseline → final", f"{r.baseline_metric:.4f} → {r.final_metric:.4f} (full evaluation set)"),
        ("changes", f"{len(r.actions)} action(s), {r.changed_ops} op(s) changed"),
        ("repaired model", f"{len(r.model):,} bytes" if r.model else DASH),
        ("cost", f"{r.evaluations} quantized evaluations, {r.seconds:.1f} s"),
    ]


def _metric_summary(name: str) -> str:
    from quantdoctor.repair.evaluate import METRICS

    return f"{name}: {METRICS.get(name).summary}" if name in METRICS else name


def change_view(action: Any) -> dict[str, Any]:
    """One change as the template shows it: its sentence, its kind, and the ops it touches (short and full names)."""
    from quantdoctor.repair.actions import short_name

    targets = action.targets()
    op_type = getattr(action, "op_type", None)
    if targets:
        ops = [(short_name(t), t) for t in targets]
    else:
        ops = [(f"every {op_type}" if op_type else DASH, "")]
    return {"describe": action.describe(), "kind": action.kind, "ops": ops}


def skipped_groups(skipped: tuple[str, ...]) -> list[tuple[str, list[str]]]:
    """`skipped` ("<action>: <reason>") grouped by reason, largest group first.

    The reason follows the last ": " (an action's sentence may hold one, "kernel workaround: ...", its reason not).
    """
    groups: dict[str, list[str]] = defaultdict(list)
    for entry in skipped:
        action, sep, reason = entry.rpartition(": ")
        groups[reason if sep else "no reason given"].append(action if sep else entry)
    return sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0]))


def trajectory_cells(row: TrajectoryRow) -> list[str]:
    """The row as text, one cell per `TRAJECTORY_COLUMNS` entry."""
    return [
        str(row.step), row.change, f"{row.metric:.4f}", f"{row.drop:.2f}", f"{row.size_bytes:,}", str(row.float_ops),
        f"{row.latency_ms:.2f}", str(row.evaluations), f"{row.seconds:.1f}",
        "full set" if row.full else "ranking subset",
    ]


def _row_class(row: TrajectoryRow, final: bool, max_drop: float) -> str:
    classes = ["within" if row.drop <= max_drop + 1e-9 else "over"]
    if final:
        classes.append("final")
    return " ".join(classes)
