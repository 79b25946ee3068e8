"""Per-sample coverage of the quantization grid: how many integer levels one sample's activations occupy.

A tensor whose samples each sit in two or three levels carries almost no information through the quantized model,
whatever its error statistics pooled over the data set say. For every sample (first axis) the values are quantized as
the runtime would and the distinct integer levels and their span are counted; only fixed-size histograms over those
counts are kept, so memory does not grow with the data.

Modes:
- "static": the tensor's own scale and zero point (full-integer models): q = clip(round(x / scale) + zp, qmin, qmax).
- "dynamic": what TFLite's dynamic-range (hybrid) kernels do to their float input: each sample is quantized to int8
  with its own parameters. Asymmetric (current kernels, `asymmetric_quantize_inputs`, as in
  `tensor_utils::AsymmetricQuantizeFloats`): rmin = min(x, 0), rmax = max(x, 0), scale = (rmax − rmin) / 255 in
  double, zp = round(−128 − rmin / scale) (TFLite takes whichever of the min- or max-anchored zero point has the smaller
  error term; they agree up to rounding) clipped to [−128, 127], q = clip(round(zp + x · (1 / scale)), −128, 127) in
  float32; an all-zero sample gets scale 1, zp 0. Symmetric (`symmetric=True`, older kernels,
  `SymmetricQuantizeFloats`): scale = max|x| / 127, q = clip(round(x · 127 / max|x|), −127, 127).

Rounding is half away from zero, as TFLite's `TfLiteRound` (std::round). NaN values fall on no level.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from quantdoctor.errors import DataError, UserInputError
from quantdoctor.stats.accumulators import result_from_dict

_CHUNK = 1 << 16  # elements quantized per pass: the temporaries stay in cache
_MAX_EXACT = 1 << 24  # float32 holds every integer below this, so bin indices are built in float32
MAX_GRID = 1 << 16  # widest grid (int16) whose level histogram is kept
MAX_BINS = 256
"""The result keeps histograms over grids of at most this many levels (8-bit) level by level; wider grids' (16-bit)
are cut to their occupied range and summed into at most this many bins, so a report does not grow with the bit width."""

Levels = Callable[[np.ndarray, np.ndarray, np.ndarray], None]
"""levels(piece, work, out): write the float levels of `piece` (a column slice of the rows) to `out`; `work` is
scratch of the same shape, whose contents are destroyed. Buffers are reused because allocating them per piece costs
more than the arithmetic (glibc returns freed blocks over 128 KiB to the OS, so each new one page-faults)."""

Quantizer = Callable[[np.ndarray], Levels]
"""Given a group of sample rows, returns their `Levels` function (dynamic mode derives parameters from the rows)."""


class GridMode(str, enum.Enum):
    STATIC = "static"
    DYNAMIC = "dynamic"


def round_half_away(y: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Round half away from zero like C's std::round into `out` (new if None); `y` is overwritten with its fraction.

    Exact for every float: floor(|y| + 0.5) is not (0.49999997 + 0.5 rounds up to 1.0 in float32).
    """
    whole = np.trunc(y, out=out)
    y -= whole  # the fraction, exactly
    whole += y >= 0.5
    whole -= y <= -0.5
    return whole


def static_quantizer(scale: float, zero_point: int, qmin: int, qmax: int) -> Quantizer:
    """Levels clip(round(x / scale) + zero_point, qmin, qmax), computed in float32 as TFLite's Quantize op does."""
    scale32 = np.float32(scale)

    def levels(piece: np.ndarray, work: np.ndarray, out: np.ndarray) -> None:
        np.divide(piece, scale32, out=work, dtype=np.float32)
        round_half_away(work, out)
        out += zero_point
        np.clip(out, qmin, qmax, out=out)

    return lambda rows: levels


