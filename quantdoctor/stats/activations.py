"""Streaming statistics of one float activation tensor, in memory fixed by `bins` and the channel count.

`ActivationAccumulator` folds batches (first axis = samples) into moments, a log-linear histogram for percentiles,
per-channel extrema, and the shares of values the tensor's quantization grid clips or rounds to zero. It follows the
contract of `quantdoctor.stats.accumulators`: `update` mutates, `merge` returns a new accumulator, `result` returns a
frozen `ActivationStats`.

Percentile histogram (`LogHistogram`): a value's bucket is the top bits of its float32 bit pattern, i.e. its sign, its
exponent and the first `SUB_BITS` = 6 mantissa bits, so every octave [2^e, 2^(e+1)) is cut into 64 equal buckets and a
bucket is at most 1/64 (1.6 %) of its lower edge wide. Each sign keeps a window of the `bins` buckets that end at the
largest magnitude seen (2048 buckets span 32 octaves, a 4·10^9 dynamic range); magnitudes below the window fall into its
lowest bucket, whose lower edge then becomes 0, and exact zeros have a bucket of their own. Two histograms merge by
adding counts and re-windowing, which gives exactly the histogram of the concatenated data. A percentile is read off
with numpy's default (linear) rule: the order statistics it interpolates are located by cumulative count, so each lies
in a known bucket, and the estimate is off by at most the width of the wider of those (one or two) buckets; that bound
is returned next to each percentile.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantdoctor.errors import DataError, UserInputError
from quantdoctor.stats.accumulators import result_from_dict

PERCENTILES = (0.01, 0.1, 1.0, 99.0, 99.9, 99.99)
"""Percentiles (in %) reported by `ActivationStats.percentiles`, keyed as f"{p:g}" ("0.01", ..., "99.99")."""

SUB_BITS = 6
_SHIFT = 23 - SUB_BITS  # float32 mantissa bits dropped by the bucket index
_NEG = 1 << (31 - _SHIFT)  # index of -0.0: the sign bit after the shift
_END = 0x7F800000 >> _SHIFT  # index of +inf; higher indices are NaN
_CHUNK = 1 << 16  # elements per pass: small enough that the temporaries stay in cache
LEVELS = 256  # levels assumed when the rounding step is derived from `qrange`


def _edge(index: np.ndarray) -> np.ndarray:
    """Lower magnitude edge of buckets `index` (the float32 whose bit pattern starts the bucket), as float64."""
    bits = np.asarray(index, dtype=np.uint32) << np.uint32(_SHIFT)
    return bits.view(np.float32).astype(np.float64)


class LogHistogram:
    """Fixed-memory, mergeable histogram of float32 values on log-linear buckets (see the module docstring)."""

    def __init__(self, bins: int = 2048) -> None:
        if not isinstance(bins, (int, np.integer)) or not 64 <= bins <= _END:
            raise UserInputError(f"bins must be an integer in 64..{_END}, got {bins!r}")
        self.bins = int(bins)
        self.zeros = 0
        self.top = [0, 0]  # highest bucket index seen, per sign (0 = none)
        self.counts = np.zeros((2, self.bins), dtype=np.int64)  # row 0 positive, row 1 negative magnitudes
        self.collapsed = [False, False]  # the lowest window bucket holds magnitudes below its lower edge

    @staticmethod
    def raw_counts(values: np.ndarray) -> np.ndarray:
        """Counts of float32 `values` per raw bucket index (length 2·_NEG; NaN/inf land at or above `_END`)."""
        return np.bincount(np.right_shift(values.view(np.uint32), _SHIFT), minlength=2 * _NEG)

    @staticmethod
    def nonfinite(raw: np.ndarray) -> int:
        return int(raw[_END:_NEG].sum() + raw[_NEG + _END :].sum())

    def add_raw(self, raw: np.ndarray) -> None:
        """Fold in counts from `raw_counts` (summed over any number of chunks); NaN and ±inf are dropped."""
        self.zeros += int(raw[0] + raw[_NEG])
        for side in (0, 1):
            self._fold(side, raw[side * _NEG : side * _NEG + _END])

    def _lo(self, side: int) -> int:
        return max(1, self.top[side] - self.bins + 1)

    def _expanded(self, side: int) -> np.ndarray:
        """This side's window laid out by raw bucket index (length _END + bins)."""
        full = np.zeros(_END + self.bins, dtype=np.int64)
        lo = self._lo(side)
        full[lo : lo + self.bins] = self.counts[side]
        return full

    def _fold(self, side: int, raw: np.ndarray) -> None:
        """Add counts by raw bucket index (index 0, the zeros, is skipped) and slide the window up to the top."""
        full = self._expanded(side)
        full[1 : len(raw)] += raw[1:]
        nonzero = np.flatnonzero(full)
        if nonzero.size == 0:
            return
        self.top[side] = int(nonzero[-1])
        lo = self._lo(side)
        below = int(full[:lo].sum())
        full[lo] += below
        self.collapsed[side] = self.collapsed[side] or below > 0
        self.counts[side] = full[lo : lo + self.bins]

    def merge(self, other: LogHistogram) -> LogHistogram:
        if other.bins != self.bins:
            raise DataError(f"cannot merge histograms of {self.bins} and {other.bins} bins; use the same bins")
        merged = LogHistogram(self.bins)
        merged.zeros = self.zeros + other.zeros
        for hist in (self, other):
            for side in (0, 1):
                merged._fold(side, hist._expanded(side))
                merged.collapsed[side] = merged.collapsed[side] or hist.collapsed[side]
        return merged

    def _buckets(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Non-empty buckets in ascending value order: counts, lower and upper value edges."""
        parts = []
        for side, sign in ((1, -1.0), (0, 1.0)):
            lo = self._lo(side)
            index = lo + np.flatnonzero(self.counts[side])
            low, high = _edge(index), _edge(index + 1)
            if self.collapsed[side]:
                low[index == lo] = 0.0
            counts = self.counts[side][index - lo]
            parts.append((counts, low, high) if sign > 0 else (counts[::-1], -high[::-1], -low[::-1]))
            if side == 1 and self.zeros:
                parts.append((np.array([self.zeros]), np.zeros(1), np.zeros(1)))
        counts, low, high = (np.concatenate([p[i] for p in parts]) for i in range(3))
        return counts, low, high

    def percentile(self, q: float, lower: float, upper: float) -> tuple[float, float]:
        """Estimate numpy's (linear) q-th percentile and its error bound; `lower`/`upper` = the exact min/max."""
        counts, low, high = self._buckets()
        n = int(counts.sum())
        if n == 0:
            return math.nan, math.nan
        low, high = np.clip(low, lower, upper), np.clip(high, lower, upper)
        cumulative = np.cumsum(counts)
        rank = (n - 1) * q / 100.0
        k = math.floor(rank)
        estimates, widths = [], []
        for order in (k, min(k + 1, n - 1)):
            b = int(np.searchsorted(cumulative, order, side="right"))
            # Spread the bucket's values evenly by rank: the order statistic is somewhere in [low, high] anyway.
            position = (order - (cumulative[b] - counts[b]) + 0.5) / counts[b]
            estimates.append(low[b] + position * (high[b] - low[b]))
            widths.append(high[b] - low[b])
        frac = rank - k
        value = estimates[0] + frac * (estimates[1] - estimates[0])
        return float(value), float(max(widths[0], widths[1] if frac > 0 else 0.0))


@dataclass(frozen=True)
class ActivationStats:
    """What one float activation tensor looked like over a data stream.

    Moments, extrema and percentiles describe the finite values (`num_nonfinite` counts the NaN/±inf left out);
    `clipped_share` and `zero_share` are shares of all `num_values`. `std` is the population std (ddof=0) and
    `kurtosis` the excess (Fisher) kurtosis m4/m2² − 3, as `scipy.stats.kurtosis(fisher=True, bias=True)`; it is nan
    when all values are equal. `percentile_error_bounds[k]` bounds |percentiles[k] − np.percentile(values, k)|.
    `channel_range_ratio` = widest channel range (max − min) / median channel range: 1.0 for one channel or all-equal
    ranges, inf when the median range is 0 but the widest is not, nan without data.
    """

    num_values: int
    num_nonfinite: int
    min: float
    max: float
    mean: float
    std: float
    kurtosis: float
    percentiles: dict[str, float]
    percentile_error_bounds: dict[str, float]
    clipped_share: float | None
    zero_share: float | None
    channel_min: tuple[float, ...]
    channel_max: tuple[float, ...]
    channel_range_ratio: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ActivationStats:
        data = dict(data)
        for key in ("channel_min", "channel_max"):
            if key in data:
                data[key] = tuple(data[key])
        return result_from_dict(cls, data)


class ActivationAccumulator:
    """Streams float activation batches (first axis = samples) into `ActivationStats`.

    Args:
        channel_axis: axis of the batch that indexes channels (-1 for NHWC); a 1-D batch is one channel.
        qrange: (lo, hi), the float range the quantized tensor represents, scale·(qmin − zp) .. scale·(qmax − zp);
            values outside it count as clipped. None: no `clipped_share`.
        zero_level: the float value of the zero level; defaults to 0.0 (real zero is always on an affine grid).
        bins: histogram buckets per sign (see the module docstring); memory is O(bins + channels).
        step: the grid's rounding step (the scale). None derives it from `qrange` as (hi − lo) / 255, i.e. 256
            levels. Values with |x − zero_level| < step / 2 round to the zero level (`zero_share`); with neither
            step nor qrange there is no `zero_share`.

    Raises:
        UserInputError: a bad qrange, step, zero_level or bins.
    """

    def __init__(
        self,
        channel_axis: int = -1,
        qrange: tuple[float, float] | None = None,
        zero_level: float | None = None,
        bins: int = 2048,
        step: float | None = None,
    ) -> None:
        self.channel_axis = int(channel_axis)
        self.qrange = _check_qrange(qrange)
        if step is None and self.qrange is not None:
            step = (self.qrange[1] - self.qrange[0]) / (LEVELS - 1)
        if step is not None and not (math.isfinite(step) and step > 0):
            raise UserInputError(f"step must be a positive finite number (the tensor's scale), got {step!r}")
        if zero_level is not None and (step is None or not math.isfinite(zero_level)):
            raise UserInputError(f"zero_level {zero_level!r} must be finite and needs step= (the scale) or qrange=")
        self.step = None if step is None else float(step)
        self.zero_level = None if self.step is None else float(zero_level or 0.0)
        self.hist = LogHistogram(bins)
        self.num_values = self.num_nonfinite = self.num_clipped = self.num_zero = 0
        # Moments are sums of powers of (x − shift): shifting by a value near the mean keeps m2 and m4 from
        # cancelling catastrophically when |mean| ≫ std.
        self.shift: float | None = None
        self.count = 0  # finite values in the sums
        self.sums = np.zeros(4)  # Σd, Σd², Σd³, Σd⁴ with d = x − shift, float64
        self.channel_min: np.ndarray | None = None  # allocated by the first batch, which fixes the channel count
        self.channel_max: np.ndarray | None = None

    def update(self, batch: np.ndarray) -> None:
        """Fold in one batch whose first axis indexes samples.

        Float32 stays float32 element-wise (float64 stays float64, other dtypes become float32), in chunks of 64K
        elements whose temporaries stay in cache; every sum is float64.

        Raises:
            DataError: a scalar, a channel axis that is the sample axis or out of range, or a channel count that
                differs from earlier batches.
        """
        x = np.asarray(batch)
        if x.ndim == 0:
            raise DataError("got a scalar; pass a batch whose first axis indexes samples (e.g. x[None])")
        if x.dtype != np.float64:
            x = x.astype(np.float32, copy=False)
        if x.size == 0:
            return
        view = self._channel_view(np.ascontiguousarray(x))
        _, channels, inner = view.shape
        rows = max(1, _CHUNK // (channels * inner))
        raw = np.zeros(2 * _NEG, dtype=np.int64)
        # Chunk-sized buffers reused by every chunk: allocating them per chunk doubled the update time (glibc hands
        # freed blocks over 128 KiB back to the OS, so each new one page-faults).
        scratch = {np.intp: np.empty((1, min(_CHUNK, x.size)), dtype=np.intp)}
        for start in range(0, view.shape[0], rows):
            block = view[start : start + rows]
            low, high, clean = self._fold_channels(block)
            magnitude = max(abs(low), abs(high))
            wide = x.dtype == np.float64 or not 2.0**-20 <= magnitude < 2.0**20
            flat = block.reshape(-1)
            for begin in range(0, flat.size, _CHUNK):
                self._fold_values(flat[begin : begin + _CHUNK], raw, scratch, clean, wide)
        self.hist.add_raw(raw)
        self.num_values += x.size
        self.num_nonfinite += LogHistogram.nonfinite(raw)

    def _channel_view(self, x: np.ndarray) -> np.ndarray:
        """`x` as (outer, channels, inner), checking the channel axis and count."""
        if x.ndim == 1:
            shape = (x.shape[0], 1, 1)
        else:
            axis = self.channel_axis + x.ndim if self.channel_axis < 0 else self.channel_axis
            if not 0 < axis < x.ndim:
                raise DataError(
                    f"channel_axis {self.channel_axis} does not index a channel of a batch of shape {x.shape} "
                    "(axis 0 holds the samples); pass the axis of the channels"
                )
            shape = (math.prod(x.shape[:axis]), x.shape[axis], math.prod(x.shape[axis + 1 :]))
        if self.channel_min is None:
            self.channel_min = np.full(shape[1], np.inf)
            self.channel_max = np.full(shape[1], -np.inf)
        elif shape[1] != self.channel_min.size:
            raise DataError(
                f"batch of shape {x.shape} has {shape[1]} channels on axis {self.channel_axis}, earlier batches "
                f"had {self.channel_min.size}; feed one tensor per accumulator"
            )
        return x.reshape(shape)

    def _fold_values(self, chunk: np.ndarray, raw: np.ndarray, scratch: dict, clean: bool, wide: bool) -> None:
        """Add one flat chunk to the histogram counts `raw`, the shares and the moments.

        `clean`: the chunk holds no NaN/inf. `wide`: it holds magnitudes ≥ 2^20 or none ≥ 2^-20, where float32 sums of
        x⁴ could overflow or underflow, so its moments are computed in float64.
        """
        index = scratch[np.intp][0, : chunk.size]
        np.right_shift(chunk.astype(np.float32, copy=False).view(np.uint32), _SHIFT, out=index)
        np.add.at(raw, index, 1)
        if self.qrange is not None:
            self.num_clipped += int(np.count_nonzero(chunk < self.qrange[0]) + np.count_nonzero(chunk > self.qrange[1]))
        if self.step is not None:
            near = chunk > self.zero_level - self.step / 2
            near &= chunk < self.zero_level + self.step / 2
            self.num_zero += int(np.count_nonzero(near))
        values = chunk if clean else chunk[np.isfinite(chunk)]
        if values.size == 0:
            return
        if self.shift is None:
            self.shift = float(values.dtype.type(values.mean(dtype=np.float64)))
        dtype = np.float64 if wide else np.float32
        if dtype not in scratch:
            scratch[dtype] = np.empty((2, scratch[np.intp].shape[1]), dtype=dtype)
        d, d2 = scratch[dtype][:, : values.size]
        np.subtract(values, self.shift, out=d, dtype=d.dtype)
        np.multiply(d, d, out=d2)
        s1, s2 = d.sum(), d2.sum()
        d *= d2
        s3 = d.sum()
        d2 *= d2
        self.sums += (float(s1), float(s2), float(s3), float(d2.sum()))
        self.count += values.size

    def _fold_channels(self, block: np.ndarray) -> tuple[float, float, bool]:
        """Fold the per-channel extrema of `block` (outer, channels, inner) in; return its finite min and max and
        whether all its values are finite."""
        if block.shape[2] == 1:
            flat = block.reshape(block.shape[0], block.shape[1])  # channels last: reduce rows, SIMD over channels
            low, high = flat.min(axis=0), flat.max(axis=0)
        else:
            low, high = block.min(axis=(0, 2)), block.max(axis=(0, 2))
        clean = bool(np.isfinite(low).all() and np.isfinite(high).all())  # min/max propagate NaN and ±inf
        if not clean:
            # fmin/fmax skip NaN, so non-finite values are turned into NaN and drop out.
            masked = np.where(np.isfinite(block), block, np.nan)
            low, high = np.fmin.reduce(masked, axis=(0, 2)), np.fmax.reduce(masked, axis=(0, 2))
        np.fmin(self.channel_min, low, out=self.channel_min)
        np.fmax(self.channel_max, high, out=self.channel_max)
        return float(np.fmin.reduce(low)), float(np.fmax.reduce(high)), clean

    def merge(self, other: ActivationAccumulator) -> ActivationAccumulator:
        """Return a new accumulator holding both streams; `self` and `other` are unchanged.

        Raises:
            DataError: the two were built with different settings or saw different channel counts.
        """
        if not isinstance(other, ActivationAccumulator):
            raise TypeError(f"cannot merge ActivationAccumulator with {type(other).__name__}")
        if self._settings() != other._settings():
            raise DataError(
                f"cannot merge activation statistics gathered with different settings: {self._settings()} vs "
                f"{other._settings()}"
            )
        channels = {a.channel_min.size for a in (self, other) if a.channel_min is not None}
        if len(channels) > 1:
            raise DataError(f"cannot merge statistics of tensors with {sorted(channels)} channels")
        merged = ActivationAccumulator(self.channel_axis, self.qrange, self.zero_level, self.hist.bins, self.step)
        merged.hist = self.hist.merge(other.hist)
        for name in ("num_values", "num_nonfinite", "num_clipped", "num_zero", "count"):
            setattr(merged, name, getattr(self, name) + getattr(other, name))
        merged.shift = self.shift if self.shift is not None else other.shift
        merged.sums = _shifted(self.sums, self.count, self.shift, merged.shift) + _shifted(
            other.sums, other.count, other.shift, merged.shift
        )
        extrema = [(a.channel_min, a.channel_max) for a in (self, other) if a.channel_min is not None]
        if extrema:
            merged.channel_min = np.fmin.reduce([low for low, _ in extrema])
            merged.channel_max = np.fmax.reduce([high for _, high in extrema])
        return merged

    def _settings(self) -> tuple:
        return (self.channel_axis, self.qrange, self.step, self.zero_level, self.hist.bins)

    def result(self) -> ActivationStats:
        """Summarise the stream; floats are nan (tuples empty) when no finite value was seen."""
        n = self.count
        seen = self.channel_min is not None and self.channel_min.size > 0
        low = self.channel_min if seen else np.empty(0)
        high = self.channel_max if seen else np.empty(0)
        finite = low <= high  # channels that saw at least one finite value
        lowest = float(low[finite].min()) if finite.any() else math.nan
        highest = float(high[finite].max()) if finite.any() else math.nan
        mean = std = kurtosis = math.nan
        if n:
            # Central moments of d = x − shift from its raw sums (μ = Σd/n; m_k = E[(d − μ)^k]):
            #   m2 = Σd²/n − μ²,   m4 = Σd⁴/n − 4μ·Σd³/n + 6μ²·Σd²/n − 3μ⁴;   excess kurtosis = m4 / m2² − 3.
            e1, e2, e3, e4 = self.sums / n
            m2 = max(e2 - e1 * e1, 0.0)
            m4 = e4 - 4 * e1 * e3 + 6 * e1 * e1 * e2 - 3 * e1**4
            mean = self.shift + e1
            std = math.sqrt(m2) if lowest < highest else 0.0
            kurtosis = m4 / (m2 * m2) - 3.0 if lowest < highest and m2 > 0 else math.nan
        percentiles, bounds = {}, {}
        for p in PERCENTILES:
            percentiles[f"{p:g}"], bounds[f"{p:g}"] = self.hist.percentile(p, lowest, highest)
        total = self.num_values
        return ActivationStats(
            num_values=total,
            num_nonfinite=self.num_nonfinite,
            min=lowest,
            max=highest,
            mean=mean,
            std=std,
            kurtosis=kurtosis,
            percentiles=percentiles,
            percentile_error_bounds=bounds,
            clipped_share=None if self.qrange is None else _share(self.num_clipped, total),
            zero_share=None if self.step is None else _share(self.num_zero, total),
            channel_min=tuple(float(v) if ok else math.nan for v, ok in zip(low, finite)),
            channel_max=tuple(float(v) if ok else math.nan for v, ok in zip(high, finite)),
            channel_range_ratio=channel_range_ratio(high[finite] - low[finite]),
        )


def channel_range_ratio(ranges: np.ndarray) -> float:
    """Widest / median of per-channel ranges: 1.0 for one channel or all ranges 0, inf if only the median is 0."""
    if ranges.size == 0:
        return math.nan
    widest, median = float(ranges.max()), float(np.median(ranges))
    if median == 0.0:
        return 1.0 if widest == 0.0 else math.inf
    return widest / median


def _shifted(sums: np.ndarray, n: int, old: float | None, new: float | None) -> np.ndarray:
    """Re-express Σ(x − old)^k, k = 1..4, as Σ(x − new)^k by the binomial expansion of ((x − old) + δ)^k."""
    if n == 0 or old is None or new is None or old == new:
        return sums.copy()
    (s1, s2, s3, s4), a = sums, old - new
    s = (s1 + n * a, s2 + 2 * a * s1 + n * a**2, s3 + 3 * a * s2 + 3 * a**2 * s1 + n * a**3)
    return np.array([*s, s4 + 4 * a * s3 + 6 * a**2 * s2 + 4 * a**3 * s1 + n * a**4])


def _share(count: int, total: int) -> float:
    return count / total if total else math.nan


def _check_qrange(qrange: tuple[float, float] | None) -> tuple[float, float] | None:
    if qrange is None:
        return None
    try:
        lo, hi = (float(v) for v in qrange)
        valid = math.isfinite(lo) and math.isfinite(hi) and lo < hi
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise UserInputError(f"qrange must be a finite pair lo < hi, scale·(qmin − zp, qmax − zp); got {qrange!r}")
    return lo, hi
