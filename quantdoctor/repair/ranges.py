"""Calibration ranges for one activation, chosen from a histogram of its float values on the calibration set.

The histogram is streamed (fixed bins over the min-max range the calibration already found), so memory does not grow
with the calibration set. For the model's output the histogram also keeps, per row of the last axis (a sample's logits),
its few largest values (at most `MAX_ROWS` rows, a uniform sample beyond): the "decision" range is judged on them.
The chosen (min, max) is written into the calibrated model; the real quantizer
(`mlir_quantize` or ai-edge-quantizer) turns it into a scale and zero point, as it does for its own min-max ranges.
"""

from __future__ import annotations

import numpy as np

from quantdoctor.repair.actions import RangeMethod

BINS = 2048
LEVELS = 256  # an 8-bit activation grid
TOP_K = 3  # the decision range keeps the top-1 class first, then the order of the top 3 (the repair's default top-k)
MAX_ROWS = 16384  # rows whose top values a histogram keeps (uniform sample beyond): 16384 x 4 floats
QUANTILES = (0.0, 0.1, 1.0, 5.0, 25.0, 50.0)  # percentiles of each kept top value tried as the low end


class RangeHistogram:
    """Streaming histogram of one tensor over a fixed [lo, hi] (the calibration's min-max range).

    `tops` holds, for each row of the last axis (a sample's logits; a position's channels for a feature map), its
    `top_k + 1` largest values in descending order, which is all a decision range needs: quantization is monotone, so it
    can only merge neighbours of that order into ties, never swap them. Past `MAX_ROWS` rows a uniform sample is kept
    (the rows with the smallest seeded random keys), so memory is bounded whatever the calibration set's size.
    """

    def __init__(self, lo: float, hi: float, bins: int = BINS, top_k: int = TOP_K, keep_tops: bool = True) -> None:
        if not hi > lo:
            hi = lo + 1e-6
        self.lo, self.hi = float(lo), float(hi)
        self.edges = np.linspace(self.lo, self.hi, bins + 1)
        self.counts = np.zeros(bins, dtype=np.float64)
        self.tops = np.empty((0, top_k + 1))
        self._keys = np.empty(0)
        self._rng = np.random.default_rng(0)
        self.keep_tops = keep_tops  # only the decision range reads them: other methods skip the per-row work

    def update(self, values: np.ndarray) -> None:
        arr = np.asarray(values, dtype=np.float64)
        v = np.clip(arr.ravel(), self.lo, self.hi)
        self.counts += np.histogram(v, bins=self.edges)[0]
        if self.keep_tops and arr.ndim >= 2 and arr.shape[-1] >= 2:
            tops = top_values(arr.reshape(-1, arr.shape[-1]), self.tops.shape[1])
            self.tops = np.concatenate([self.tops, tops])
            self._keys = np.concatenate([self._keys, self._rng.random(len(tops))])
            if len(self.tops) > MAX_ROWS:
                keep = np.sort(np.argpartition(self._keys, MAX_ROWS - 1)[:MAX_ROWS])
                self.tops, self._keys = self.tops[keep], self._keys[keep]

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
    - decision: for the model's output (logits), the range that keeps the most top-k decisions of the calibration
      samples on the 8-bit grid (`decision_range`); min-max when the tensor has no rows of two or more values.
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
    if method == RangeMethod.DECISION:
        if len(hist.tops) == 0:
            return lo, hi
        return decision_range(hist.tops, lo, hi, top_k=hist.tops.shape[1] - 1)
    return _kl_range(hist, lo, hi)


def activation_range(runner, action, calibrated: tuple[float, float], calibration, batch_size: int = 16
                     ) -> tuple[float, float]:
    """The range `action` (a `CalibrationRange`) chooses for its tensor, from a histogram of the float activation
    that `runner` (the float model, any runtime) computes on the calibration set, streamed batch by batch.

    Args:
        calibrated: the (min, max) the calibration found (the histogram's fixed span).
    """
    index = next(i for i, t in runner.graph.tensors.items() if t.name == action.tensor)
    lo, hi = calibrated
    hist = RangeHistogram(lo, hi, keep_tops=action.method == RangeMethod.DECISION.value)
    for x, _ in calibration.batches(batch_size):
        hist.update(runner.capture(x, [index])[index])
    return choose_range(hist, action.method, action.percentile)


def top_values(rows: np.ndarray, n: int) -> np.ndarray:
    """The `n` largest values of each row, descending; rows shorter than `n` are padded with -inf."""
    rows = np.asarray(rows, dtype=np.float64)
    rows = rows.reshape(-1, rows.shape[-1])
    c = rows.shape[1]
    part = np.partition(rows, c - n, axis=1)[:, c - n :] if c > n else rows
    out = -np.sort(-part, axis=1)
    if out.shape[1] < n:
        out = np.concatenate([out, np.full((len(out), n - out.shape[1]), -np.inf)], axis=1)
    return out


