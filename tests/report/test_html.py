import dataclasses
import re

from quantdoctor.report.frame import COLUMNS
from quantdoctor.report.html import render_html


def test_self_contained(diagnosis):
    html = render_html(diagnosis)
    assert html.startswith("<!DOCTYPE html>")
    for external in ('src="http', "src='http", 'href="http', "href='http", "<script", "<link", "@import"):
        assert external not in html, external
    assert all(ref.startswith("#") for ref in re.findall(r"url\(([^)]*)\)", html))  # SVG clip paths, in-document
    # the only URLs are the SVG namespace declarations, which browsers never fetch
    namespaces = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}
    assert set(re.findall(r'"(https?://[^"]*)"', html)) <= namespaces


def test_contains_the_sections_and_the_figure(diagnosis):
    html = render_html(diagnosis)
    # error by depth, and per-layer SQNR (two ops have an isolated error); no grid, weights or margins data here
    assert html.count("<svg") == 2 and html.count("</svg>") == 2
    assert "<?xml" not in html and "<!DOCTYPE svg" not in html
    for section in ("findings", "metrics", "onset", "depth", "worst", "layers", "coverage", "run"):
        assert f'<section id="{section}">' in html
    assert '<section id="layer-sqnr" class="figure">' in html
    order = [html.index(f'id="{name}"') for name in ("findings", "metrics", "depth", "layer-sqnr")]
    assert order == sorted(order)
    assert "No finding:" in html
    assert ("Error onset: layer b1_dw_relu (DEPTHWISE_CONV_2D, position 4): "
            "SQNR falls from 31.2 dB at its input to 4.1 dB.") in html
    assert "SQNR stays above 30 dB for the first 4 tensors, then falls to 4.1 dB at b1_dw_relu" in html
    assert "Took 13.9 s (float 2.6 s, quantized 0.3 s, convert 11.0 s)." in html
    assert "inserted by the converter, no float counterpart" in html


def test_full_layer_table_has_every_frame_column_and_row(diagnosis):
    html = render_html(diagnosis)
    table = html[html.index('<section id="layers">'):html.index('<section id="coverage">')]
    assert re.findall(r"<th[^>]*>([^<]*)</th>", table) == list(COLUMNS)
    assert table.count("<tr") == 1 + len(diagnosis.layers)
    assert table.count('<tr class="onset">') == 1
    assert "b1_dw+b1_dw_bn+b1_dw_relu" in table and "0.0235" in table


def test_names_are_escaped(diagnosis):
    evil = dataclasses.replace(diagnosis.layers[4], keras_layers=("<script>alert(1)</script>",))
    d = dataclasses.replace(
        diagnosis, layers=diagnosis.layers[:4] + (evil,) + diagnosis.layers[5:],
        onset=dataclasses.replace(diagnosis.onset, label=evil.label),
    )
    html = render_html(d)
    assert "<script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


def test_without_labels_or_onset(healthy_diagnosis):
    html = render_html(healthy_diagnosis)
    assert "accuracy" not in html
    assert "No error onset" in html and 'class="onset"' not in html
    assert "Every tensor was matched." in html and "<th>Reason</th>" not in html


def test_findings_section_ranks_badges_and_collapses_the_evidence(diagnosis):
    from markupsafe import escape

    from quantdoctor.diagnose.findings import Finding, Severity
    from quantdoctor.report.findings_text import finding_sentence

    critical = Finding(
        "kernel_defect", Severity.CRITICAL, (4,), ("<b>b1_dw_relu</b>",), ("DEPTHWISE_CONV_2D",),
        evidence={"ops": 1, "op_type": "DEPTHWISE_CONV_2D", "worst_layer": "<b>b1_dw_relu</b>",
                  "observed_sqnr_db": -6.4, "expected_sqnr_db": 42.8, "excess_db": 49.2,
                  "weights": "int8 per-tensor hybrid"},
        fix="keep it in float", score=0.8)
    info = Finding("float_ops", Severity.INFO, (8,), ("predictions",), ("FULLY_CONNECTED",),
                   evidence={"float_ops": 1, "inserted_conversions": 0}, score=float("nan"))
    d = dataclasses.replace(diagnosis, findings=(critical, info))
    html = render_html(d)
    section = html[html.index('<section id="findings">'):html.index('<section id="metrics">')]
    assert section.count("<li") == 2 and section.count("<details>") == 2
    assert section.index('class="badge critical"') < section.index('class="badge info"')
    assert "<b>" not in section and "&lt;b&gt;b1_dw_relu&lt;/b&gt;" in section
    assert str(escape(finding_sentence(critical, d))) in section  # the one sentence findings_text writes
    evidence = section[section.index("<details>"):section.index("</details>")]
    assert '<th>excess_db</th><td class="num">49.2</td>' in evidence
    assert '<th>positions</th><td class="num">4</td>' in evidence
    assert "No finding:" not in html
