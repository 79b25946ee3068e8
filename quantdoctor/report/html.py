"""One self-contained HTML file for a `Diagnosis`: inline CSS and SVG, nothing fetched from anywhere."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from quantdoctor.diagnose.results import Diagnosis
from quantdoctor.report import sentences as s
from quantdoctor.report.frame import COLUMNS, layer_row

_DB_COLUMNS = {"sqnr_db", "input_sqnr_db", "sqnr_drop_db", "isolated_sqnr_db"}
_RATIO_COLUMNS = {"cosine"}
_GENERAL_COLUMNS = {"relative_rmse", "max_abs_error", "rmse_over_scale", "noise_added", "act_scale"}


def render_html(diagnosis: Diagnosis) -> str:
    """The full report as one HTML document (jinja2, autoescaped: every name from the model is text, never markup)."""
    from markupsafe import Markup

    from quantdoctor.report import findings_text as ft
    from quantdoctor.report.figures import report_figures
    from quantdoctor.report.plots import error_by_depth_svg, excess_caption
    from quantdoctor.report.outputs_text import outcome_metric
    from quantdoctor.report.task_figures import task_figures

    template = _environment().get_template("report.html.j2")
    return template.render(
        d=diagnosis,
        findings=[_finding_view(f, diagnosis) for f in diagnosis.findings],
        no_findings=ft.no_findings_sentence(diagnosis),
        verification_sentence=ft.verification_sentence(diagnosis),
        verification_metric=outcome_metric(diagnosis.verification.baseline) if diagnosis.verification else "",
        sensitivity_columns=s.SENSITIVITY_COLUMNS,
        sensitivity_rows=[s.sensitivity_row(r) for r in diagnosis.verification.table] if diagnosis.verification else [],
        margins_sentence=ft.margins_sentence(diagnosis.margins) if diagnosis.margins is not None else "",
        # matplotlib writes the SVGs and escapes their text itself; they hold no script and no external reference.
        figures=[(f, Markup(f.svg)) for f in report_figures(diagnosis)],
        header_rows=s.header_rows(diagnosis.run),
        metric_rows=s.metric_rows(diagnosis.model) if diagnosis.model is not None else [],
        worst_classes=s.worst_class_lines(diagnosis.model) if diagnosis.model is not None else [],
        task=_task_view(diagnosis),
        task_figures=[(f, Markup(f.svg)) for f in task_figures(diagnosis)],
        onset_sentence=s.onset_sentence(diagnosis),
        depth_svg=Markup(error_by_depth_svg(diagnosis)),
        depth_caption=" ".join(t for t in (s.depth_caption(diagnosis), excess_caption(diagnosis)) if t),
        worst_title=s.worst_title(10),
        worst_columns=s.WORST_COLUMNS,
        worst_rows=[(l.position, s.worst_layer_row(l)) for l in diagnosis.worst_layers(10)],
        layer_columns=COLUMNS,
        layer_rows=[(l.position, _format_row(layer_row(l))) for l in sorted(diagnosis.layers, key=_position)],
        numeric_columns=_DB_COLUMNS | _RATIO_COLUMNS | _GENERAL_COLUMNS | {"position"},
        coverage_sentence=s.coverage_sentence(diagnosis),
        unmatched_sentence=s.unmatched_sentence(diagnosis),
        timing_sentence=s.timing_sentence(diagnosis.run),
    )


def _task_view(diagnosis: Diagnosis) -> dict[str, Any] | None:
    """What the template shows of the task: its headline and metrics (only without classifier metrics), the outputs."""
    from quantdoctor.report import outputs_text as ot

    task = diagnosis.task
    if task is None:
        return None
    alone = diagnosis.model is None
    return {
        "line": ot.task_line(task) if alone else "",
        "headline": ot.headline_sentence(task) if alone else "",
        "metric_columns": ot.TASK_METRIC_COLUMNS,
        "metric_rows": ot.task_metric_rows(task) if alone else [],
        "output_columns": ot.OUTPUT_COLUMNS,
        "output_rows": [ot.output_row(o) for o in task.outputs],
        "group_columns": ot.GROUP_COLUMNS,
        "group_rows": ot.group_rows(task),
        "group_sentences": ot.group_sentences(task),
    }


def _finding_view(finding, diagnosis: Diagnosis) -> dict[str, Any]:
    """What the template shows of one finding: badge, title, the sentence (from findings_text) and the evidence."""
    from quantdoctor.report import findings_text as ft

    evidence = [(k, _format_evidence(v)) for k, v in finding.evidence.items()]
    evidence.append(("layers", ", ".join(finding.layers) or s.DASH))
    evidence.append(("positions", ", ".join(str(p) for p in finding.positions) or s.DASH))
    evidence.append(("score (share of the output error)", _format_evidence(finding.score)))
    return {
        "severity": finding.severity.value,
        "title": ft.mechanism_title(finding.mechanism),
        "mechanism": finding.mechanism,
        "sentence": ft.finding_sentence(finding, diagnosis),
        "evidence": evidence,
    }


def _format_evidence(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return s.DASH if value is None else str(value)
    if isinstance(value, (int, float)):
        return s.fmt_num(float(value)) if isinstance(value, float) else str(value)
    return str(value)


def _position(layer) -> int:
    return layer.position


def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("quantdoctor.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _format_row(row: dict[str, Any]) -> list[str]:
    return [_format_cell(name, row[name]) for name in COLUMNS]


def _format_cell(name: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return s.DASH  # the frame uses NaN for "not measured"
    formatter: Callable[[float], str] | None = (
        s.fmt_db if name in _DB_COLUMNS else s.fmt_ratio if name in _RATIO_COLUMNS
        else s.fmt_num if name in _GENERAL_COLUMNS else None
    )
    return formatter(value) if formatter else str(value)
