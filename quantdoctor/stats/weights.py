"""How well a weight tensor survives integer quantization, per tensor and per output channel (pure numpy).

TFLite stores int8 weights symmetrically: zero point 0, scale = max|w| / 127 over the whole tensor (per-tensor) or over
each output channel (per-channel), values round(w / scale) clipped to the narrow range [-127, 127]. The output-channel
axis depends on the op's weight layout (see `OUTPUT_CHANNEL_AXIS`):

- CONV_2D and TRANSPOSE_CONV: OHWI, axis 0;
- DEPTHWISE_CONV_2D: 1HWC (C = input channels x depth multiplier), axis 3;
- FULLY_CONNECTED: (out, in), axis 0;
- CONV_3D: DHWIO, axis 4.

The classic failure this module measures: per-tensor weights on a depthwise conv whose channels, after BatchNorm
folding, span ranges ×100 apart; the small channels then fall on one or two integer levels ("collapse").
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from quantdoctor.errors import DataError, UserInputError
from quantdoctor.stats.accumulators import result_from_dict
from quantdoctor.stats.grid import round_half_away
from quantdoctor.stats.metrics import sqnr_db, sqnr_from_sums

Granularity = Literal["per-tensor", "per-channel"]

OUTPUT_CHANNEL_AXIS: dict[str, int] = {
    "CONV_2D": 0,
    "TRANSPOSE_CONV": 0,
    "DEPTHWISE_CONV_2D": 3,
    "FULLY_CONNECTED": 0,
    "CONV_3D": 4,
}

COLLAPSE_MAX_LEVELS = 2
"""A channel whose quantized values take at most this many distinct levels has collapsed (it keeps a sign at best)."""


def _axis(array: np.ndarray, axis: int) -> int:
    if array.ndim == 0 or not -array.ndim <= axis < array.ndim:
        raise UserInputError(f"axis {axis} is out of range for a weight tensor of shape {array.shape}")
    return axis % array.ndim


def _channels_first(array: np.ndarray, axis: int) -> np.ndarray:
    """View as (channels, elements per channel)."""
    a = _axis(array, axis)
    per_channel = math.prod(n for i, n in enumerate(array.shape) if i != a)  # explicit: reshape(0, -1) is ambiguous
    return np.moveaxis(array, a, 0).reshape(array.shape[a], per_channel)


def _broadcast(values: np.ndarray, ndim: int, axis: int) -> np.ndarray:
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def channel_max_abs(w: np.ndarray, axis: int) -> np.ndarray:
    """max|w| of each output channel along `axis` (0.0 for a channel without elements)."""
    flat = np.abs(_channels_first(np.asarray(w, dtype=np.float64), axis))
    return flat.max(axis=1, initial=0.0)


def quantize_weights(
    w: np.ndarray, granularity: Granularity = "per-channel", axis: int = 0, bits: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Quantize weights the way TFLite does: symmetric, narrow range, zero point 0.

    scale = max|w| / qmax over the tensor or over each channel along `axis`, qmax = 2^(bits−1) − 1 (127 for int8);
    q = clip(round(w / scale), −qmax, qmax), rounding half away from zero like TFLite's `std::round`.
    A zero range (an all-zero tensor or channel) gets scale 1.0: any scale stores zeros exactly.

    Returns:
        (q, scales): q has w's shape (int8 for bits ≤ 8, else int16 or int32); scales has 1 element per-tensor or
        w.shape[axis] per-channel.

    Raises:
        UserInputError: unknown granularity, bits outside 2..31, or `axis` out of range for per-channel.
    """
    if not 2 <= bits <= 31:
        raise UserInputError(f"cannot quantize weights to {bits} bits; use 2 to 31 bits (TFLite weights use 8)")
    w64 = np.asarray(w, dtype=np.float64)
    qmax = 2 ** (bits - 1) - 1
    if granularity == "per-tensor":
        widest = float(np.abs(w64).max(initial=0.0))
        scales = np.array([widest / qmax if widest > 0 else 1.0])
        expanded = scales[0]
    elif granularity == "per-channel":
        a = _axis(w64, axis)
        widest_c = channel_max_abs(w64, a)
        scales = np.where(widest_c > 0, widest_c / qmax, 1.0)
        expanded = _broadcast(scales, w64.ndim, a)
    else:
        raise UserInputError(f"unknown granularity '{granularity}'; use 'per-tensor' or 'per-channel'")
    scaled = w64 / expanded
    rounded = round_half_away(scaled)  # overwrites `scaled`, a temporary
    dtype = np.int8 if bits <= 8 else np.int16 if bits <= 16 else np.int32
    return np.clip(rounded, -qmax, qmax).astype(dtype), scales


