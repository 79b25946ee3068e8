"""report.render: one entry point for every view of every result; the data models delegate to it."""

from __future__ import annotations

import pytest

from quantdoctor.errors import UserInputError
from quantdoctor.report.render import render


def test_every_view_of_a_diagnosis_comes_from_render(tiny_model_path, tiny_npz):
    from quantdoctor import diagnose

    d = diagnose(tiny_model_path, tiny_npz, scheme="dynamic", explain=False)
    assert render(d, "terminal", width=90) == d.summary(width=90)
    assert render(d, "json") == d.to_json()
    html = render(d, "html")
    assert html.startswith("<!DOCTYPE html>") and html == d._repr_html_()
    frame = render(d, "frame")
    assert len(frame) == len(d.layers)
    with pytest.raises(UserInputError, match="unknown format 'pdf'"):
        render(d, "pdf")


def test_a_result_without_that_view_is_refused():
    from quantdoctor.repair.result import RepairResult

    r = RepairResult(scheme="int8", backend="converter", metric="agreement", max_drop=1.0, baseline_metric=0.5,
                     final_metric=0.99, actions=(), changed_ops=0, trajectory=(), evaluations=1, seconds=0.1,
                     budget_met=True, skipped=(), message="budget met")
    assert render(r, "terminal").startswith("budget met\n\nchanges: none")
    with pytest.raises(UserInputError, match="no frame view of a RepairResult"):
        render(r, "frame")
