"""Per-channel (last axis) error statistics of a tensor, streamed in O(channels) memory, and channel groups.

A tensor whose channels carry different quantities (box coordinates in pixels next to class scores in [0, 1], or a
head that concatenates several outputs) shares one quantization scale across ranges that differ by orders of
magnitude; the narrow channels then fall on a handful of grid levels. `ChannelErrorAccumulator` keeps the sums that
measure each channel, `group_channels` finds the runs of channels of similar range, and `group_sqnr` measures a run.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantdoctor.errors import DataError
from quantdoctor.stats.accumulators import result_from_dict
from quantdoctor.stats.metrics import sqnr_from_sums

CHUNK_ELEMENTS = 1 << 20  # elements converted to float64 at a time


@dataclass(frozen=True)
class ChannelError:
    """Per-channel sums of a reference/test stream; channel c is entry c of each tuple.

    `count` is the number of elements each channel holds (samples × the other axes). `min` / `max` are the reference's
    extrema (±inf before any element), `max_abs_error` the largest |test − ref|.
    """

    count: int
    sum_ref_sq: tuple[float, ...]
    sum_err_sq: tuple[float, ...]
    max_abs_error: tuple[float, ...]
    min: tuple[float, ...]
    max: tuple[float, ...]

    @property
    def num_channels(self) -> int:
        return len(self.sum_ref_sq)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v, tuple) else v) for f, v in
                ((f, getattr(self, f.name)) for f in dataclasses.fields(self))}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChannelError:
        return result_from_dict(cls, {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})


class ChannelErrorAccumulator:
    """Streams reference/test batches (samples first, channels on the last axis) into a `ChannelError`.

    Args:
        num_channels: the width of the last axis; None = taken from the first batch.
    """

    def __init__(self, num_channels: int | None = None) -> None:
        self.num_channels = num_channels
        self.count = 0
        self.sums: np.ndarray | None = None  # rows: Σref², Σerr², max|err|, min ref, max ref
        if num_channels is not None:
            self.sums = _empty_sums(num_channels)

    def update(self, reference: np.ndarray, test: np.ndarray) -> None:
        """Fold in one batch of the same shape, (N, ..., C).

        Raises:
            DataError: the shapes differ, the arrays have no channel axis, or the width differs from earlier batches.
        """
        ref, tst = np.asarray(reference), np.asarray(test)
        if ref.shape != tst.shape:
            raise DataError(f"reference batch has shape {ref.shape} but test batch has {tst.shape}; "
                            "pass matching tensors")
        if ref.ndim < 2:
            raise DataError(f"batch of shape {ref.shape} has no channel axis; pass (N, ..., channels)")
        channels = ref.shape[-1]
        if self.sums is None:
            self.num_channels, self.sums = channels, _empty_sums(channels)
        if channels != self.num_channels:
            raise DataError(f"batch has {channels} channels but earlier batches had {self.num_channels}")
        ref, tst = ref.reshape(-1, channels), tst.reshape(-1, channels)
        # Float64 copies a chunk at a time: a segmentation batch is ~10^7 elements, and a whole copy would double it.
        step = max(1, CHUNK_ELEMENTS // max(channels, 1))
        for lo in range(0, ref.shape[0], step):
            self._add_rows(ref[lo:lo + step].astype(np.float64), tst[lo:lo + step].astype(np.float64))

    def _add_rows(self, ref: np.ndarray, tst: np.ndarray) -> None:
        err = tst - ref
        s = self.sums
        s[0] += np.einsum("ij,ij->j", ref, ref)
        s[1] += np.einsum("ij,ij->j", err, err)
        # np.maximum / np.minimum, unlike max(), propagate NaN.
        s[2] = np.maximum(s[2], np.abs(err).max(axis=0))
        s[3] = np.minimum(s[3], ref.min(axis=0))
        s[4] = np.maximum(s[4], ref.max(axis=0))
        self.count += ref.shape[0]

    def merge(self, other: ChannelErrorAccumulator) -> ChannelErrorAccumulator:
        """Return a new accumulator holding both streams; `self` and `other` are unchanged.

        Raises:
            ValueError: the two have seen different channel counts.
        """
        if self.sums is None or other.sums is None:
            source = other if self.sums is None else self
            merged = ChannelErrorAccumulator(source.num_channels)
            merged.count = source.count
            merged.sums = None if source.sums is None else source.sums.copy()
            return merged
        if self.num_channels != other.num_channels:
            raise ValueError(f"cannot merge {self.num_channels} channels with {other.num_channels}")
        merged = ChannelErrorAccumulator(self.num_channels)
        merged.count = self.count + other.count
        a, b = self.sums, other.sums
        merged.sums = np.stack([a[0] + b[0], a[1] + b[1], np.maximum(a[2], b[2]),
                                np.minimum(a[3], b[3]), np.maximum(a[4], b[4])])
        return merged

    def result(self) -> ChannelError:
        sums = self.sums if self.sums is not None else _empty_sums(0)
        rows = [tuple(float(v) for v in row) for row in sums]
        return ChannelError(self.count, *rows)


def _empty_sums(channels: int) -> np.ndarray:
    sums = np.zeros((5, channels))
    sums[3], sums[4] = math.inf, -math.inf
    return sums


def group_sqnr(err: ChannelError, start: int, stop: int) -> float:
    """Pooled SQNR in dB of channels [start, stop): 10·log10(Σref² / Σ(test − ref)²) over their elements.

    Returns +inf when the group has no error, nan when it holds no element (empty range or empty stream); the other
    conventions are those of `quantdoctor.stats.metrics.sqnr_db`.
    """
    start, stop = max(start, 0), min(stop, err.num_channels)
    if stop <= start or err.count == 0:
        return math.nan
    return sqnr_from_sums(math.fsum(err.sum_ref_sq[start:stop]), math.fsum(err.sum_err_sq[start:stop]))


def group_channels(channel_min: Any, channel_max: Any, ratio: float = 8.0) -> list[tuple[int, int]]:
    """Split channels into contiguous runs of similar range (max − min), as [(start, stop), ...] covering them all.

    Rule: walk the channels in order, keeping the median range of the running group's channels. A channel whose range
    r > 0 starts a new group when r / median ≥ `ratio` or median / r ≥ `ratio`. Channels of zero (or non-finite)
    range are constants that say nothing about the scale: they join the running group (at the start, the first
    group) and do not enter its median. A homogeneous tensor gives one group; no channel gives [].
    """
    lo, hi = np.asarray(channel_min, dtype=np.float64), np.asarray(channel_max, dtype=np.float64)
    if lo.shape != hi.shape or lo.ndim != 1:
        raise ValueError(f"channel_min and channel_max must be vectors of one length, got {lo.shape} and {hi.shape}")
    if not ratio > 1.0:
        raise ValueError(f"ratio must be > 1, got {ratio}")
    ranges = hi - lo
    groups: list[tuple[int, int]] = []
    start, members = 0, []  # members: sorted ranges of the running group's scaled channels
    for c, r in enumerate(ranges):
        if not (math.isfinite(r) and r > 0):
            continue
        if members:
            median = _median(members)
            if r / median >= ratio or median / r >= ratio:
                groups.append((start, c))
                start, members = c, []
        bisect.insort(members, float(r))
    if len(ranges):
        groups.append((start, len(ranges)))
    return groups


def _median(sorted_values: list[float]) -> float:
    n = len(sorted_values)
    mid = n // 2
    return sorted_values[mid] if n % 2 else 0.5 * (sorted_values[mid - 1] + sorted_values[mid])