def dequantize(
    q: np.ndarray, scales: np.ndarray, axis: int = 0, zero_points: np.ndarray | None = None
) -> np.ndarray:
    """Float64 weights (q − zero_point) · scale; one scale means per-tensor (`axis` ignored), else one per channel.

    Zero points default to 0 (TFLite weights are symmetric); legacy uint8 weights carry a non-zero one.

    Raises:
        DataError: the number of scales (or zero points) fits neither per-tensor nor the channels along `axis`.
    """
    q64 = np.asarray(q, dtype=np.float64)
    s = np.asarray(scales, dtype=np.float64).ravel()
    zp = np.zeros(1) if zero_points is None else np.asarray(zero_points, dtype=np.float64).ravel()
    if s.size == 1 and zp.size == 1:
        return (q64 - zp[0]) * s[0]
    a = _axis(q64, axis)
    channels = q64.shape[a]
    for name, values in (("scales", s), ("zero points", zp)):
        if values.size not in (1, channels):
            raise DataError(
                f"{values.size} {name} fit neither per-tensor nor {channels} channels along axis {a} of a "
                f"tensor of shape {q64.shape}; the model's quantization parameters are inconsistent"
            )
    s = np.broadcast_to(s, (channels,))
    zp = np.broadcast_to(zp, (channels,))
    return (q64 - _broadcast(zp, q64.ndim, a)) * _broadcast(s, q64.ndim, a)


def weight_sqnr_db(w: np.ndarray, w_hat: np.ndarray) -> float:
    """SQNR of reconstructed weights: 10·log10(Σw² / Σ(w − ŵ)²), with the conventions of `metrics.sqnr_db`.

    Pooled over the tensor, so the widest channels dominate: with one wide channel among C, per-tensor loses at most
    about 10·log10(C) dB against per-channel however badly the small channels collapse (see `channel_sqnr_db`).
    """
    return sqnr_db(w, w_hat)


def channel_sqnr_db(w: np.ndarray, w_hat: np.ndarray, axis: int) -> np.ndarray:
    """SQNR in dB of each output channel along `axis`; +inf for an exact channel, −inf for a lost non-zero one."""
    ref = _channels_first(np.asarray(w, dtype=np.float64), axis)
    err = ref - _channels_first(np.asarray(w_hat, dtype=np.float64), axis)
    signal, noise = (ref * ref).sum(axis=1), (err * err).sum(axis=1)
    return np.array([sqnr_from_sums(float(s), float(n)) for s, n in zip(signal, noise, strict=True)])


def channel_levels(q: np.ndarray, axis: int) -> np.ndarray:
    """Number of distinct integer values in each output channel along `axis` (0 for a channel without elements)."""
    flat = np.sort(_channels_first(np.asarray(q), axis), axis=1)  # vectorised: np.unique per row is 10x slower
    if flat.shape[1] == 0:
        return np.zeros(flat.shape[0], dtype=np.int64)
    return 1 + np.count_nonzero(np.diff(flat, axis=1), axis=1).astype(np.int64)


def collapsed_channels(q: np.ndarray, axis: int, max_levels: int = COLLAPSE_MAX_LEVELS) -> np.ndarray:
    """Indices of the channels along `axis` whose quantized values take ≤ `max_levels` distinct levels.

    An all-zero channel (one level) counts: quantization erased it.
    """
    return np.flatnonzero(channel_levels(q, axis) <= max_levels)


def channel_range_ratio(w: np.ndarray, axis: int) -> float:
    """Spread of channel ranges: max_c max|w_c| / median_c max|w_c| along `axis`.

    1.0 for equal channels; ≈100 is the depthwise-after-BatchNorm case per-tensor weights cannot hold. Empty or
    all-zero weights -> nan; a zero median with a non-zero widest channel -> +inf.
    """
    widest = channel_max_abs(w, axis)
    if widest.size == 0 or not np.any(widest > 0):
        return math.nan
    median = float(np.median(widest))
    return math.inf if median == 0.0 else float(widest.max()) / median


