"""Weight quantization analysis against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantdoctor.errors import DataError, UserInputError
from quantdoctor.stats.weights import (
    OUTPUT_CHANNEL_AXIS,
    WeightReport,
    channel_levels,
    channel_range_ratio,
    channel_sqnr_db,
    collapsed_channels,
    dequantize,
    quantize_weights,
    weight_report,
    weight_sqnr_db,
)

INF, NAN = math.inf, math.nan

# w, granularity, axis, bits, expected q, expected scales -- worked out by hand
QUANTIZE_CASES = [
    # max|w| = 127 -> scale 1; ties round away from zero like TFLite (numpy's round would give 0, -0, 2)
    ([127.0, 0.5, -0.5, 2.5], "per-tensor", 0, 8, [127, 1, -1, 3], [1.0]),
    # columns are channels, the second ×1/100: per-tensor scale 2/127 leaves it one level (0.635 and 1.27 -> 1)
    ([[1.0, 0.01], [2.0, 0.02]], "per-tensor", 1, 8, [[64, 1], [127, 1]], [2 / 127]),
    # per-channel: scales 2/127 and 0.02/127, both columns become [63.5 -> 64, 127]
    ([[1.0, 0.01], [2.0, 0.02]], "per-channel", 1, 8, [[64, 64], [127, 127]], [2 / 127, 0.02 / 127]),
    # the same array with rows as channels: [1, 0.01] -> [127, 1.27 -> 1], [2, 0.02] -> [127, 1]
    ([[1.0, 0.01], [2.0, 0.02]], "per-channel", 0, 8, [[127, 1], [127, 1]], [1 / 127, 2 / 127]),
    # 4 bits: qmax 7, scale 1; 3.5 -> 4
    ([7.0, 3.5, -1.0], "per-tensor", 0, 4, [7, 4, -1], [1.0]),
    # zero range: scale 1.0 stores zeros exactly (per tensor, and for the zero channel per channel)
    ([0.0, 0.0], "per-tensor", 0, 8, [0, 0], [1.0]),
    ([[0.0, 0.0], [0.5, -0.25]], "per-channel", 0, 8, [[0, 0], [127, -64]], [1.0, 0.5 / 127]),
    # empty
    (np.zeros((0, 3)), "per-tensor", 0, 8, np.zeros((0, 3)), [1.0]),
    (np.zeros((0, 3)), "per-channel", 0, 8, np.zeros((0, 3)), []),
]


@pytest.mark.parametrize("w, granularity, axis, bits, want_q, want_scales", QUANTIZE_CASES)
def test_quantize_weights_hand_computed(w, granularity, axis, bits, want_q, want_scales):
    q, scales = quantize_weights(np.asarray(w), granularity, axis, bits)
    assert q.dtype == np.int8
    np.testing.assert_array_equal(q, np.asarray(want_q))
    np.testing.assert_allclose(scales, want_scales, rtol=1e-12)


def test_quantize_weights_int16_storage_and_values_stay_in_range():
    q, scales = quantize_weights(np.array([-3.0, 1.0]), "per-tensor", bits=16)
    assert q.dtype == np.int16 and q.tolist() == [-32767, 10922] and scales[0] == pytest.approx(3 / 32767)
    rng = np.random.default_rng(0)
    q8, _ = quantize_weights(rng.normal(size=(8, 3, 3, 4)), "per-channel", 0)
    assert q8.min() >= -127 and q8.max() <= 127  # narrow range: -128 is never used


def test_dequantize_per_tensor_per_channel_and_zero_point():
    q = np.array([[1, 2], [3, 4]])
    np.testing.assert_allclose(dequantize(q, [0.5], axis=1), [[0.5, 1.0], [1.5, 2.0]])
    np.testing.assert_allclose(dequantize(q, [0.5, 2.0], axis=1), [[0.5, 4.0], [1.5, 8.0]])
    np.testing.assert_allclose(dequantize(q, [0.5, 2.0], axis=0), [[0.5, 1.0], [6.0, 8.0]])
    # legacy asymmetric uint8: (q - zp) * scale
    np.testing.assert_allclose(dequantize(np.array([128, 130]), [0.25], zero_points=[128]), [0.0, 0.5])
    with pytest.raises(DataError, match="3 scales fit neither"):
        dequantize(q, [1.0, 2.0, 3.0], axis=0)


def test_round_trip_error_is_at_most_half_a_step():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(1, 3, 3, 16)) * np.geomspace(0.01, 1, 16)
    q, scales = quantize_weights(w, "per-channel", axis=3)
    err = np.abs(dequantize(q, scales, axis=3) - w)
    assert np.all(err <= scales / 2 + 1e-12)


def test_weight_sqnr_of_a_known_quantization():
    w = np.array([127.0, 0.5, -0.5, 2.5])
    w_hat = dequantize(*quantize_weights(w, "per-tensor"))
    # ŵ = [127, 1, -1, 3]: Σw² = 16129 + 0.25 + 0.25 + 6.25 = 16135.75, Σe² = 3·0.25 = 0.75 -> 10·log10(21514.33)
    assert weight_sqnr_db(w, w_hat) == pytest.approx(43.327279, abs=1e-6)
    assert weight_sqnr_db(w, w) == INF
    assert math.isnan(weight_sqnr_db([], []))


def test_channel_sqnr_db_per_channel_edge_cases():
    w = np.array([[1.0, 0.0, 2.0], [1.0, 0.0, 0.0]])  # channels along axis 1
    w_hat = np.array([[0.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    # channel 0: Σw² = 2, Σe² = 2 -> 0 dB; channel 1: zero reference with error -> -inf; channel 2 exact -> inf
    np.testing.assert_array_equal(channel_sqnr_db(w, w_hat, axis=1), [0.0, -INF, INF])


def test_levels_and_collapse():
    q = np.array([[0, 0, 0, 0], [1, 1, 0, 0], [1, -1, 0, 2], [5, 5, 5, 5]])  # channels are rows
    assert channel_levels(q, axis=0).tolist() == [1, 2, 4, 1]
    assert collapsed_channels(q, axis=0).tolist() == [0, 1, 3]  # the all-zero channel counts
    assert collapsed_channels(q, axis=0, max_levels=1).tolist() == [0, 3]
    assert channel_levels(q, axis=-1).tolist() == [3, 4, 2, 3]  # columns {0,1,5} {0,1,-1,5} {0,5} {0,2,5}
    assert channel_levels(np.zeros((2, 0), dtype=np.int8), axis=0).tolist() == [0, 0]


def test_a_small_depthwise_channel_collapses_per_tensor_but_not_per_channel():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(1, 3, 3, 4))  # 1HWC, channels on axis 3
    w[..., 3] /= 300  # its values stay below half a per-tensor step (127/300 = 0.42 steps at most)
    q_tensor, s_tensor = quantize_weights(w, "per-tensor", axis=3)
    q_channel, s_channel = quantize_weights(w, "per-channel", axis=3)
    assert collapsed_channels(q_tensor, axis=3).tolist() == [3]
    assert channel_levels(q_tensor, axis=3)[3] == 1
    assert collapsed_channels(q_channel, axis=3).size == 0
    assert channel_levels(q_channel, axis=3).min() > 5
    # the erased channel has SQNR 0 dB exactly (ŵ = 0); per-channel keeps it at int8 quality
    assert channel_sqnr_db(w, dequantize(q_tensor, s_tensor, 3), axis=3)[3] == 0.0
    assert channel_sqnr_db(w, dequantize(q_channel, s_channel, 3), axis=3)[3] > 35


RATIO_CASES = [
    ([[1.0, 0.01, -0.02]], 1, 50.0),  # channel maxima 1, 0.01, 0.02: widest / median 0.02
    ([[1.0, -2.0], [3.0, 4.0]], 0, 4.0 / 3.0),  # rows: maxima 2 and 4, median 3
    ([[1.0, 1.0]], 1, 1.0),
    ([[0.0, 0.0, 1.0]], 1, INF),  # median channel is all zero
    ([[0.0, 0.0]], 1, NAN),  # nothing to compare
    (np.zeros((0, 4)), 0, NAN),
]


@pytest.mark.parametrize("w, axis, want", RATIO_CASES)
def test_channel_range_ratio(w, axis, want):
    got = channel_range_ratio(np.asarray(w), axis)
    assert math.isnan(got) if math.isnan(want) else got == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: quantize_weights(np.ones(3), "per-row"), "unknown granularity 'per-row'"),
        (lambda: quantize_weights(np.ones((2, 2)), "per-channel", axis=2), "axis 2 is out of range"),
        (lambda: quantize_weights(np.ones(3), "per-tensor", bits=1), "1 bits"),
        (lambda: channel_levels(np.array(3), 0), "axis 0 is out of range"),
    ],
)
def test_bad_arguments_raise_user_errors(call, message):
    with pytest.raises(UserInputError, match=message):
        call()


def test_output_channel_axes_follow_tflite_layouts():
    assert OUTPUT_CHANNEL_AXIS["CONV_2D"] == 0  # OHWI
    assert OUTPUT_CHANNEL_AXIS["DEPTHWISE_CONV_2D"] == 3  # 1HWC
    assert OUTPUT_CHANNEL_AXIS["FULLY_CONNECTED"] == 0  # (out, in)


def _depthwise_case() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(2)
    w = rng.uniform(-1, 1, size=(1, 5, 5, 8))
    w[..., 1:] *= 0.01  # seven channels ×100 smaller than the first
    q, scales = quantize_weights(w, "per-tensor", axis=3)
    return w, q, dequantize(q, scales, 3)


def test_weight_report_of_per_tensor_depthwise():
    w, q, actual = _depthwise_case()
    r = weight_report(
        op_index=3, op_type="DEPTHWISE_CONV_2D", tensor="dw", storage="int8", granularity="per-tensor",
        stored=q, actual=actual, float_weights=w, axis=3, match="exact_id",
    )
    assert r.shape == (1, 5, 5, 8) and r.num_channels == 8 and r.axis == 3
    assert r.sqnr_db_actual == pytest.approx(r.sqnr_db_per_tensor, abs=1e-9)
    per_channel = dequantize(*quantize_weights(w, "per-channel", 3), 3)
    assert r.sqnr_db_per_channel == pytest.approx(weight_sqnr_db(w, per_channel))
    # one wide channel among 8: the pooled gain is bounded by ~10·log10(8) = 9 dB, the worst channel shows the damage
    assert 5 < r.granularity_gain_db < 10
    assert r.worst_channel_sqnr_db < 10
    assert r.min_channel_levels <= 3 and r.collapsed_channels == int(collapsed_channels(q, 3).size)
    assert r.channel_range_ratio == pytest.approx(100, rel=0.1)


def test_weight_report_float_storage_and_missing_float_weights():
    w, _, _ = _depthwise_case()
    left = weight_report(
        op_index=0, op_type="DEPTHWISE_CONV_2D", tensor="dw", storage="float32", granularity="float32",
        stored=None, actual=w, float_weights=w, axis=3, note="left in float: 200 < 1024 elements",
    )
    assert left.sqnr_db_actual == INF and left.worst_channel_sqnr_db == INF
    assert left.collapsed_channels == 0 and left.min_channel_levels is None
    alone = weight_report(
        op_index=0, op_type="DEPTHWISE_CONV_2D", tensor="dw", storage="float32", granularity="float32",
        stored=None, actual=w, float_weights=None, axis=3,
    )
    assert math.isnan(alone.sqnr_db_actual) and math.isnan(alone.sqnr_db_per_channel)
    assert alone.channel_range_ratio == pytest.approx(left.channel_range_ratio)  # taken from the stored weights
    with pytest.raises(DataError, match="do not fit"):
        weight_report(
            op_index=0, op_type="CONV_2D", tensor="c", storage="float32", granularity="float32",
            stored=None, actual=np.ones((2, 3)), float_weights=np.ones((3, 2)), axis=0,
        )


def test_weight_report_dict_round_trip():
    w, q, actual = _depthwise_case()
    r = weight_report(
        op_index=1, op_type="DEPTHWISE_CONV_2D", tensor="dw", storage="int8", granularity="per-tensor",
        stored=q, actual=actual, float_weights=w, axis=3,
    )
    d = r.to_dict()
    assert d["shape"] == [1, 5, 5, 8] and d["granularity"] == "per-tensor"
    assert WeightReport.from_dict(d) == r
    with pytest.raises(DataError, match="unknown keys"):
        WeightReport.from_dict({**d, "extra": 1})
