"""One entry point for every output: `render(result, format)`, for a diagnosis, a comparison and a repair.

The data models (`Diagnosis`, `Comparison`, `RepairResult`) hold numbers only; their `summary()`, `to_html()` and
`_repr_html_()` (Jupyter) call this, and the renderers load lazily (rich, jinja2, matplotlib, pandas).
"""

from __future__ import annotations

from typing import Any, Callable

from quantdoctor.errors import UserInputError

FORMATS = ("terminal", "json", "html", "frame")


def _diagnosis(fmt: str, width: int) -> Callable[[Any], Any] | None:
    if fmt == "terminal":
        from quantdoctor.report.terminal import render_text

        return lambda d: render_text(d, width=width)
    if fmt == "html":
        from quantdoctor.report.html import render_html

        return render_html
    if fmt == "frame":
        from quantdoctor.report.frame import layers_frame

        return layers_frame
    return None


def _comparison(fmt: str, width: int) -> Callable[[Any], Any] | None:
    if fmt == "terminal":
        from quantdoctor.report.compare_text import render_text

        return lambda c: render_text(c, width=width)
    if fmt == "html":
        from quantdoctor.report.compare_html import render_compare_html

        return render_compare_html
    return None


def _repair(fmt: str, width: int) -> Callable[[Any], Any] | None:
    if fmt == "terminal":
        from quantdoctor.report.repair_text import render_text

        return render_text
    if fmt == "html":
        from quantdoctor.report.repair_html import render_repair_html

        return render_repair_html
    return None


def render(result: Any, fmt: str = "terminal", *, width: int = 100) -> Any:
    """`result` as `fmt`: "terminal" (plain text, `width` columns), "json", "html" (one self-contained page), or
    "frame" (a pandas DataFrame of the layers; diagnoses only).

    Raises:
        UserInputError: an unknown format, or one this kind of result has no renderer for.
    """
    from quantdoctor.diagnose.compare import Comparison
    from quantdoctor.diagnose.results import Diagnosis
    from quantdoctor.repair.result import RepairResult

    if fmt not in FORMATS:
        raise UserInputError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if fmt == "json":
        return result.to_json()
    pick = {Diagnosis: _diagnosis, Comparison: _comparison, RepairResult: _repair}.get(type(result))
    renderer = None if pick is None else pick(fmt, width)
    if renderer is None:
        raise UserInputError(f"no {fmt} view of a {type(result).__name__}")
    return renderer(result)
