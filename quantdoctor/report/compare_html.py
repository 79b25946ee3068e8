"""One self-contained HTML file for a `Comparison`: both runs, the metrics side by side, the ranked explanations, the
two figures (accumulated SQNR per aligned layer, top-1 margins against the noise) and the aligned-layers table.

Inline CSS and SVG, nothing fetched from anywhere; every name from the models is escaped by jinja2. Words come from
`compare_text` (the terminal view's sentences), numbers for the figures' captions from `compare_figures`.
"""

from __future__ import annotations

import math
from typing import Any

from quantdoctor.diagnose.compare import PART_DB, Comparison, LayerPair
from quantdoctor.report.sentences import DASH, fmt_db

LAYER_COLUMNS = ("#", "layer A", "layer B", "op", "aligned by", "SQNR A (dB)", "SQNR B (dB)", "B − A (dB)",
                 "own A (dB)", "own B (dB)")
"""One column per cell of `layer_cells`; the first five are text, the rest numbers."""
TEXT_COLUMNS = frozenset(LAYER_COLUMNS[1:5])


def render_compare_html(comparison: Comparison) -> str:
    """The comparison as one HTML document (jinja2, autoescaped: layer and model names are text, never markup)."""
    from markupsafe import Markup

    from quantdoctor.report import compare_figures as cf
    from quantdoctor.report import compare_text as ct
    from quantdoctor.report.html import _environment

    c = comparison
    # matplotlib writes the SVGs and escapes their text itself; they hold no script and no external reference.
    figures = [("sqnr", "Accumulated SQNR per aligned layer, A and B", Markup(cf.sqnr_svg(c)), cf.sqnr_caption(c))]
    if cf.has_margins(c.margins_a) or cf.has_margins(c.margins_b):
        figures.append(("margins", "Top-1 margins against each model's noise", Markup(cf.margins_svg(c)),
                        cf.margins_caption(c)))
    parting = c.parting
    return _environment().get_template("compare.html.j2").render(
        c=c,
        title=f"{c.name_a} vs {c.name_b}",
        header_rows=header_rows(c),
        metric_rows=ct.metric_rows(c),
        gap_sentence=ct.gap_sentence(c),
        explanations=[(e.kind.value, _score(e.score), _sentence(e)) for e in c.explanations],
        figures=figures,
        layer_columns=LAYER_COLUMNS,
        text_columns=TEXT_COLUMNS,
        layer_rows=[(_row_class(p, p is parting), layer_cells(i, p)) for i, p in enumerate(_ordered(c))],
        alignment_sentence=ct.alignment_sentence(c),
        unaligned=c.unaligned,
    )


def header_rows(c: Comparison) -> list[tuple[str, str]]:
    """What each side is: float model, quantized model (or scheme), evaluation data and sample count."""
    rows = []
    for side, name, d in (("A", c.name_a, c.a), ("B", c.name_b, c.b)):
        run = d.run
        rows += [
            (f"{side}: float model", name),
            (f"{side}: quantized", run.quantized_model),
            (f"{side}: data", run.data),  # already says how many samples were evaluated
        ]
    schemes = {d.run.scheme for d in (c.a, c.b)}
    rows.append(("scheme", ", ".join(sorted(s or DASH for s in schemes))))
    return rows


def layer_cells(index: int, p: LayerPair) -> list[str]:
    """The aligned layer as text, one cell per `LAYER_COLUMNS` entry."""
    return [
        str(index), f"{p.label_a} (#{p.position_a})", f"{p.label_b} (#{p.position_b})", p.op_type, p.method.value,
        fmt_db(p.sqnr_a_db), fmt_db(p.sqnr_b_db), _signed(p.delta_db), fmt_db(p.own_a_db), fmt_db(p.own_b_db),
    ]


def _ordered(c: Comparison) -> list[LayerPair]:
    return sorted(c.layers, key=lambda p: (p.position_a, p.position_b))


def _row_class(p: LayerPair, parting: bool) -> str:
    classes = ["parting"] if parting else []
    d = p.delta_db
    if not math.isnan(d) and abs(d) >= PART_DB:
        classes.append("b-worse" if d < 0 else "a-worse")
    return " ".join(classes)


def _signed(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:+.1f}"


def _score(v: float) -> str:
    return "" if v is None or math.isnan(v) else f"{100.0 * v:.0f}% of the gap"


def _sentence(e: Any) -> str:
    from quantdoctor.report.compare_text import explanation_sentence

    return e.sentence or explanation_sentence(e.kind, e.evidence)
