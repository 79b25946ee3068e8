"""Calibration ranges for one activation, chosen from a histogram of its float values on the calibration set.

The histogram is streamed (fixed bins over the min-max range the calibration already found), so memory does not grow
with the calibration set. The chosen (min, max) is written into the calibrated model; the real quantizer
(`mlir_quantize` or ai-edge-quantizer) turns it into a scale and zero point, as it does for its own min-max ranges.
"""

from __future__ import annotations

import numpy as np

from quantdoctor.repair.actions import RangeMethod

BINS = 2048
LEVELS = 256  # an 8-bit activation grid


class RangeHistogram:
    """Streaming histogram of one tensor over a fixed [lo, hi] (the calibration's min-max range)."""

    def __init__(self, lo: float, hi: float, bins: int = BINS) -> None:
        if not hi > lo:
            hi = lo + 1e-6
        self.lo, self.hi = float(lo), float(hi)
        self.edges = np.linspace(self.lo, self.hi, bins + 1)
        self.counts = np.zeros(bins, dtype=np.float64)

    def update(self, values: np.ndarray) -> None:
        v = np.clip(np.asarray(values, dtype=np.float64).ravel(), self.lo, self.hi)
        self.counts += np.histogram(v, bins=self.edges)[0]

    @property
    def centers(self) -> np.ndarray:
        return 0.5 * (self.edges[:-1] + self.edges[1:])


def choose_range(hist: RangeHistogram, method: str, percentile: float | None = None) -> tuple[float, float]:
    """(min, max) for the tensor by `method`; the range always contains 0, as TFLite needs a representable zero.

    - minmax: the calibrated range as it is.
    - percentile p: the p-th and (100 - p)-th percentiles (a ReLU output keeps min 0).
    - mse: the clipped range minimising the expected squared error of 8-bit quantization (rounding noise step²/12 inside,
      clipping error outside), searched over 100 shrink factors of each side.
    - kl: TensorRT's entropy calibration: the clip point whose 128-level quantized histogram diverges least (KL) from
      the clipped reference histogram, over |x|.
    """
    method = RangeMethod(method)
    lo, hi = min(hist.lo, 0.0), max(hist.hi, 0.0)
    if method == RangeMethod.MINMAX or hist.counts.sum() == 0:
        return lo, hi
    if method == RangeMethod.PERCENTILE:
        cdf = np.cumsum(hist.counts) / hist.counts.sum()
        p = float(percentile or 99.99) / 100.0
        new_hi = float(hist.edges[1:][np.searchsorted(cdf, p)]) if hi > 0 else 0.0
        new_lo = float(hist.edges[:-1][np.searchsorted(cdf, 1.0 - p)]) if lo < 0 else 0.0
        return min(new_lo, 0.0), max(new_hi, 0.0)
    if method == RangeMethod.MSE:
        return _mse_range(hist, lo, hi)
    return _kl_range(hist, lo, hi)


def _expected_mse(hist: RangeHistogram, lo: float, hi: float) -> float:
    step = (hi - lo) / (LEVELS - 1)
    x = hist.centers
    clip = np.where(x > hi, (x - hi) ** 2, 0.0) + np.where(x < lo, (lo - x) ** 2, 0.0)
    noise = np.where((x >= lo) & (x <= hi), step * step / 12.0, 0.0)
    return float(np.sum(hist.counts * (clip + noise)))


def _mse_range(hist: RangeHistogram, lo: float, hi: float) -> tuple[float, float]:
    """Coordinate search: the max with the min fixed, then the min with that max, twice (the sides clip independently)."""
    factors = np.linspace(0.01, 1.0, 100)
    best_lo, best_hi = lo, hi
    for _ in range(2):
        best_hi = min((hi * f for f in factors), key=lambda h: _expected_mse(hist, best_lo, h)) if hi > 0 else 0.0
        best_lo = min((lo * f for f in factors), key=lambda l: _expected_mse(hist, l, best_hi)) if lo < 0 else 0.0
    return float(best_lo), float(best_hi)


def _kl_range(hist: RangeHistogram, lo: float, hi: float, levels: int = 128) -> tuple[float, float]:
    top = max(-lo, hi)
    nbins = 1024
    edges = np.linspace(0.0, top, nbins + 1)
    counts = np.histogram(np.abs(hist.centers), bins=edges, weights=hist.counts)[0]
    best_i, best_kl = nbins, np.inf
    for i in range(levels, nbins + 1, 16):
        ref = counts[:i].astype(np.float64).copy()
        ref[-1] += counts[i:].sum()
        # Merge the i bins into `levels` groups, spread each group's mass evenly over its non-empty bins.
        groups = np.array_split(np.arange(i), levels)
        q = np.zeros(i)
        for g in groups:
            nz = g[counts[g] > 0]
            if nz.size:
                q[nz] = counts[g].sum() / nz.size
        p = ref / max(ref.sum(), 1e-12)
        q = q / max(q.sum(), 1e-12)
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best_i, best_kl = i, kl
    t = float(edges[best_i])
    return max(lo, -t), min(hi, t)