def dynamic_params(x: np.ndarray, symmetric: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample (scale, zero_point) TFLite's hybrid kernels give a float input (formulas in the module docstring).

    Returns float32 scales and int32 zero points, one per sample (first axis); NaN values are ignored.
    """
    scale, zero_point, _ = _dynamic_rows(_rows(x), symmetric)
    return scale, zero_point


def _dynamic_rows(rows: np.ndarray, symmetric: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row float32 scale, int32 zero point and the float32 multiplier the kernel applies to x."""
    n = rows.shape[0]
    if rows.shape[1] == 0:
        return np.ones(n, np.float32), np.zeros(n, np.int32), np.ones(n, np.float32)
    low = np.fmin(np.fmin.reduce(rows, axis=1), 0).astype(np.float32)
    high = np.fmax(np.fmax.reduce(rows, axis=1), 0).astype(np.float32)
    if symmetric:
        span = np.maximum(-low, high)
        zero = span == 0  # an all-zero row: every value quantizes to 0 whatever the multiplier
        span[zero] = 127
        return span / np.float32(127), np.zeros(n, np.int32), np.float32(127) / span
    low, high = low.astype(np.float64), high.astype(np.float64)
    zero = low == high
    scale = np.where(zero, 1.0, high - low) / np.where(zero, 1.0, 255.0)
    from_min, from_max = -128.0 - low / scale, 127.0 - high / scale
    zp = np.where(128.0 + np.abs(low / scale) < 127.0 + np.abs(high / scale), from_min, from_max)
    zp = np.where(zero, 0, np.clip(round_half_away(zp), -128, 127)).astype(np.int32)
    scale32 = scale.astype(np.float32)
    return scale32, zp, np.float32(1) / scale32


def dynamic_quantizer(symmetric: bool) -> Quantizer:
    """Levels of each row quantized with its own parameters, as `_dynamic_rows` gives them."""
    lowest = -127 if symmetric else -128

    def prepare(rows: np.ndarray) -> Levels:
        _, zp, inverse = _dynamic_rows(rows, symmetric)
        multiplier, offset = inverse[:, None], zp.astype(np.float32)[:, None]

        def levels(piece: np.ndarray, work: np.ndarray, out: np.ndarray) -> None:
            np.multiply(piece, multiplier, out=work, dtype=np.float32)
            work += offset  # added before rounding, as the kernel does
            round_half_away(work, out)
            np.clip(out, lowest, 127, out=out)

        return levels

    return prepare


def sample_levels(
    x: np.ndarray, quantizer: Quantizer, qmin: int, qmax: int, occupancy: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample distinct-level counts and spans (max_level − min_level + 1; 0 for a sample without values).

    `occupancy` (qmax − qmin + 1 counters), when given, is incremented by the number of values on each level.

    Vectorised: the levels of a group of rows are offset by row·(qmax − qmin + 2) and counted in one pass
    (np.bincount into a fixed counts array); one extra column per row takes the NaNs.
    """
    rows = _rows(x)
    n, width = rows.shape
    size = qmax - qmin + 1
    stride = size + 1
    distinct, span = np.zeros(n, np.int64), np.zeros(n, np.int64)
    if width == 0:
        return distinct, span
    group = max(1, min(_CHUNK // width, _MAX_EXACT // stride))
    buffer = min(_CHUNK, n * width) if width <= _CHUNK else _CHUNK
    work, out, index = np.empty(buffer, np.float32), np.empty(buffer, np.float32), np.empty(buffer, np.intp)
    for start in range(0, n, group):
        block = rows[start : start + group]
        g = block.shape[0]
        levels = quantizer(block)
        offsets = (np.arange(g, dtype=np.float32) * stride - qmin)[:, None]
        counts = np.zeros(g * stride, np.int64)
        for begin in range(0, width, _CHUNK):  # several pieces only when one row is longer than a chunk
            piece = block[:, begin : begin + _CHUNK]
            m = piece.size
            q = out[:m].reshape(piece.shape)
            levels(piece, work[:m].reshape(piece.shape), q)
            np.copyto(q, qmax + 1, where=np.isnan(q))  # clip keeps NaN; send it to the spare column
            q += offsets
            np.copyto(index[:m], q.reshape(-1), casting="unsafe")
            counts += np.bincount(index[:m], minlength=counts.size)
        by_row = counts.reshape(g, stride)[:, :size]
        if occupancy is not None:
            occupancy += by_row.sum(axis=0)
        present = by_row > 0
        first = present.argmax(axis=1)
        last = size - 1 - present[:, ::-1].argmax(axis=1)
        distinct[start : start + g] = present.sum(axis=1)
        span[start : start + g] = np.where(present.any(axis=1), last - first + 1, 0)
    return distinct, span


def distinct_levels(
    x: np.ndarray, scale: float, zero_point: int = 0, qmin: int = -128, qmax: int = 127
) -> np.ndarray:
    """Number of distinct integer levels each sample (first axis) occupies after static quantization.

    count_i = |{clip(round(x_ij / scale) + zero_point, qmin, qmax) : j}|, rounding half away from zero in float32.
    E.g. [0, 0.1, 0.2, 5.0] with scale 0.1 → levels {0, 1, 2, 50} → 4. A sample without values has 0 levels.

    Raises:
        UserInputError: a scale that is not positive and finite, or qmin ≥ qmax.
        DataError: a scalar input (no sample axis).
    """
    _check_static(scale, zero_point, qmin, qmax)
    return sample_levels(x, static_quantizer(scale, zero_point, qmin, qmax), qmin, qmax)[0]


def _rows(x: np.ndarray) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim == 0:
        raise DataError("got a scalar; pass a batch whose first axis indexes samples (e.g. x[None])")
    if a.dtype != np.float64:
        a = a.astype(np.float32, copy=False)
    return np.ascontiguousarray(a).reshape(a.shape[0], math.prod(a.shape[1:]))


def _check_static(scale: float | None, zero_point: int, qmin: int, qmax: int) -> None:
    if scale is None or not (math.isfinite(scale) and scale > 0):
        raise UserInputError(f"static mode needs the tensor's scale, a positive finite number; got {scale!r}")
    if not qmin < qmax:
        raise UserInputError(f"qmin must be below qmax, got qmin={qmin}, qmax={qmax}")
    if qmax - qmin + 1 > MAX_GRID:
        raise UserInputError(f"grids wider than 16 bits are not supported (qmin={qmin}, qmax={qmax})")
    if int(zero_point) != zero_point or not qmin <= zero_point <= qmax:
        raise UserInputError(f"zero_point {zero_point} must be an integer in [qmin, qmax] = [{qmin}, {qmax}]")


@dataclass(frozen=True)
class GridCoverage:
    """How much of the quantization grid single samples use, over a data stream.

    `*_levels` are statistics over samples of the number of distinct levels a sample occupies; `*_span` of the share
    of the grid its levels span, (max_level − min_level + 1) / grid_size. Percentiles follow np.percentile (linear)
    over the per-sample values, exactly, as do `mean_levels` and `few_levels_share` (share of samples on ≤ `few`
    levels). `grid_size` is qmax − qmin + 1 (255 for the symmetric dynamic variant, whose levels are −127..127).
    Floats are nan when no sample was seen.

    The histograms are exact on grids of at most `MAX_BINS` levels (int8: every bin width 1). On wider grids (int16)
    they are binned to at most `MAX_BINS` bins, each bin summing the counts of `*bin_width` consecutive values:
    - `levels_histogram[k]` = samples occupying k·levels_bin_width .. (k + 1)·levels_bin_width − 1 levels (from 0 up
      to the most any sample occupies; on 8-bit grids k = 0..grid_size).
    - `occupancy[k]` counts the values on levels first_level + k·bin_width .. first_level + (k + 1)·bin_width − 1 over
      all samples, `first_sample_occupancy` those of the first sample (empty if none): the whole-data and one-sample
      distributions on the grid, for the report's histogram. On wider grids the bins cover the occupied levels only.
    `first_sample_levels` is the exact number of levels the first sample occupies (0 if none).
    """

    num_samples: int
    grid_size: int
    median_levels: float
    p5_levels: float
    mean_levels: float
    median_span: float
    p5_span: float
    few: int
    few_levels_share: float
    levels_histogram: tuple[int, ...]
    qmin: int = -128
    scale: float | None = None  # the step in "static" mode (level value = scale · (level − zero_point)); None if dynamic
    zero_point: int = 0
    occupancy: tuple[int, ...] = ()
    first_sample_occupancy: tuple[int, ...] = ()
    first_level: int = -128
    bin_width: int = 1
    levels_bin_width: int = 1
    first_sample_levels: int = 0

    def bin_centers(self) -> np.ndarray:
        """The level in the middle of each `occupancy` bin (the level itself when bins are one level wide)."""
        return self.first_level + self.bin_width * np.arange(len(self.occupancy)) + (self.bin_width - 1) / 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GridCoverage:
        data = dict(data)
        data.setdefault("first_level", data.get("qmin", -128))  # reports before 1.3: occupancy started at qmin
        for key in ("levels_histogram", "occupancy", "first_sample_occupancy"):
            if key in data:
                data[key] = tuple(data[key])
        return result_from_dict(cls, data)


class GridCoverageAccumulator:
    """Streams batches (first axis = samples) into the `GridCoverage` of one tensor's quantization grid.

    Args:
        scale, zero_point, qmin, qmax: the tensor's quantization ("static"); "dynamic" computes them per sample and
            needs scale=None and the int8 defaults.
        mode: "static" or "dynamic" (see the module docstring).
        few: samples on ≤ this many levels count towards `few_levels_share`.
        symmetric: in "dynamic" mode, the symmetric per-sample variant of older TFLite kernels.

    Raises:
        UserInputError: parameters that do not fit the mode.
    """

    def __init__(
        self,
        scale: float | None,
        zero_point: int = 0,
        qmin: int = -128,
        qmax: int = 127,
        mode: str = "static",
        few: int = 16,
        symmetric: bool = False,
    ) -> None:
        try:
            self.mode = GridMode(mode)
        except ValueError:
            raise UserInputError(f"mode must be 'static' or 'dynamic', got {mode!r}") from None
        if few < 0:
            raise UserInputError(f"few must be ≥ 0, got {few}")
        if self.mode is GridMode.STATIC:
            if symmetric:
                raise UserInputError("symmetric applies to mode='dynamic'; a symmetric static tensor has zero_point=0")
            _check_static(scale, zero_point, qmin, qmax)
            self.quantizer = static_quantizer(scale, zero_point, qmin, qmax)
        else:
            if scale is not None or zero_point != 0 or (qmin, qmax) != (-128, 127):
                raise UserInputError(
                    "dynamic mode quantizes each sample to int8 with its own scale; pass scale=None and leave "
                    "zero_point, qmin and qmax at their defaults"
                )
            self.quantizer = dynamic_quantizer(symmetric)
        # constructor arguments: merge checks them and builds the merged accumulator from them
        scale = None if scale is None else float(scale)
        self.settings = (scale, int(zero_point), int(qmin), int(qmax), self.mode.value, int(few), bool(symmetric))
        self.few = int(few)
        self.qmin, self.qmax = (-127, 127) if symmetric else (int(qmin), int(qmax))
        size = self.qmax - self.qmin + 1
        self.levels_histogram = np.zeros(size + 1, np.int64)  # index = distinct levels of a sample
        self.span_histogram = np.zeros(size + 1, np.int64)  # index = max_level − min_level + 1
        self.occupancy = np.zeros(size, np.int64)  # values on each level (level qmin + i), over all samples
        self.first_sample: np.ndarray | None = None  # the same for the first sample seen (the report's "one sample")

    def update(self, batch: np.ndarray) -> None:
        """Fold in one batch whose first axis indexes samples.

        Raises:
            DataError: a scalar (no sample axis).
        """
        distinct, span = sample_levels(batch, self.quantizer, self.qmin, self.qmax, self.occupancy)
        if self.first_sample is None and len(distinct):
            self.first_sample = np.zeros_like(self.occupancy)
            sample_levels(batch[:1], self.quantizer, self.qmin, self.qmax, self.first_sample)
        self.levels_histogram += np.bincount(distinct, minlength=self.levels_histogram.size)
        self.span_histogram += np.bincount(span, minlength=self.span_histogram.size)

    def merge(self, other: GridCoverageAccumulator) -> GridCoverageAccumulator:
        """Return a new accumulator holding both streams; `self` and `other` are unchanged.

        Raises:
            DataError: the two count levels on different grids.
        """
        if not isinstance(other, GridCoverageAccumulator):
            raise TypeError(f"cannot merge GridCoverageAccumulator with {type(other).__name__}")
        if self.settings != other.settings:
            raise DataError(f"cannot merge grid coverage of different grids: {self.settings} vs {other.settings}")
        merged = GridCoverageAccumulator(*self.settings)
        merged.levels_histogram = self.levels_histogram + other.levels_histogram
        merged.span_histogram = self.span_histogram + other.span_histogram
        merged.occupancy = self.occupancy + other.occupancy
        merged.first_sample = self.first_sample if self.first_sample is not None else other.first_sample
        return merged

    def result(self) -> GridCoverage:
        n = int(self.levels_histogram.sum())
        size = self.qmax - self.qmin + 1
        levels = np.arange(size + 1)
        first = self.first_sample if self.first_sample is not None else np.zeros(0, np.int64)
        if size <= MAX_BINS:  # kept level by level
            hist_stop, occupied, bins = size + 1, (0, size), size + 1
        else:  # only the occupied range, binned: what a report of a 16-bit grid can show
            present = np.flatnonzero(self.levels_histogram)
            hist_stop = int(present[-1]) + 1 if present.size else 0
            seen = np.flatnonzero(self.occupancy)  # the first sample's levels are among them
            occupied = (int(seen[0]), int(seen[-1]) + 1) if seen.size else (0, 0)
            bins = MAX_BINS
        levels_histogram, levels_bin_width = bin_counts(self.levels_histogram[:hist_stop], bins)
        occupancy, bin_width = bin_counts(self.occupancy[slice(*occupied)], bins)
        return GridCoverage(
            num_samples=n,
            grid_size=size,
            median_levels=histogram_percentile(self.levels_histogram, 50.0),
            p5_levels=histogram_percentile(self.levels_histogram, 5.0),
            mean_levels=float(levels @ self.levels_histogram) / n if n else math.nan,
            median_span=histogram_percentile(self.span_histogram, 50.0) / size,
            p5_span=histogram_percentile(self.span_histogram, 5.0) / size,
            few=self.few,
            few_levels_share=int(self.levels_histogram[: self.few + 1].sum()) / n if n else math.nan,
            levels_histogram=levels_histogram,
            qmin=self.qmin,
            scale=self.settings[0],
            zero_point=self.settings[1],
            occupancy=occupancy,
            first_sample_occupancy=bin_counts(first[slice(*occupied)], bins)[0] if first.size else (),
            first_level=self.qmin + occupied[0],
            bin_width=bin_width,
            levels_bin_width=levels_bin_width,
            first_sample_levels=int(np.count_nonzero(first)),
        )


def bin_counts(counts: np.ndarray, max_bins: int) -> tuple[tuple[int, ...], int]:
    """`counts` summed over consecutive bins of width ⌈len / max_bins⌉ (the last bin may be narrower).

    Returns:
        (the bin sums as ints, the bin width); an empty `counts` gives ((), 1).
    """
    width = max(1, -(-len(counts) // max_bins))
    if width == 1:
        return tuple(int(c) for c in counts), 1
    return tuple(int(c) for c in np.add.reduceat(counts, np.arange(0, len(counts), width))), width


def histogram_percentile(counts: np.ndarray, q: float) -> float:
    """np.percentile(values, q) (linear rule) of integers 0..len(counts)−1 given as counts per value; nan if empty."""
    n = int(counts.sum())
    if n == 0:
        return math.nan
    cumulative = np.cumsum(counts)
    rank = (n - 1) * q / 100.0
    k = math.floor(rank)
    below, above = np.searchsorted(cumulative, [k, min(k + 1, n - 1)], side="right")
    return float(below + (rank - k) * (above - below))
