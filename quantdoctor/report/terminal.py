"""Terminal view of a `Diagnosis`: header, model (or task) metrics, outputs, error onset, worst layers, coverage."""

from __future__ import annotations

import io

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from quantdoctor.diagnose.results import Diagnosis
from quantdoctor.report import sentences as s

TEXT_WORST_COLUMNS = {"Layer", "Op", "Weights", "Act"}
TEXT_MIN_WIDTH = {"Layer": 12, "Op": 8, "Weights": 11, "Act": 5}

COMPACT_BELOW = 100
"""Narrower consoles get the compact worst-layers table: one space between columns and no cosine column."""


def render(diagnosis: Diagnosis, console: Console, worst: int = 10) -> None:
    """Print the diagnosis to `console`."""
    console.print(renderable(diagnosis, worst=worst, compact=console.width < COMPACT_BELOW))


def render_text(diagnosis: Diagnosis, width: int = 100) -> str:
    """The terminal view as plain text (no colour), `width` columns wide."""
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, record=False, legacy_windows=False)
    render(diagnosis, console)
    # Rich pads every table cell to the column width; plain text reads (and diffs) better without trailing blanks.
    return "\n".join(line.rstrip() for line in buf.getvalue().splitlines()) + "\n"


def renderable(diagnosis: Diagnosis, worst: int = 10, compact: bool = False) -> RenderableType:
    """All sections, in reading order, as one rich renderable."""
    return Group(
        header(diagnosis),
        Text(""),
        metrics(diagnosis),
        *_section(outputs(diagnosis)),
        Text(""),
        onset(diagnosis),
        Text(""),
        findings(diagnosis),
        Text(""),
        sensitivity(diagnosis),
        Text(""),
        worst_layers(diagnosis, worst, compact),
        Text(""),
        coverage(diagnosis),
    )


def header(d: Diagnosis) -> Table:
    table = _key_value_table("quantdoctor diagnosis")
    for key, value in s.header_rows(d.run):
        table.add_row(key, value)
    return table


def metrics(d: Diagnosis) -> RenderableType:
    """The classifier metrics; for any other task (no `model`), the task's headline and metrics."""
    if d.model is None:
        return task_metrics(d)
    table = _key_value_table("Model metrics")
    for key, value in s.metric_rows(d.model):
        table.add_row(key, value)
    lines = s.worst_class_lines(d.model)
    if lines:
        table.add_row("Worst classes", "\n".join(lines))
    return table


def task_metrics(d: Diagnosis) -> RenderableType:
    """The task's headline sentence and every metric (float value where the float model has its own)."""
    from quantdoctor.report import outputs_text as ot

    task = d.task
    if task is None:
        return Text("Model metrics: none measured (no task result).")
    # Titles as text above the tables: rich would wrap a table's title to the (narrow) table's width.
    table = _table()
    for name in ot.TASK_METRIC_COLUMNS:
        table.add_column(name, justify="left" if name == "Metric" else "right", overflow="fold")
    for row in ot.task_metric_rows(task):
        table.add_row(*row)
    return Group(Text(ot.task_line(task), style="bold"), Text(ot.headline_sentence(task)), table)


def outputs(d: Diagnosis) -> RenderableType | None:
    """Every output measured on its own, its channel groups, and a sentence where one group collapses."""
    from quantdoctor.report import outputs_text as ot

    task = d.task
    if task is None or not task.outputs:
        return None
    table = _table()
    for name in ot.OUTPUT_COLUMNS:
        table.add_column(name, justify="left" if name in ("Output", "Role", "Shape") else "right", overflow="fold")
    for o in task.outputs:
        table.add_row(*ot.output_row(o))
    parts: list[RenderableType] = [
        Text("Outputs (SQNR in dB; errors against the float output over all samples)", style="bold"), table]
    groups = ot.group_rows(task)
    if groups:
        gt = _table()
        for name in ot.GROUP_COLUMNS:
            gt.add_column(name, justify="left" if name in ("Output", "Group") else "right", overflow="fold")
        for row in groups:
            gt.add_row(*row)
        parts += [Text(""), Text("Channel groups (levels: steps of the output's grid the float range spans)",
                                 style="bold"), gt]
    sentences = ot.group_sentences(task)
    if sentences:
        parts += [Text(""), *(Text(sentence) for sentence in sentences)]
    return Group(*parts)


