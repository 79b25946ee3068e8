"""The compare report: one row per aligned layer, both SQNR series and the parting line drawn where the numbers say,
captions computed from the comparison, no external reference, hostile names escaped; `compare --out` writes it; (with
Chromium) the page loads without errors and is not blank.

The comparison is real and cheap: the tiny model with 12 classes under int8 against the tiny model with 40 classes under
`dynamic` whose b1_expand int8 weights are scrambled (a deterministic fault, unlike LiteRT's broken hybrid per-tensor
depthwise kernel, whose error varies by run), so the two part at b1_expand_relu.
"""

from __future__ import annotations

import io
import re
from dataclasses import replace

import numpy as np
import pytest

from quantdoctor.report.compare_html import LAYER_COLUMNS, render_compare_html

HOSTILE = 'b1/<script>alert("x")</script>&_1;b"2\'$x$'


@pytest.fixture(scope="module")
def comparison(tiny_model_path, tiny_npz, tmp_path_factory):
    from quantdoctor import diagnose
    from quantdoctor.diagnose.compare import compare_diagnoses
    from tests.conftest import build_tiny_model

    b_path = tmp_path_factory.mktemp("models_b") / "tiny40.keras"
    a = diagnose(tiny_model_path, tiny_npz, scheme="int8", calib_count=16)
    from quantdoctor.quantize.converter import convert
    from tests.diagnose.test_pipeline import _corrupt_weights

    model_b = build_tiny_model(num_classes=40)
    model_b.save(b_path)
    q_path = b_path.with_name("tiny40-scrambled.tflite")
    q_path.write_bytes(_corrupt_weights(convert(model_b, "dynamic"), "b1_expand"))
    b = diagnose(b_path, tiny_npz, quantized=q_path)
    return compare_diagnoses(a, b, str(tiny_model_path), str(b_path))


@pytest.fixture(scope="module")
def html(comparison) -> str:
    return render_compare_html(comparison)


def _section(html: str, sid: str) -> str:
    start = html.index(f'<section id="{sid}"')
    return html[start:html.index("</section>", start)]


def _series(svg: str) -> dict[str, list[tuple[float, float]]]:
    """The clipped data lines of an SVG by stroke colour: their vertices (matplotlib writes one path per line)."""
    out = {}
    for d, colour in re.findall(r'<path d="(M [^"]*)" clip-path="url\(#\w+\)" style="fill: none; [^"]*?stroke: (#\w+)',
                                svg):
        out.setdefault(colour, []).append([tuple(map(float, p.split())) for p in re.findall(r"[\d.]+ [\d.]+", d)])
    return out


def test_one_row_per_aligned_layer_and_the_parting_row_marked(comparison, html):
    table = _section(html, "layers")
    body = table[table.index("<tbody>"):]
    rows = re.findall(r"<tr(?: class=\"([a-z -]*)\")?>", body)
    assert len(rows) == len(comparison.layers) == 13
    assert body.count("<td") == 13 * len(LAYER_COLUMNS)
    p = comparison.parting
    assert p is not None and p.label_a == "b1_expand_relu", comparison.summary()
    assert [c for c in rows if "parting" in c] == ["parting b-worse"]
    parting_row = re.search(r'<tr class="parting b-worse">(.*?)</tr>', body, re.S).group(1)
    assert f">{p.delta_db:+.1f}<" in parting_row and p.delta_db < -20  # scrambled weights
    assert "13 aligned (13 by Keras label, 0 by position); 0 unaligned." in table


def test_header_metrics_and_explanations_use_the_terminal_wording(comparison, html):
    from quantdoctor.report.compare_text import gap_sentence

    assert f"<title>quantdoctor compare: {comparison.name_a} vs {comparison.name_b}</title>" in html
    assert "converted with scheme int8" in html and "tiny40-scrambled.tflite" in html
    assert gap_sentence(comparison) in html
    top1 = comparison.metric("top1_agreement")
    assert f"{top1.gap_points:+.1f} pts" in _section(html, "metrics")
    items = re.findall(r"<li>(.*?) <span class=\"kind\">\((\w+)", _section(html, "explanations"), re.S)
    assert [k for _, k in items] == [e.kind.value for e in comparison.explanations] and len(items) >= 1
    from markupsafe import escape

    assert [s for s, _ in items] == [str(escape(e.sentence)) for e in comparison.explanations]