@dataclass(frozen=True)
class WeightReport:
    """How one op's weights were stored, what that cost, and what the other int8 granularity would have cost.

    `sqnr_db_actual` compares the float model's weights with the values the quantized model really computes with;
    `sqnr_db_per_tensor` / `sqnr_db_per_channel` simulate int8 with `quantize_weights` from the float weights.
    `granularity` is "per-tensor" or "per-channel" for integer storage, else the float storage dtype ("float16", or
    "float32" for weights left in float). Counts of levels are None when the storage is not integer. `match` says how
    the float op was found (a `MatchMethod` value, "" when none was). Sentinels: nan when not measurable (no float
    counterpart), +inf for an exact copy.
    """

    op_index: int
    op_type: str
    tensor: str
    shape: tuple[int, ...]
    axis: int
    storage: str
    granularity: str
    sqnr_db_actual: float
    sqnr_db_per_tensor: float
    sqnr_db_per_channel: float
    worst_channel_sqnr_db: float  # lowest per-channel SQNR under the actual storage
    collapsed_channels: int
    num_channels: int
    min_channel_levels: int | None
    channel_range_ratio: float
    match: str = ""
    note: str = ""
    channel_max_abs: tuple[float, ...] = ()  # max |w| per output channel (float weights when known), for the figure
    step: float = math.nan  # the stored grid's step for per-tensor integer weights (the scale), else nan

    @property
    def granularity_gain_db(self) -> float:
        """SQNR per-channel int8 would add over what is stored (≈ 0 when already per-channel, < 0 for float16)."""
        return self.sqnr_db_per_channel - self.sqnr_db_actual

    def to_dict(self) -> dict[str, Any]:
        """Plain types; inf/nan stay floats (the report's JSON writer encodes them)."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["channel_max_abs"] = list(self.channel_max_abs)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> WeightReport:
        return result_from_dict(
            cls, {**data, "shape": tuple(data.get("shape", ())), "channel_max_abs": tuple(data.get("channel_max_abs", ()))}
        )


def weight_report(
    *,
    op_index: int,
    op_type: str,
    tensor: str,
    storage: str,
    granularity: str,
    stored: np.ndarray | None,
    actual: np.ndarray,
    float_weights: np.ndarray | None,
    axis: int,
    match: str = "",
    note: str = "",
    step: float = math.nan,
) -> WeightReport:
    """Measure one weight tensor: the stored quantization against the float weights, and both int8 granularities.

    Args:
        granularity: how it is stored: "per-tensor", "per-channel", or the float storage dtype.
        stored: the integer values as stored; None for float storage (level counts are then None, collapse 0).
        actual: the weights the quantized model computes with (dequantized integers, or the float values).
        float_weights: the same op's weights in the float model; None when no float op was paired, which leaves
            the SQNRs nan and takes the channel ranges from `actual`.
        axis: the output-channel axis of the stored layout.

    Raises:
        DataError: `actual` or `float_weights` does not have the stored shape.
    """
    actual = np.asarray(actual, dtype=np.float64)
    a = _axis(actual, axis)
    if float_weights is not None and np.shape(float_weights) != actual.shape:
        raise DataError(
            f"float weights of shape {np.shape(float_weights)} do not fit the stored weights {actual.shape} "
            f"of '{tensor}'"
        )
    nan = math.nan
    if float_weights is None:
        actual_db = per_tensor_db = per_channel_db = worst_db = nan
        ranges_from = actual
    else:
        ref = np.asarray(float_weights, dtype=np.float64)
        actual_db = weight_sqnr_db(ref, actual)
        per_tensor_db = weight_sqnr_db(ref, dequantize(*quantize_weights(ref, "per-tensor", a), a))
        per_channel_db = weight_sqnr_db(ref, dequantize(*quantize_weights(ref, "per-channel", a), a))
        by_channel = channel_sqnr_db(ref, actual, a)
        worst_db = float(by_channel.min()) if by_channel.size else nan
        ranges_from = ref
    levels = None if stored is None else channel_levels(stored, a)
    return WeightReport(
        op_index=op_index,
        op_type=op_type,
        tensor=tensor,
        shape=tuple(int(n) for n in actual.shape),
        axis=a,
        storage=storage,
        granularity=granularity,
        sqnr_db_actual=actual_db,
        sqnr_db_per_tensor=per_tensor_db,
        sqnr_db_per_channel=per_channel_db,
        worst_channel_sqnr_db=worst_db,
        collapsed_channels=0 if levels is None else int(np.count_nonzero(levels <= COLLAPSE_MAX_LEVELS)),
        num_channels=int(actual.shape[a]),
        min_channel_levels=None if levels is None or levels.size == 0 else int(levels.min()),
        channel_range_ratio=channel_range_ratio(ranges_from, a),
        match=match,
        note=note,
        channel_max_abs=tuple(float(v) for v in channel_max_abs(ranges_from, a)),
        step=float(step),
    )