def grid_codes(x: np.ndarray, lo: float, hi: float, levels: int = LEVELS) -> np.ndarray:
    """Integer codes of `x` on the grid TFLite derives from (lo, hi) (float array of integers).

    scale = (hi - lo) / (levels - 1); the zero point is nudged to the integer round(qmin - lo / scale) in [qmin, qmax]
    (so 0 is exact); code = clamp(round(x / scale) + zero point, qmin, qmax), with qmin = -levels / 2. Values outside the
    range clip to the end codes; -inf (padding) gets qmin - 1, below every real value.
    """
    qmin = -(levels // 2)
    qmax = qmin + levels - 1
    scale = (hi - lo) / (levels - 1)
    zero = np.clip(np.round(qmin - lo / scale), qmin, qmax)
    with np.errstate(invalid="ignore"):
        codes = np.clip(np.round(np.asarray(x, dtype=np.float64) / scale) + zero, qmin, qmax)
    return np.where(np.isneginf(x), qmin - 1.0, codes)


def decision_score(tops: np.ndarray, lo: float, hi: float, levels: int = LEVELS) -> tuple[int, int, int]:
    """(top-1 decisions kept, top-k orders kept, top values clipped) on the grid of (lo, hi).

    `tops` are each row's k + 1 largest float values, descending (`top_values`). Quantization is monotone, so a row keeps
    its top-1 iff code(t1) > code(t2), and its top-k order (and top-k set) iff code(t1) > ... > code(t_k+1); a tie
    counts as lost (a row with fewer than k + 1 classes is judged on the classes it has). Clipped: finite top values
    below `lo` (all of them end on the same code).
    """
    codes = grid_codes(tops, lo, hi, levels)
    strict = (codes[:, :-1] > codes[:, 1:]) | np.isneginf(tops[:, :-1])  # padding past the last class orders nothing
    clipped = int(np.sum(np.isfinite(tops) & (tops < lo)))
    return int(strict[:, 0].sum()), int(strict.all(axis=1).sum()), clipped


def decision_range(
    logits: np.ndarray, lo: float | None = None, hi: float | None = None, top_k: int = TOP_K, levels: int = LEVELS,
) -> tuple[float, float]:
    """The output range judged by the decisions it serves: (min, max) that keeps the most top-k decisions on the grid.

    Rule: max = the calibrated max (max(hi, 0)); min is chosen among candidates from the calibrated min (min(lo, 0)) up
    to 0 — the calibrated min and the lowest of the rows' k + 1 largest values, each scaled by 0.01 ... 1.00 (100
    factors), and the `QUANTILES` percentiles of each row's 2nd to (k+1)-th largest value — maximising, in this order,

        1. the rows whose top-1 survives (code(t1) > code(t2)),
        2. the rows whose top-k order survives (code(t1) > ... > code(t_k+1)),
        3. the fewest top values clipped below min (the classes near the top stay on the grid),
        4. min itself (the narrowest range: the finest step).

    Logits far below the top classes (a class that is never close to winning) only stretch the grid; clipping them at
    the low end costs no decision, while the finer step keeps margins that the min-max step swallows. The top end is not
    clipped: the winning logit is what a decision reads.

    Args:
        logits: float outputs on the calibration set, rows along the last axis (or their `top_values(·, k + 1)`).
        lo, hi: the calibrated range (default: the min and max of `logits`).
        top_k: the order kept after the top-1.
    """
    logits = np.asarray(logits, dtype=np.float64)
    tops = top_values(logits, top_k + 1)
    finite = logits[np.isfinite(logits)]
    if finite.size == 0:
        return min(lo or 0.0, 0.0), max(hi or 0.0, 0.0)
    lo0 = min(float(finite.min()) if lo is None else float(lo), 0.0)
    hi0 = max(float(finite.max()) if hi is None else float(hi), 0.0)
    if not hi0 > lo0:
        return lo0, hi0
    top_lo = min(float(tops[np.isfinite(tops)].min()), 0.0)  # the lowest a top-(k+1) class reaches
    factors = np.linspace(0.01, 1.0, 100)
    cands = {lo0, 0.0} | {lo0 * f for f in factors} | {top_lo * f for f in factors}
    for j in range(1, tops.shape[1]):
        col = tops[:, j][np.isfinite(tops[:, j])]
        if col.size:
            cands |= {float(q) for q in np.percentile(col, QUANTILES)}
    cands = {c for c in cands if lo0 <= c <= 0.0 and hi0 > c}

    def key(c: float) -> tuple:
        top1, topk, clipped = decision_score(tops, c, hi0, levels)
        return top1, topk, -clipped, c

    return float(max(sorted(cands), key=key)), hi0


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
