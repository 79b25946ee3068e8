"""The repair report: structure, escaping, self-containment, figures drawn where the numbers say, computed captions;
one real tiny repair writing repair.html, and (with Chromium) the page loading without errors."""

from __future__ import annotations

import io
import re
import shutil
from dataclasses import replace

import numpy as np
import pytest

from quantdoctor.repair.actions import KeepFloat, PerChannel
from quantdoctor.repair.result import RepairResult, TrajectoryRow
from quantdoctor.report.repair_html import TRAJECTORY_COLUMNS, render_repair_html, skipped_groups
from quantdoctor.report.repair_plots import latency_caption, pareto_front, step_ranges, tradeoff_caption

HOSTILE = 'model/<script>alert("x")</script>&_1/Relu;model/b"2\'_1/Add'


def _row(step, change, metric, size, ops, ms, evals, full=False):
    return TrajectoryRow(step=step, change=change, metric=metric, drop=round(100 * (1 - metric), 4), size_bytes=size,
                         float_ops=ops, latency_ms=ms, evaluations=evals, seconds=1.5 * evals, full=full)


@pytest.fixture
def result() -> RepairResult:
    """A hand-built repair: baseline 40 points below float, a step back, within the 1-point budget at step 3."""
    keep = KeepFloat(ops=(HOSTILE,))
    trajectory = (
        _row(0, "baseline", 0.60, 100_000, 3, 10.0, 2),
        _row(1, "+ per-channel weights for every CONV_2D", 0.88, 101_000, 3, 9.0, 6),
        _row(2, f"+ {keep.describe()}", 0.85, 103_000, 4, 12.0, 10),
        _row(3, "- per-channel weights for every CONV_2D (step back)", 0.995, 102_000, 4, 11.0, 14),
        _row(4, "final (fresh evaluation)", 0.992, 102_000, 4, 8.0, 15, full=True),
    )
    return RepairResult(
        scheme="int8", backend="converter", metric="agreement", max_drop=1.0, baseline_metric=0.6, final_metric=0.992,
        actions=(keep, PerChannel(op_type="DEPTHWISE_CONV_2D")), changed_ops=2, trajectory=trajectory, evaluations=15,
        seconds=22.5, budget_met=True, message="budget met",
        skipped=("per-channel weights for every CONV_2D: "
                 "mlir_quantize switches per-channel weights for the whole model",
                 "per-channel weights for b1: mlir_quantize switches per-channel weights for the whole model",
                 f"int16 activations (16x8) for x: tensor {HOSTILE} has <no> range"),
        model=b"\0" * 102_000, float_model="models/<b>tiny</b>.keras",
    )


def _section(html: str, sid: str) -> str:
    start = html.index(f'<section id="{sid}"')
    return html[start:html.index("</section>", start)]


def test_trajectory_table_has_every_row_and_column(result):
    html = render_repair_html(result)
    table = _section(html, "trajectory")
    rows = re.findall(r'<tr class="([a-z ]+)">', table)
    assert len(rows) == len(result.trajectory) == 5
    assert rows == ["over", "over", "over", "within", "within final"]  # drop 40, 12, 15, 0.5, 0.8 against 1 point
    assert len(re.findall(r"<th[ >]", table)) == len(TRAJECTORY_COLUMNS) == 10
    assert table.count("<td") == 5 * 10
    assert ">102,000<" in table and ">full set<" in table and table.count(">ranking subset<") == 4


def test_header_says_budget_met_or_not_in_words(result):
    html = render_repair_html(result)
    assert "Budget met: agreement 0.6000 → 0.9920 (drop 0.80 points)" in html
    assert "2 changes to 2 ops" in html and "Budget NOT met" not in html
    failed = render_repair_html(replace(result, budget_met=False, final_metric=0.95))
    outcome = re.search(r'<p class="outcome" id="outcome">(.*?)</p>', failed).group(1)
    assert outcome.startswith("Budget NOT met: agreement 0.6000 → 0.9500 (drop 5.00 points)")
    assert "the best model found is written anyway" in outcome


def test_no_external_reference_and_hostile_names_are_escaped(result):
    html = render_repair_html(result)
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html
    assert "<b>tiny</b>" not in html and "&lt;b&gt;tiny&lt;/b&gt;" in html
    assert 'alert("x")' not in html and "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;_1" in html
    assert "&lt;no&gt; range" in html
    hrefs = re.findall(r'(?:href|src)\s*=\s*"([^"]*)"', html)
    assert hrefs and all(h.startswith("#") for h in hrefs), [h for h in hrefs if not h.startswith("#")]
    assert all(u.startswith("#") for u in re.findall(r"url\(([^)]*)\)", html))
    # two panels in one figure: the parts the page names are not doubled (matplotlib's own ids, e.g. the glyphs
    # shared by both figures, repeat across SVGs and resolve to identical definitions)
    for part in ("budget-line", "final-model", "steps-subset", "pareto-front"):
        assert html.count(f'id="{part}-size"') == html.count(f'id="{part}-ops"') == 1, part


def test_changes_list_ops_touched_and_skipped_grouped_by_reason(result):
    html = render_repair_html(result)
    changes = _section(html, "changes")
    assert changes.count("<li>") == 2 and "every DEPTHWISE_CONV_2D" in changes
    assert "ops touched (1)" in changes and ">b&#34;2&#39;<" not in changes  # short name of HOSTILE is its first part
    groups = skipped_groups(result.skipped)
    assert [(reason, len(a)) for reason, a in groups] == [
        ("mlir_quantize switches per-channel weights for the whole model", 2),
        (f"tensor {HOSTILE} has <no> range", 1),
    ]
    assert "(2):" in _section(html, "skipped")


