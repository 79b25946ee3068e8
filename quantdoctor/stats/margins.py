"""Logit margins of the float model against the quantization noise at the logits, streamed in fixed memory.

Answers "does the quantized model lose accuracy because its float margins are smaller than the noise quantization
adds to them?" — the usual reason a 200-class model loses far more than its 80-class twin: more classes crowd the top,
so the top-1 − top-2 margin shrinks while the noise at the logits stays about the same.

Gaussian model. With a, b the float model's top-1 and top-2 classes and m = f_a − f_b ≥ 0 the float margin, the
quantized model decides on m + d, where d = (q_a − q_b) − (f_a − f_b) is the noise on the decisive difference.
Taking d ~ N(μ, σ²) with μ, σ measured over the stream, a sample flips when m + d < 0, with probability
Φ(−(m + μ)/σ), Φ the standard normal CDF (`flip_probability`). μ is kept because quantization often shrinks the
winning logit systematically (saturation, rounding of a large bias), which a zero-mean model would miss. Only the
runner-up is modelled and d is taken independent of m: when many classes crowd the top, or the noise grows with the
margin, `explained_share` < 1.

Top-k: the float top-1 leaves the quantized top-k roughly when the class ranked k+1 overtakes it (the classes
ranked 2..k are closer and have usually overtaken it by then), so the exit rate uses the margin f_1 − f_(k+1) and the
noise on that pair; it tends to overestimate (0.07 predicted vs 0.05 observed at k=3 on a crowded top, see the tests).
`topk_margin_*` describe the k / k+1 boundary itself (how stable the top-k set is).

Histograms: `bins` log-spaced buckets per decade from 1e-6 to 1e6 (default 40: a bucket is 10^(1/40) − 1 = 5.9 % of
its lower edge wide) plus a zero bucket [0, 1e-6); margins ≥ 1e6 land in the top bucket. Percentiles and predicted
rates are read from bucket counts (rates at geometric bucket centres, 0 for the zero bucket), so they are exact to
within one bucket; means, minima, the noise RMS and the pair-noise mean/std are exact (running sums, Chan's merge).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantdoctor.errors import DataError, UserInputError
from quantdoctor.stats.accumulators import result_from_dict
from quantdoctor.stats.classification import in_top_k

DECADES = (-6, 6)  # log10 of the histogram's lowest and highest edge


def flip_probability(margin: np.ndarray, sigma: float, mean: float = 0.0) -> np.ndarray:
    """P(m + d < 0) for d ~ N(mean, sigma²): Φ(−(m + mean)/σ) = ½·erfc((m + mean)/(σ·√2)), elementwise.

    Args:
        margin: float margins m (≥ 0 for a float top-1 / top-2 margin).
        sigma: std of the noise on the margin; 0 gives the step (m + mean < 0), nan gives nan.
        mean: mean of that noise (negative when quantization shrinks margins).

    Raises:
        ValueError: sigma is negative.
    """
    m = np.asarray(margin, dtype=np.float64) + mean
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if sigma == 0:
        return (m < 0).astype(np.float64)
    erfc = np.frompyfunc(math.erfc, 1, 1)
    return 0.5 * erfc(m / (sigma * math.sqrt(2.0))).astype(np.float64)


@dataclass(frozen=True)
class OutputMargins:
    """The float model's logit margins next to the quantization noise on them, and flips predicted vs observed.

    Margins, noise and rates cover the `num_samples − num_nonfinite` samples whose logits are all finite. `k` is the
    effective k (clipped to num_classes − 1). Stds are population stds (ddof=0). `explained_share` =
    predicted_flip_rate / observed_flip_rate, not clipped: ≈ 1 means the margins and the noise explain the flips,
    ≪ 1 that something else does (crowded top, noise correlated with the margin), > 1 that the Gaussian model is
    pessimistic; nan when nothing flipped. `share_below_noise` is the share of top-1 margins below `pair_noise_std`.
    `top1_counts` / `topk_counts` are histogram counts over `bin_edges` (len(counts) + 1 edges, the first one 0).
    Floats are nan without data.
    """

    num_samples: int
    num_nonfinite: int
    num_classes: int
    k: int
    top1_margin_median: float
    top1_margin_p10: float
    top1_margin_mean: float
    top1_margin_min: float
    topk_margin_median: float
    topk_margin_p10: float
    topk_margin_mean: float
    noise_rms: float
    pair_noise_std: float
    pair_noise_mean: float
    topk_pair_noise_std: float
    exit_pair_noise_std: float
    exit_pair_noise_mean: float
    share_below_noise: float
    predicted_flip_rate: float
    observed_flip_rate: float
    explained_share: float
    predicted_topk_exit_rate: float
    observed_topk_exit_rate: float
    bin_edges: tuple[float, ...] = dataclasses.field(repr=False)
    top1_counts: tuple[int, ...] = dataclasses.field(repr=False)
    topk_counts: tuple[int, ...] = dataclasses.field(repr=False)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OutputMargins:
        data = dict(data)
        for name in ("bin_edges", "top1_counts", "topk_counts"):
            if name in data:
                data[name] = tuple(data[name])
        return result_from_dict(cls, data)


def _moments(x: np.ndarray) -> np.ndarray:
    """(count, mean, Σ(x − mean)²) of a batch, the state Chan's formula merges."""
    mean = float(x.mean())
    return np.array([x.size, mean, float(np.square(x - mean).sum())])


