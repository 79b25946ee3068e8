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
    assert html.count("<svg") == 1 and "</svg>" in html
    assert "<?xml" not in html and "<!DOCTYPE svg" not in html
    for section in ("metrics", "onset", "depth", "worst", "layers", "coverage", "run"):
        assert f'<section id="{section}">' in html
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