def test_sqnr_figure_draws_both_series_and_the_parting_line(comparison, html):
    from quantdoctor.report.compare_figures import ordered_layers

    svg = _section(html, "sqnr")
    lines = _series(svg)
    n = len(ordered_layers(comparison))
    a, = lines["#2b6cb0"]
    b, = lines["#dd6b20"]
    assert len(a) == len(b) == n
    i = ordered_layers(comparison).index(comparison.parting)
    part, = lines["#c53030"]
    assert part[0][0] == pytest.approx(a[i][0]) == pytest.approx(b[i][0])  # the red line stands at the parting layer
    # SVG y grows downwards: B is drawn far below A from the parting layer on, and level with it before
    assert all(yb > ya for (_, ya), (_, yb) in zip(a[i:], b[i:]))
    assert abs(a[1][1] - b[1][1]) < 20


def test_captions_carry_the_numbers(comparison, html):
    p, head = comparison.parting, max(comparison.layers, key=lambda q: q.position_a)
    sqnr = re.search(r"<figcaption>(.*?)</figcaption>", _section(html, "sqnr"), re.S).group(1)
    assert f"At the last one ({head.label_a}) A has {head.sqnr_a_db:.1f} dB and B {head.sqnr_b_db:.1f} dB" in sqnr
    assert f"They part at b1_expand_relu ({p.op_type}, red line): B is {abs(p.delta_db):.1f} dB lower" in sqnr
    margins = re.search(r"<figcaption>(.*?)</figcaption>", _section(html, "margins"), re.S).group(1)
    ma, mb = comparison.margins_a, comparison.margins_b
    assert ma.num_classes == 12 and mb.num_classes == 40
    for side, m in (("A", ma), ("B", mb)):
        assert (f"{side}: {m.num_samples} samples over {m.num_classes} classes, median margin "
                f"{m.top1_margin_median:.3g} against noise σ = {m.pair_noise_std:.3g}") in margins
        assert f"predicts {100 * m.predicted_flip_rate:.1f}% flips and {100 * m.observed_flip_rate:.1f}%" in margins
    dashed = re.findall(r'stroke-dasharray: [\d.,]+; stroke-dashoffset: 0; stroke: (#\w+)', _section(html, "margins"))
    assert {"#2b6cb0", "#dd6b20"} <= set(dashed)  # each side's σ line in its colour


def test_no_external_reference(html):
    low = html.lower()
    assert "<script" not in low and "<link" not in low and "@import" not in low and "<img" not in low
    assert "http://" not in low.replace("http://www.w3.org/", "") and "https://" not in low
    assert set(re.findall(r'xlink:href="(.)', html)) == {"#"} and "url(#" in html
    assert re.findall(r"url\((?!#)", html) == []


def test_hostile_labels_and_names_are_escaped(comparison):
    from quantdoctor.diagnose.compare import parting_layer

    layers = tuple(replace(p, label_a=HOSTILE + p.label_a, label_b=HOSTILE + p.label_b) for p in comparison.layers)
    hostile = replace(comparison, layers=layers, parting=parting_layer(layers), name_a=f"models/<b>{HOSTILE}</b>.keras")
    html = render_compare_html(hostile)
    assert "<script" not in html.lower() and "<b>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;_1;b&#34;2&#39;$x$b1_expand_relu" in html
    assert "&lt;b&gt;b1/" in html
    assert html.count("<figure>") == 2  # $x$ was drawn as text, not parsed as math


def test_to_html_and_compare_out_write_the_page(comparison, html, tmp_path):
    from quantdoctor.cli.compare import write_comparison

    assert comparison.to_html() == html  # deterministic: same SVG ids, same text
    paths = write_comparison(comparison, tmp_path)
    assert tmp_path / "compare.html" in paths and (tmp_path / "compare.html").read_text() == html
    assert (tmp_path / "compare.json").exists() and (tmp_path / "b" / "report.json").exists()


def test_page_loads_in_chromium_without_errors(html, tmp_path_factory):
    from tests.report.test_browser import CHROMIUM, HEIGHT, WIDTH, Browser

    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian `chromium`); see tests/report/test_browser.py")
    folder = tmp_path_factory.mktemp("compare_chromium")
    page = folder / "compare.html"
    page.write_text(html)
    browser = Browser(folder / "profile", folder / "chromium.log")
    try:
        browser.open(page.resolve().as_uri())
        assert browser.errors() == []
        sizes = browser.evaluate(
            "[...document.querySelectorAll('figure svg')].map(s => s.getBoundingClientRect().height)")
        assert len(sizes) == 2 and min(sizes) > 150, sizes
        png = browser.screenshot()
    finally:
        browser.close()
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    assert image.shape[1] == WIDTH and image.shape[0] > 2 * HEIGHT
    ink = float((image.min(axis=2) < 240).mean())
    assert 0.02 < ink < 0.6, ink