def _budget_and_points(html: str, panel: str) -> tuple[float, list[float], float]:
    """SVG y of the budget line, of the step markers, and of the final model's star in one panel."""
    def group(gid, closes=2):  # a line is one <path>, markers sit one <g clip-path> deeper
        start = end = html.index(f'<g id="{gid}">')
        for _ in range(closes):
            end = html.index("</g>", end + 1)
        return html[start:end]

    line = re.findall(r"d=\"M ([\d.]+) ([\d.]+)\s+L ([\d.]+) ([\d.]+)", group(f"budget-line-{panel}", 1))
    (x0, y0, x1, y1), = line
    assert y0 == y1 and float(x1) > float(x0)  # horizontal
    steps = [float(y) for y in re.findall(r'<use [^>]* y="([\d.]+)"', group(f"steps-subset-{panel}"))]
    (star,) = [float(y) for y in re.findall(r'<use [^>]* y="([\d.]+)"', group(f"final-model-{panel}"))]
    return float(y0), steps, star


def test_budget_line_separates_the_steps_within_budget(result):
    html = render_repair_html(result)
    for panel in ("size", "ops"):
        budget, steps, star = _budget_and_points(html, panel)
        assert len(steps) == 4  # every step but the final model, which is the star
        # SVG y grows downwards: drops of 40, 12, 15 points are drawn above the 1-point line, 0.5 and 0.8 below it
        assert [y < budget for y in steps] == [True, True, True, False] and star > budget


def test_captions_carry_the_numbers(result):
    text = tradeoff_caption(result)
    assert text.startswith("The final model (step 4) keeps 1 extra op in float (4 in all, baseline 3), is 2.0 % larger "
                           "than the baseline (102.0 kB vs 100.0 kB) and meets the 1-point budget at step 4 "
                           "(drop 0.80 points on the full evaluation set); the baseline's drop was 40.00 points.")
    assert "first came within the budget at step 3." in text
    # (size, drop) front: baseline (100 kB, 40), step 1 (101 kB, 12), step 3 and final (102 kB, 0.5 / 0.8) -> 3 points
    assert "3 of the 5 steps are on the Pareto front of drop against size, 2 on that of drop against float ops." in text
    lat = latency_caption(result)
    assert "baseline 10.0 ms, final model 8.0 ms (-20 %)" in lat and "from 8.0 ms (step 4) to 12.0 ms (step 2)" in lat
    failed = tradeoff_caption(replace(result, budget_met=False))
    assert "does NOT meet the 1-point budget" in failed and "lowest drop on the way was 0.50 points at step 3" in failed
    html = render_repair_html(result)
    assert html.count("<figcaption>") == 2 and "keeps 1 extra op in float" in _section(html, "tradeoff")


def test_helpers():
    assert step_ranges([7, 2, 3, 4, 9, 10]) == "2-4, 7, 9-10"
    assert pareto_front([(1, 5), (2, 1), (3, 1), (0.5, 9), (2, 7)]) == [3, 0, 1]


def test_no_trajectory_has_no_figures(result):
    html = render_repair_html(replace(result, trajectory=(), actions=(), changed_ops=0, skipped=()))
    assert "<svg" not in html and "<figure>" not in html
    assert "The baseline already meets the budget, so nothing was searched or changed." in html
    assert "Every action the search considered could be expressed." in html


# -- a real repair -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def repaired(tmp_path_factory):
    """A real repair of the planted gamma-spread model (per-tensor weights of proj_bn), written with its HTML."""
    from quantdoctor.repair import repair
    from tests.planted import planted_data, planted_gamma_spread

    folder = tmp_path_factory.mktemp("repair-html")
    x, y = planted_data()
    np.savez(folder / "digits.npz", x=x, y=y)
    planted_gamma_spread().save(folder / "gamma.keras")
    r = repair(folder / "gamma.keras", folder / "digits.npz", scheme="dynamic-per-tensor", max_drop=5.0,
               out=folder / "out")
    return r, folder / "out" / "repair.html"


def test_repair_writes_the_html_next_to_the_json(repaired):
    r, page = repaired
    assert r.budget_met and len(r.trajectory) >= 3
    html = page.read_text()
    assert html == r.to_html()  # the same result renders to the same bytes (stable SVG ids)
    assert len(re.findall(r'<tr class="(?:within|over)', html)) == len(r.trajectory)
    assert "gamma.keras" in html and "Budget met" in html and "per-channel weights for proj_bn" in html
    assert sorted(p.name for p in page.parent.iterdir()) == ["recipe.json", "repair.html", "repair.json",
                                                              "repaired.tflite"]


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (install the Debian `chromium` package)")
def test_repair_page_loads_in_chromium_without_errors(repaired, tmp_path):
    from PIL import Image

    from tests.report.test_browser import WIDTH, Browser

    _, page = repaired
    browser = Browser(tmp_path / "profile", tmp_path / "chromium.log")
    try:
        browser.open(page.resolve().as_uri())
        assert browser.errors() == []
        sizes = browser.evaluate(
            "[...document.querySelectorAll('figure svg')].map(s => s.getBoundingClientRect().height)")
        assert len(sizes) == 2 and min(sizes) > 150, sizes
        image = np.asarray(Image.open(io.BytesIO(browser.screenshot())).convert("RGB"))
    finally:
        browser.close()
    assert image.shape[1] == WIDTH
    ink = float((image.min(axis=2) < 240).mean())
    assert 0.02 < ink < 0.6, ink
