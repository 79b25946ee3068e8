import dataclasses
import math

import pytest

from quantdoctor.report.plots import _y_range, error_by_depth_svg
from tests.report.conftest import tensor_error


def test_svg_is_inline_and_deterministic(diagnosis):
    svg = error_by_depth_svg(diagnosis)
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert "<!--" not in svg and "<?xml" not in svg and "<metadata" not in svg
    assert error_by_depth_svg(diagnosis) == svg  # no date, stable ids: the same report gives the same file


def test_infinite_values_are_clipped_to_the_top_and_get_a_legend(diagnosis):
    accumulated_only = tuple(dataclasses.replace(l, isolated=None) for l in diagnosis.layers)
    plain = error_by_depth_svg(dataclasses.replace(diagnosis, layers=accumulated_only))
    exact = dataclasses.replace(accumulated_only[0], accumulated=dataclasses.replace(
        diagnosis.layers[0].accumulated, sqnr_db=math.inf))
    svg = error_by_depth_svg(dataclasses.replace(diagnosis, layers=(exact,) + accumulated_only[1:]))
    assert 'id="legend_1"' in svg and 'id="legend_1"' not in plain


def test_isolated_and_expected_series_and_the_excess_mark(diagnosis):
    svg = error_by_depth_svg(diagnosis)  # two depthwise ops have an isolated error, none an expected one
    assert 'id="depth-isolated"' in svg and 'id="depth-expected"' not in svg and 'id="depth-excess"' not in svg
    assert 'id="legend_1"' in svg
    dw = diagnosis.layers[4]
    broken = dataclasses.replace(dw, isolated=tensor_error(-6.4), expected=tensor_error(42.8))  # 49.2 dB excess
    fine = dataclasses.replace(diagnosis.layers[1], expected=dataclasses.replace(diagnosis.layers[1].isolated))
    layers = diagnosis.layers[:1] + (fine,) + diagnosis.layers[2:4] + (broken,) + diagnosis.layers[5:]
    svg = error_by_depth_svg(dataclasses.replace(diagnosis, layers=layers))
    assert 'id="depth-expected"' in svg and 'id="depth-excess"' in svg
    # within 10 dB of expected: no mark
    near = dataclasses.replace(broken, isolated=tensor_error(33.0))
    svg = error_by_depth_svg(dataclasses.replace(diagnosis, layers=layers[:4] + (near,) + layers[5:]))
    assert 'id="depth-expected"' in svg and 'id="depth-excess"' not in svg


def test_y_range_keeps_zero_and_ignores_infinities():
    assert _y_range([30.0, math.inf, 4.0]) == (0.0, 33.0)
    assert _y_range([-5.0, 10.0]) == pytest.approx((-7.0, 11.7))
    assert _y_range([math.inf]) == (0.0, 40.0)


def test_awkward_labels_and_no_layers(diagnosis):
    odd = dataclasses.replace(diagnosis.layers[4], keras_layers=("cost_$x$_{",))
    d = dataclasses.replace(diagnosis, layers=diagnosis.layers[:4] + (odd,) + diagnosis.layers[5:],
                            onset=dataclasses.replace(diagnosis.onset, label=odd.label))
    assert error_by_depth_svg(d).startswith("<svg")  # "$" is not read as mathtext
    empty = error_by_depth_svg(dataclasses.replace(diagnosis, layers=(), onset=None))
    assert empty.startswith("<svg") and 'id="line2d_1"' not in empty
