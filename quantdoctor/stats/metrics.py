"""Error metrics between a reference (float) tensor and a test (quantized) tensor.

Every metric is a pure numpy function `(reference, test) -> float` registered in `METRICS`. Inputs of any shape are
flattened and compared in float64. Conventions shared by all of them, so callers never special-case:

- empty input -> nan;
- a NaN anywhere in either input -> nan (infinities follow IEEE arithmetic);
- a zero reference is handled explicitly per metric (see each docstring).

The `*_from_sums` helpers hold those conventions for values already reduced to sums, so the streaming accumulators in
`quantdoctor.stats.accumulators` give exactly what these functions give on the concatenated data.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from quantdoctor.errors import DataError
from quantdoctor.registry import Registry

METRICS: Registry[Callable[..., float]] = Registry("metric")

KL_EPS = 1e-12
"""`kl_divergence` clips probabilities to [KL_EPS, 1] before the log, so a zero in q gives a large finite value."""

PROBABILITY_ATOL = 1e-3
"""How far a row's sum may be from 1 for `as_probabilities` to take the row as probabilities already."""


def _pair(reference: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flatten both inputs to float64 vectors of the same length.

    Raises:
        DataError: the inputs hold different numbers of elements.
    """
    ref = np.asarray(reference, dtype=np.float64).ravel()
    tst = np.asarray(test, dtype=np.float64).ravel()
    if ref.size != tst.size:
        raise DataError(
            f"cannot compare a reference of {ref.size} elements with a test tensor of {tst.size}; "
            "pass tensors of the same shape"
        )
    return ref, tst


def _has_nan(*arrays: np.ndarray) -> bool:
    return any(bool(np.isnan(a).any()) for a in arrays)


def sqnr_from_sums(signal: float, noise: float) -> float:
    """SQNR in dB from Σref² (`signal`) and Σ(ref−test)² (`noise`), with the conventions of `sqnr_db`."""
    if math.isnan(signal) or math.isnan(noise):
        return math.nan
    if noise == 0.0:
        return math.inf
    ratio = signal / noise
    if ratio == 0.0:  # zero reference, or an infinite error
        return -math.inf
    return 10.0 * math.log10(ratio)  # log10 passes inf and nan (inf/inf) through


def relative_rmse_from_sums(signal: float, noise: float) -> float:
    """‖ref−test‖₂ / ‖ref‖₂ from Σref² and Σ(ref−test)², with the conventions of `relative_rmse`."""
    if math.isnan(signal) or math.isnan(noise):
        return math.nan
    if signal == 0.0:
        return 0.0 if noise == 0.0 else math.inf
    return math.sqrt(noise / signal)


def cosine_from_sums(dot: np.ndarray, ref_sq: np.ndarray, test_sq: np.ndarray) -> np.ndarray:
    """Cosine ⟨r,t⟩/(‖r‖‖t‖) from ⟨r,t⟩, Σr² and Σt², elementwise over arrays of such sums.

    Both norms zero -> 1.0 (two zero vectors are the same); one zero -> 0.0; NaN sums -> nan. The result is clipped to
    [-1, 1] because rounding can push a perfect match to 1 + 1e-16.
    """
    dot, ref_sq, test_sq = (np.asarray(x, dtype=np.float64) for x in (dot, ref_sq, test_sq))
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.clip(dot / (np.sqrt(ref_sq) * np.sqrt(test_sq)), -1.0, 1.0)
    ref_zero, test_zero = ref_sq == 0.0, test_sq == 0.0
    cos = np.where(ref_zero & test_zero, 1.0, np.where(ref_zero | test_zero, 0.0, cos))
    nan = np.isnan(dot) | np.isnan(ref_sq) | np.isnan(test_sq)
    return np.where(nan, np.nan, cos)


@METRICS.register("sqnr_db")
def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: 10·log10(Σref² / Σ(ref−test)²).

    Reference: the SQNR of signal processing (e.g. Widrow & Kollár, *Quantization Noise*, 2008), as used by
    ai-edge-quantizer's `calculate_snr` and torchao's numeric debugger. Higher is better; each extra bit adds ~6 dB.

    Edge cases: no error -> +inf (also for a zero reference); zero reference with error -> -inf; empty -> nan;
    NaN -> nan.
    """
    ref, tst = _pair(reference, test)
    if ref.size == 0 or _has_nan(ref, tst):
        return math.nan
    err = ref - tst
    return sqnr_from_sums(float(np.dot(ref, ref)), float(np.dot(err, err)))


@METRICS.register("cosine_similarity")
def cosine_similarity(reference: np.ndarray, test: np.ndarray) -> float:
    """Cosine similarity ⟨r,t⟩ / (‖r‖₂‖t‖₂) of the flattened tensors.

    Reference: the cosine of the angle between two vectors (as in ai-edge-quantizer's `cosine_similarity` metric).
    1.0 means the same direction regardless of scale.

    Edge cases: both zero -> 1.0; exactly one zero -> 0.0; empty -> nan; NaN -> nan.
    """
    ref, tst = _pair(reference, test)
    if ref.size == 0 or _has_nan(ref, tst):
        return math.nan
    return float(cosine_from_sums(np.dot(ref, tst), np.dot(ref, ref), np.dot(tst, tst)))


@METRICS.register("relative_rmse")
def relative_rmse(reference: np.ndarray, test: np.ndarray) -> float:
    """Relative RMSE ‖ref−test‖₂ / ‖ref‖₂, i.e. sqrt(noise power / signal power) = 10^(−SQNR/20).

    Reference: the normalised RMS error (NRMSE normalised by the reference's RMS).

    Edge cases: zero reference -> 0.0 if test is zero too, else +inf; empty -> nan; NaN -> nan.
    """
    ref, tst = _pair(reference, test)
    if ref.size == 0 or _has_nan(ref, tst):
        return math.nan
    err = ref - tst
    return relative_rmse_from_sums(float(np.dot(ref, ref)), float(np.dot(err, err)))


@METRICS.register("rmse")
def rmse(reference: np.ndarray, test: np.ndarray) -> float:
    """Root-mean-square error sqrt(mean((ref−test)²)), in the tensor's own units.

    Reference: the usual RMSE. Edge cases: empty -> nan; NaN -> nan (a zero reference needs no special case).
    """
    ref, tst = _pair(reference, test)
    if ref.size == 0 or _has_nan(ref, tst):
        return math.nan
    err = ref - tst
    return math.sqrt(float(np.dot(err, err)) / err.size)


@METRICS.register("max_abs_error")
def max_abs_error(reference: np.ndarray, test: np.ndarray) -> float:
    """Largest absolute difference max|ref−test| (the L∞ norm of the error).

    Reference: the L∞ distance, as in `numpy.testing.assert_allclose`'s report. Edge cases: empty -> nan; NaN -> nan.
    """
    ref, tst = _pair(reference, test)
    if ref.size == 0 or _has_nan(ref, tst):
        return math.nan
    return float(np.max(np.abs(ref - tst)))


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax exp(x − max) / Σexp(x − max) along `axis`, in float64.

    Subtracting the row maximum keeps exp() from overflowing; the result is mathematically unchanged.
    """
    x = np.asarray(logits, dtype=np.float64)
    if x.size == 0:
        return x.copy()
    shifted = x - np.max(x, axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / np.sum(e, axis=axis, keepdims=True)


def is_probabilities(outputs: np.ndarray, axis: int = -1, atol: float = PROBABILITY_ATOL) -> bool:
    """True if every row along `axis` is non-negative and sums to 1 within `atol` (the model ends in softmax)."""
    x = np.asarray(outputs)
    if x.size == 0:
        return True
    # NaN fails `>= 0`, so a row with NaN never counts as probabilities.
    return bool(np.all(x >= 0) and np.all(np.abs(np.sum(x, axis=axis, dtype=np.float64) - 1.0) <= atol))


def as_probabilities(outputs: np.ndarray, axis: int = -1) -> np.ndarray:
    """Return `outputs` unchanged if they already are probabilities (see `is_probabilities`), else their softmax."""
    x = np.asarray(outputs)
    return x if is_probabilities(x, axis=axis) else softmax(x, axis=axis)


def kl_rows(p: np.ndarray, q: np.ndarray, axis: int = -1) -> np.ndarray:
    """Per-row KL(p‖q) = Σ p·log(p/q) along `axis`, with p and q clipped to [KL_EPS, 1].

    Returns an array of the input's shape without `axis` (nan for rows holding NaN).

    Raises:
        DataError: p and q differ in shape.
    """
    pa = np.asarray(p, dtype=np.float64)
    qa = np.asarray(q, dtype=np.float64)
    if pa.shape != qa.shape:
        raise DataError(f"KL divergence needs p and q of the same shape, got {pa.shape} and {qa.shape}")
    pc = np.clip(pa, KL_EPS, 1.0)
    qc = np.clip(qa, KL_EPS, 1.0)
    # np.clip keeps NaN, so NaN rows stay NaN.
    return np.sum(pc * np.log(pc / qc), axis=axis)


@METRICS.register("kl_divergence")
def kl_divergence(p: np.ndarray, q: np.ndarray, axis: int = -1) -> float:
    """Mean over rows of KL(p‖q) = Σ p·log(p/q) (nats), rows along `axis`; p is the reference distribution.

    Inputs must be probabilities (use `as_probabilities` on model outputs first). Both are clipped to [KL_EPS=1e-12, 1]
    before the log, as Keras' `KLDivergence` loss does (with its own epsilon), so q = 0 where p > 0 gives ~27.6·p
    instead of +inf.

    Reference: Kullback & Leibler, "On Information and Sufficiency", 1951.

    Edge cases: empty -> nan; NaN -> nan; p == q -> 0.0.
    """
    rows = kl_rows(p, q, axis=axis)
    if rows.size == 0 or np.asarray(p).size == 0:
        return math.nan
    return float(np.mean(rows))