def onset(d: Diagnosis) -> Text:
    text = Text(s.onset_sentence(d), style="bold")
    if d.onset is not None and d.onset.rule:
        text.append(f"\nRule: {d.onset.rule}", style="dim")
    return text


SEVERITY_STYLE = {"critical": "bold red", "warning": "yellow", "info": "dim"}


def findings(d: Diagnosis, n: int = 5) -> Text:
    """The ranked findings as numbered sentences, then the output margins."""
    from quantdoctor.report import findings_text as ft

    text = Text("Findings", style="bold")
    lines = ft.findings_lines(d, n)
    if not lines:
        text.append("\n" + ft.no_findings_sentence(d))
    for i, (severity, title, sentence) in enumerate(lines, 1):
        text.append(f"\n{i}. ")
        text.append(f"[{severity}] {title}", style=SEVERITY_STYLE.get(severity, ""))
        text.append(f": {sentence}")
    if len(d.findings) > n:
        text.append(f"\n... {len(d.findings) - n} more in the JSON/HTML report.", style="dim")
    verification = ft.verification_sentence(d)
    if verification:
        text.append("\n" + verification)
    if d.margins is not None:
        text.append("\n" + ft.margins_sentence(d.margins), style="dim")
    return text


def sensitivity(d: Diagnosis) -> RenderableType:
    """The sensitivity table: each measured op exact (the rest quantized) and alone quantized (the rest exact)."""
    v = d.verification
    if v is None or not v.table:
        return Text("")
    from quantdoctor.report.outputs_text import outcome_metric

    table = Table(title=f"Sensitivity ({outcome_metric(v.baseline)} at the output, {v.samples} samples; quantized "
                        f"{v.baseline.top1_agreement:.2f})", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False, show_edge=False)
    for name in s.SENSITIVITY_COLUMNS:
        table.add_column(name, justify="left" if name in ("Layer", "Op") else "right", overflow="fold")
    for row in v.table:
        table.add_row(*s.sensitivity_row(row))
    return table


def worst_layers(d: Diagnosis, n: int = 10, compact: bool = False) -> Table:
    # The box's column separator is a space: with one more of left padding, columns sit two spaces apart
    # (one when compact).
    table = Table(title=s.worst_title(n), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False,
                  padding=(0, 0, 0, 0 if compact else 1))
    # Cosine says little that SQNR does not; it is the column to give up when 80 columns must hold the rest.
    keep = [i for i, name in enumerate(s.WORST_COLUMNS) if not (compact and name == "Cosine")]
    for i in keep:
        name = s.WORST_COLUMNS[i]
        text = name in TEXT_WORST_COLUMNS
        # Numbers never wrap; on a narrow terminal the text columns wrap instead.
        table.add_column(name.replace("/", "/\n"), justify="left" if text else "right", no_wrap=not text,
                         overflow="fold", min_width=TEXT_MIN_WIDTH.get(name))
    for layer in d.worst_layers(n):
        row = s.worst_layer_row(layer)
        table.add_row(*(row[i] for i in keep))
    return table


def coverage(d: Diagnosis) -> Text:
    return Text(f"{s.coverage_sentence(d)}\n{s.unmatched_sentence(d)}")


def _table() -> Table:
    return Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)


def _section(part: RenderableType | None) -> tuple[RenderableType, ...]:
    """A blank line and the section, or nothing for a section without data (old reports keep their layout)."""
    return () if part is None else (Text(""), part)


def _key_value_table(title: str) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    return table