def _merge_moments(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = a[0] + b[0]
    if n == 0:
        return np.zeros(3)
    delta = b[1] - a[1]
    return np.array([n, a[1] + delta * b[0] / n, a[2] + b[2] + delta * delta * a[0] * b[0] / n])


class MarginAccumulator:
    """Streams float and quantized logits (N, C) into `OutputMargins`, in memory fixed by `bins` (see module docstring).

    Args:
        k: the k of top-k; clipped to num_classes − 1 once the first batch fixes num_classes.
        bins: histogram buckets per decade of margin.
    """

    def __init__(self, k: int = 3, bins: int = 40) -> None:
        for name, value, top in (("k", k, 10**9), ("bins", bins, 1000)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= top:
                raise UserInputError(f"{name} must be an integer in 1..{top}, got {value!r}")
        self.k_requested, self.bins = int(k), int(bins)
        self.num_classes = 0  # set by the first batch
        self.num_samples = self.num_nonfinite = self.flips = self.exits = self.num_logits = 0
        self.sum_noise_sq = 0.0
        self.counts = np.zeros((3, (DECADES[1] - DECADES[0]) * self.bins + 1), dtype=np.int64)
        self.margin_sum = np.zeros(3)
        self.margin_min = np.full(3, np.inf)
        self.margin_max = np.full(3, -np.inf)
        # Rows of counts, margin_* and noise: the pairs of float ranks (1, 2), (k, k+1) and (1, k+1).
        self.noise = np.zeros((3, 3))  # _moments of d per pair

    @property
    def k(self) -> int:
        return min(self.k_requested, self.num_classes - 1) if self.num_classes else self.k_requested

    def bin_edges(self) -> np.ndarray:
        """Histogram edges: 0, then 10^-6 … 10^6 in `bins` steps per decade."""
        steps = np.arange(self.counts.shape[1]) / self.bins + DECADES[0]
        return np.concatenate(([0.0], 10.0**steps))

    def update(self, float_logits: np.ndarray, quant_logits: np.ndarray) -> None:
        """Fold in one batch of logits of the float and the quantized model, both shaped (N, C), C ≥ 2.

        Raises:
            DataError: the shapes differ from each other or from earlier batches, are not 2-D, or C < 2.
        """
        f, q = self._check(float_logits, quant_logits)
        finite = np.isfinite(f).all(axis=1) & np.isfinite(q).all(axis=1)
        self.num_samples += f.shape[0]
        self.num_nonfinite += int((~finite).sum())
        f, q = f[finite], q[finite]
        if f.shape[0] == 0:
            return
        k = self.k
        # Stable: ties rank the lower class first, as np.argmax does.
        ranked = np.argsort(-f, axis=1, kind="stable")[:, : k + 1]
        rows = np.arange(f.shape[0])[:, None]
        fr, qr = f[rows, ranked], q[rows, ranked]
        self.flips += int((np.argmax(q, axis=1) != ranked[:, 0]).sum())
        self.exits += int((~in_top_k(q, ranked[:, 0], k)).sum())
        err = q - f
        self.sum_noise_sq += float(np.einsum("ij,ij->", err, err))
        self.num_logits += err.size
        for p, (i, j) in enumerate(((0, 1), (k - 1, k), (0, k))):
            margin = fr[:, i] - fr[:, j]
            self.counts[p] += np.bincount(self._bucket(margin), minlength=self.counts.shape[1])
            self.margin_sum[p] += float(margin.sum())
            self.margin_min[p] = min(self.margin_min[p], float(margin.min()))
            self.margin_max[p] = max(self.margin_max[p], float(margin.max()))
            self.noise[p] = _merge_moments(self.noise[p], _moments((qr[:, i] - qr[:, j]) - margin))

    def _bucket(self, margin: np.ndarray) -> np.ndarray:
        last = self.counts.shape[1] - 1
        logs = np.log10(np.maximum(margin, 10.0 ** DECADES[0]))
        index = np.clip(np.floor((logs - DECADES[0]) * self.bins).astype(np.int64) + 1, 1, last)
        return np.where(margin < 10.0 ** DECADES[0], 0, index)

    def _check(self, float_logits: np.ndarray, quant_logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f = np.asarray(float_logits, dtype=np.float64)
        q = np.asarray(quant_logits, dtype=np.float64)
        if f.shape != q.shape:
            raise DataError(f"float logits have shape {f.shape}, quantized logits {q.shape}; pass the same samples")
        if f.ndim != 2 or f.shape[1] < 2:
            raise DataError(f"logits have shape {f.shape}, expected (N, C) with C >= 2 classes; reshape them")
        if self.num_classes and f.shape[1] != self.num_classes:
            raise DataError(
                f"logits have {f.shape[1]} classes but earlier batches had {self.num_classes}; pass one model's logits"
            )
        self.num_classes = f.shape[1]
        return f, q

    def merge(self, other: MarginAccumulator) -> MarginAccumulator:
        """Return a new accumulator holding both streams; `self` and `other` are unchanged.

        Raises:
            ValueError: different k, bins, or num_classes (an accumulator that saw no batch merges with any).
        """
        mine, theirs = ((a.k_requested, a.bins, a.num_classes) for a in (self, other))
        if mine[:2] != theirs[:2] or (mine[2] and theirs[2] and mine[2] != theirs[2]):
            raise ValueError(f"cannot merge margin accumulators of (k, bins, num_classes) = {mine} and {theirs}")
        merged = MarginAccumulator(self.k_requested, self.bins)
        merged.num_classes = self.num_classes or other.num_classes
        for name in ("num_samples", "num_nonfinite", "flips", "exits", "num_logits", "sum_noise_sq", "margin_sum"):
            setattr(merged, name, getattr(self, name) + getattr(other, name))
        merged.counts = self.counts + other.counts
        merged.margin_min = np.minimum(self.margin_min, other.margin_min)
        merged.margin_max = np.maximum(self.margin_max, other.margin_max)
        merged.noise = np.array([_merge_moments(a, b) for a, b in zip(self.noise, other.noise)])
        return merged

    def result(self) -> OutputMargins:
        """Summarise the stream; every float is nan when no finite sample was seen."""
        edges = self.bin_edges()
        n = int(self.counts[0].sum())
        mean = [float(self.margin_sum[p]) / n if n else math.nan for p in range(3)]
        noise_mean = [float(self.noise[p, 1]) if n else math.nan for p in range(3)]
        noise_std = [math.sqrt(self.noise[p, 2] / n) if n else math.nan for p in range(3)]
        flip = self._predicted(0, edges, noise_std[0], noise_mean[0])
        observed = self.flips / n if n else math.nan
        return OutputMargins(
            num_samples=self.num_samples,
            num_nonfinite=self.num_nonfinite,
            num_classes=self.num_classes,
            k=self.k,
            top1_margin_median=self._quantile(0, 0.5, edges),
            top1_margin_p10=self._quantile(0, 0.1, edges),
            top1_margin_mean=mean[0],
            top1_margin_min=float(self.margin_min[0]) if n else math.nan,
            topk_margin_median=self._quantile(1, 0.5, edges),
            topk_margin_p10=self._quantile(1, 0.1, edges),
            topk_margin_mean=mean[1],
            noise_rms=math.sqrt(self.sum_noise_sq / self.num_logits) if self.num_logits else math.nan,
            pair_noise_std=noise_std[0],
            pair_noise_mean=noise_mean[0],
            topk_pair_noise_std=noise_std[1],
            exit_pair_noise_std=noise_std[2],
            exit_pair_noise_mean=noise_mean[2],
            share_below_noise=self._cdf(0, noise_std[0], edges),
            predicted_flip_rate=flip,
            observed_flip_rate=observed,
            explained_share=flip / observed if observed else math.nan,
            predicted_topk_exit_rate=self._predicted(2, edges, noise_std[2], noise_mean[2]),
            observed_topk_exit_rate=self.exits / n if n else math.nan,
            bin_edges=tuple(float(e) for e in edges),
            top1_counts=tuple(int(c) for c in self.counts[0]),
            topk_counts=tuple(int(c) for c in self.counts[1]),
        )

    def _predicted(self, pair: int, edges: np.ndarray, sigma: float, mean: float) -> float:
        counts = self.counts[pair]
        if not counts.sum() or math.isnan(sigma):
            return math.nan
        centres = np.concatenate(([0.0], np.sqrt(edges[1:-1] * edges[2:])))
        return float((counts * flip_probability(centres, sigma, mean)).sum() / counts.sum())

    def _quantile(self, pair: int, q: float, edges: np.ndarray) -> float:
        """Inverse CDF at share q, interpolated inside the bucket (log-linearly above 1e-6), clamped to [min, max]."""
        counts = self.counts[pair]
        n = counts.sum()
        if not n:
            return math.nan
        cumulative = np.cumsum(counts)
        b = int(np.searchsorted(cumulative, q * n, side="left"))
        frac = (q * n - (cumulative[b] - counts[b])) / counts[b]
        lo, hi = edges[b], edges[b + 1]
        value = lo + frac * (hi - lo) if b == 0 else lo * (hi / lo) ** frac
        return float(np.clip(value, self.margin_min[pair], self.margin_max[pair]))

    def _cdf(self, pair: int, x: float, edges: np.ndarray) -> float:
        """Share of margins below x, interpolated inside x's bucket as `_quantile` does."""
        counts = self.counts[pair]
        n = counts.sum()
        if not n or math.isnan(x):
            return math.nan
        if x <= self.margin_min[pair] or x > self.margin_max[pair]:
            return float(x > self.margin_min[pair])
        b = min(int(np.searchsorted(edges, x, side="right")) - 1, len(counts) - 1)
        lo, hi = edges[b], edges[b + 1]
        frac = (x - lo) / (hi - lo) if b == 0 else math.log(x / lo) / math.log(hi / lo)
        return float((counts[:b].sum() + min(frac, 1.0) * counts[b]) / n)
