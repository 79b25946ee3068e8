import dataclasses
import math

import pytest

from quantdoctor.report.plots import _y_range, error_by_depth_svg


def test_svg_is_inline_and_deterministic(diagnosis):
    svg = error_by_depth_svg(diagnosis)
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert "<!--" not in svg and "<?xml" not in svg and "<metadata" not in svg
    assert error_by_depth_svg(diagnosis) == svg  # no date, stable ids: the same report gives the same file


def test_infinite_values_are_clipped_to_the_top_and_get_a_legend(diagnosis):
    plain = error_by_depth_svg(diagnosis)
    exact = dataclasses.replace(diagnosis.layers[0], accumulated=dataclasses.replace(
        diagnosis.layers[0].accumulated, sqnr_db=math.inf))
    svg = error_by_depth_svg(dataclasses.replace(diagnosis, layers=(exact,) + diagnosis.layers[1:]))
    assert 'id="legend_1"' in svg and 'id="legend_1"' not in plain


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
