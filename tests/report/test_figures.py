"""The explain figures: which ones a diagnosis gets, and captions whose numbers are computed from the plotted data."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from quantdoctor.diagnose.findings import Finding, Severity
from quantdoctor.report.figures import (
    _levels_holding,
    grid_caption,
    grid_svg,
    layer_sqnr_caption,
    margins_caption,
    margins_svg,
    report_figures,
    suspect_layers,
    weight_layers,
    weights_caption,
    weights_svg,
)
from quantdoctor.report.plots import excess_caption
from quantdoctor.stats.grid import GridCoverageAccumulator
from quantdoctor.stats.margins import MarginAccumulator
from quantdoctor.stats.weights import weight_report
from tests.report.conftest import act, tensor_error


def grid_of(values: np.ndarray, scale: float = 0.1, zero_point: int = -128):
    acc = GridCoverageAccumulator(scale, zero_point)
    acc.update(values)
    return acc.result()


@pytest.fixture
def explained(diagnosis):
    """The hand-built diagnosis, plus output error shares, a grid on b1_expand_relu and per-tensor weights on b1_dw."""
    shares = [0.01, 0.02, 0.02, 0.05, 0.6, 0.1, 0.1, 0.05, 0.05]
    layers = [dataclasses.replace(l, output_error_share=s) for l, s in zip(diagnosis.layers, shares)]
    # first sample on 3 levels (values 0, 0.1, 0.2); the others on 2: 90.7 % of all values at 0, 99.8 % at 0 or 0.1
    x = np.zeros((10, 100), np.float32)
    x[0, 1:3] = [0.1, 0.2]
    x[1:, :10] = 0.1
    layers[3] = dataclasses.replace(layers[3], grid=grid_of(x), grid_mode="static", quant=act(0.1))
    rng = np.random.default_rng(0)
    w = rng.normal(size=(1, 3, 3, 24)) * np.r_[np.full(20, 1.0), np.full(4, 0.004)]  # 4 channels 250x narrower
    step = float(np.abs(w).max()) / 127
    q = np.clip(np.round(w / step), -127, 127)
    layers[4] = dataclasses.replace(
        layers[4], isolated=tensor_error(-6.4), expected=tensor_error(42.8),
        weight_report=weight_report(op_index=4, op_type="DEPTHWISE_CONV_2D", tensor="b1_dw/kernel", storage="int8",
                                    granularity="per-tensor", stored=q, actual=q * step, float_weights=w, axis=3,
                                    step=step))
    findings = (
        Finding("kernel_defect", Severity.CRITICAL, (4,), ("b1_dw_relu",), ("DEPTHWISE_CONV_2D",),
                evidence={"worst_layer": "b1_dw_relu"}, score=0.6),
        Finding("low_grid_coverage", Severity.WARNING, (3, 4), ("b1_expand_relu", "b1_dw_relu"), ("CONV_2D",),
                score=0.65),
    )
    return dataclasses.replace(diagnosis, layers=tuple(layers), findings=findings)


def test_which_figures_a_diagnosis_gets(diagnosis, explained):
    assert [f.id for f in report_figures(diagnosis)] == ["layer-sqnr"]  # isolated errors only
    assert [f.id for f in report_figures(explained)] == ["layer-sqnr", "grid-3", "weights-4"]
    for f in report_figures(explained):
        assert f.svg.startswith("<svg") and "<!--" not in f.svg and f.caption.endswith(".")


def test_suspects_take_each_findings_first_grid_layer(explained):
    assert [l.position for l in suspect_layers(explained)] == [3]  # b1_dw_relu has no grid
    assert [l.position for l in weight_layers(explained)] == [4]
    assert suspect_layers(dataclasses.replace(explained, findings=())) == []


def test_grid_caption_counts_levels(explained):
    layer = explained.layers[3]
    assert grid_caption(layer) == (
        "One sample occupies 3 of 256 levels; 95% of all values sit on 2 levels. Over 10 samples, a sample occupies a "
        "median of 2 levels (5th percentile 2); grid step 0.1, zero point -128."
    )
    svg = grid_svg(layer)
    assert svg.startswith("<svg") and grid_svg(layer) == svg


@pytest.mark.parametrize(
    "counts, share, expected",
    [([0, 90, 6, 3, 1], 0.95, 2), ([0, 90, 6, 3, 1], 0.9, 1), ([25, 25, 25, 25], 0.95, 4), ([0, 0], 0.95, 0),
     ([1, 1, 1, 97], 0.97, 1), ([1, 1, 1, 97], 0.98, 2)],
)
def test_levels_holding(counts, share, expected):
    assert _levels_holding(np.array(counts), share) == expected


def test_weights_caption_counts_channels_under_eight_steps(explained):
    layer = explained.layers[4]
    text = weights_caption(layer)
    r = layer.weight_report
    assert f"With one step of {r.step:.3g} for the whole tensor, 4 channels reach at most 8 steps" in text
    assert f"and {r.collapsed_channels} collapse to ≤ 2 levels" in text and r.collapsed_channels == 4
    assert text.startswith("The widest of 24 channels is ×")
    per_channel = dataclasses.replace(
        layer, weight_report=dataclasses.replace(r, step=math.nan, granularity="per-channel"))
    assert "Stored as per-channel: every channel has its own step" in weights_caption(per_channel)
    assert weights_svg(layer).startswith("<svg")


def test_layer_caption_and_excess_caption(explained):
    assert layer_sqnr_caption(explained) == (
        "Each op alone on the float model's input: lowest -6.4 dB at b1_dw_relu. The output's error builds up mostly "
        "at b1_dw_relu 60%, b1_project_bn 10%, head_relu 10%; 5 of 9 ops make up 90% of it."
    )
    assert excess_caption(explained) == (
        "Marked: b1_dw_relu, where the op alone gives -6.4 dB although its parameters predict 42.8 dB "
        "(49.2 dB worse than expected)."
    )


def test_margins_figure_and_caption(diagnosis):
    rng = np.random.default_rng(0)
    f = rng.normal(size=(200, 10))
    q = f + rng.normal(scale=0.3, size=f.shape)
    acc = MarginAccumulator(k=3)
    acc.update(f, q)
    m = acc.result()
    d = dataclasses.replace(diagnosis, margins=m)
    assert [fig.id for fig in report_figures(d)][-1] == "margins"
    text = margins_caption(d)
    assert text.startswith(f"200 samples over 10 classes: {100 * m.share_below_noise:.0f}% have a top-1 margin below")
    assert f"σ = {m.pair_noise_std:.3g}" in text and f"{100 * m.observed_flip_rate:.0f}% did." in text
    assert 0.1 < m.share_below_noise < 0.9  # the figure has samples on both sides of the noise line
    assert margins_svg(d).startswith("<svg")


def test_a_16_bit_grid_figure_has_one_bar_per_bin(explained):
    rng = np.random.default_rng(3)
    x = rng.uniform(0, 3.0, (4, 20_000)).astype(np.float32)  # levels 0..30000 of step 1e-4: bins of ⌈30001 / 256⌉
    acc = GridCoverageAccumulator(1e-4, 0, -32768, 32767)
    acc.update(x)
    g = acc.result()
    quant = dataclasses.replace(act(1e-4, "int16"), zero_points=(0,))
    layer = dataclasses.replace(explained.layers[3], grid=g, quant=quant)
    assert g.bin_width == 118 and len(g.occupancy) == 255
    svg = grid_svg(layer)
    assert len(svg) < 400_000  # every level drawn, 30,000 bars, was 10 MB and half a minute
    assert grid_caption(layer).startswith(
        f"One sample occupies {g.first_sample_levels} of 65536 levels; 95% of all values sit in ")
    assert "bins of 118 levels" in grid_caption(layer)
