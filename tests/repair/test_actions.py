"""Actions: JSON round trip, and the backends' stated limits."""

from __future__ import annotations

import numpy as np
import pytest

from quantdoctor.errors import UserInputError
from quantdoctor.repair.actions import (
    ACTIONS, Backend, CalibrationRange, Int16Activations, KeepFloat, KernelWorkaround, PerChannel, WeightGranularity,
    action_from_dict,
)
from quantdoctor.repair.ranges import RangeHistogram, choose_range

EXAMPLES = [
    PerChannel(ops=("a;b",)), PerChannel(op_type="DEPTHWISE_CONV_2D"), KeepFloat(ops=("x", "y")),
    Int16Activations(ops=("x",)), CalibrationRange(tensor="t", method="percentile", percentile=99.9),
    CalibrationRange(tensor="t", method="kl"), WeightGranularity(ops=("x",), granularity="per-tensor"),
    KernelWorkaround(op_type="DEPTHWISE_CONV_2D"),
]


@pytest.mark.parametrize("action", EXAMPLES, ids=lambda a: a.kind)
def test_round_trip(action):
    assert action_from_dict(action.to_dict()) == action
    assert action.kind in ACTIONS


def test_backend_limits_are_stated():
    assert "whole model" in PerChannel(ops=("x",)).unsupported(Backend.CONVERTER, "int8-per-tensor")
    assert PerChannel(ops=("x",)).unsupported(Backend.AEQ, "dynamic-per-tensor") is None
    assert "float activations" in Int16Activations(ops=("x",)).unsupported(Backend.AEQ, "dynamic")
    assert CalibrationRange(tensor="t").unsupported(Backend.CONVERTER, "int8") is None
    assert KernelWorkaround(ops=("x",)).unsupported(Backend.CONVERTER, "int8") is not None


def test_bad_percentile_is_a_user_error():
    with pytest.raises(UserInputError):
        CalibrationRange(tensor="t", method="percentile", percentile=20)


def test_ranges_clip_an_outlier():
    rng = __import__("numpy").random.default_rng(0)
    values = rng.normal(size=100_000)
    values[0] = 100.0  # one outlier stretches the min-max range 25-fold
    hist = RangeHistogram(values.min(), values.max())
    hist.update(values)
    assert choose_range(hist, "minmax")[1] == pytest.approx(100.0)
    for method, p in (("percentile", 99.99), ("kl", None)):
        lo, hi = choose_range(hist, method, p)
        assert 2.0 < hi < 20.0, method
        assert lo <= 0.0
    # MSE keeps a lone outlier when clipping it costs more than the coarser grid does (95^2 > 1e5 x step^2 / 12) ...
    assert choose_range(hist, "mse")[1] > 50.0
    # ... and clips when the tail is light relative to the bulk
    hist2 = RangeHistogram(-5.0, 100.0)
    hist2.update(np.concatenate([rng.normal(size=100_000), [100.0]]) * 1.0)
    hist2.counts *= 1000.0
    hist2.counts[-1] = 1.0
    assert choose_range(hist2, "mse")[1] < 20.0
