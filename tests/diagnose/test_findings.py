"""Planted faults (tests/planted.py): each is built into a tiny model in seconds and must come out first, with the
right mechanism; a healthy model gives no critical finding."""

from __future__ import annotations

import numpy as np

from quantdoctor import diagnose
from quantdoctor.diagnose.findings import Severity
from tests.planted import (
    planted_gamma_spread,
    planted_margins,
    planted_outlier,
    plain_model,
    save_model,
    shifted_calibration,
)


def _top(d):
    assert d.findings, "no finding at all"
    return d.findings[0]


def test_healthy_plain_model_has_no_critical_finding(data):
    d = diagnose(save_model(plain_model(), data, "healthy"), data / "data.npz", scheme="int8", calib_count=16)
    assert d.model.top1_agreement >= 0.9
    assert not [f for f in d.findings if f.severity is Severity.CRITICAL]


def test_activation_channel_times_100_is_found_as_activation_outliers(data):
    d = diagnose(save_model(planted_outlier(), data, "outlier"), data / "data.npz", scheme="int8", calib_count=16)
    top = _top(d)
    assert top.mechanism == "activation_outliers"
    assert top.layers[0] == "c2_relu"
    assert top.evidence["channel_range_ratio"] >= 30


def test_bn_gamma_spread_under_per_tensor_weights_is_found_as_weight_range_disparity(data):
    d = diagnose(save_model(planted_gamma_spread(), data, "gamma"), data / "data.npz", scheme="dynamic-per-tensor")
    top = _top(d)
    assert top.mechanism == "weight_range_disparity"
    assert top.layers == ("proj_bn",)
    assert top.evidence["channel_range_ratio"] >= 8  # widest / median: the spread is ×100 end to end, ×10 to the median
    assert top.evidence["per_channel_sqnr_db"] - top.evidence["weight_sqnr_db"] >= 6


def test_calibration_on_shifted_data_is_found_as_clipping(data):
    np.save(data / "shifted.npy", shifted_calibration())
    d = diagnose(
        save_model(plain_model(), data, "calib"), data / "data.npz", scheme="int8", calib=str(data / "shifted.npy")
    )
    top = _top(d)
    assert top.mechanism == "calibration_clipping"
    assert top.positions[0] == -1  # it starts at the model input, which the calibration set did not cover
    assert top.evidence["clipped_share"] >= 0.05
    assert top.evidence["tensors"] >= 2


def test_tiny_logit_margins_are_found_as_output_margins(data):
    d = diagnose(save_model(planted_margins(), data, "margins"), data / "data.npz", scheme="int8", calib_count=16)
    top = _top(d)
    assert top.mechanism == "output_margins"
    assert top.layers == ("logits",)
    m = d.margins
    assert m.observed_flip_rate >= 0.3
    assert top.evidence["output_step"] > m.top1_margin_median
