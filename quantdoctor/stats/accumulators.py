"""Streaming statistics of the error between float and quantized tensors, in fixed memory.

Every accumulator here follows one contract: `update(...)` folds a batch in (mutating), `merge(other)` returns a *new*
accumulator holding both streams (neither input changes), and `result()` returns a frozen dataclass with `to_dict()`.
Only sums and extrema are kept, never the samples, so memory does not grow with the data set.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from quantdoctor.errors import DataError
from quantdoctor.stats.metrics import cosine_from_sums, relative_rmse_from_sums, sqnr_from_sums

R = TypeVar("R")

FOLD_THREADS = 2  # threads folding one batch into many accumulators (the machines this runs on have 2 cores and up)


def deal(sizes: dict[int, int], parts: int) -> list[list[int]]:
    """The keys of `sizes` dealt into at most `parts` lists of about equal total size (largest first, each to the
    lightest list): one thread's share of a batch's accumulators, each folded by one thread only (numpy releases the
    GIL in its loops), so the result is the one a single thread gives."""
    loads, out = [0] * parts, [[] for _ in range(parts)]
    for key in sorted(sizes, key=lambda k: -sizes[k]):
        k = loads.index(min(loads))
        out[k].append(key)
        loads[k] += sizes[key]
    return [p for p in out if p]


def result_from_dict(cls: type[R], data: dict[str, Any]) -> R:
    """Build the frozen result dataclass `cls` from its `to_dict()` output.

    Raises:
        DataError: keys are missing or unknown (e.g. a JSON file from another version).
    """
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    required = {
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    unknown, missing = set(data) - names, required - set(data)
    if unknown or missing:
        raise DataError(
            f"cannot read {cls.__name__}: unknown keys {sorted(unknown)}, missing keys {sorted(missing)}; "
            "was it written by another quantdoctor version?"
        )
    return cls(**data)


@dataclass(frozen=True)
class TensorError:
    """How far a test (quantized) tensor is from its reference (float) over a whole data stream.

    `sqnr_db`, `relative_rmse`, `rmse`, `max_abs_error`, `mean_abs_error` and `mean_error` pool all elements of all
    samples (they equal the `quantdoctor.stats.metrics` functions on the concatenated data); `cosine_mean` is the mean
    of the per-sample cosines. `mean_error` is mean(test − ref), the bias quantization added; compare it with
    `ref_rms` and `ref_mean`. Values may be nan (no data, NaN in the tensors) or ±inf (see the metric docstrings).
    """

    sqnr_db: float
    cosine_mean: float
    relative_rmse: float
    rmse: float
    max_abs_error: float
    ref_rms: float
    num_samples: int
    num_elements: int = 0
    mean_abs_error: float = math.nan
    mean_error: float = math.nan
    ref_mean: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TensorError:
        return result_from_dict(cls, data)


@dataclass
class ErrorAccumulator:
    """Streams the error between reference and test batches (first axis = samples) into a `TensorError`."""

    num_samples: int = 0
    num_elements: int = 0
    sum_ref_sq: float = 0.0
    sum_err_sq: float = 0.0
    sum_abs_err: float = 0.0
    sum_err: float = 0.0  # Σ(test − ref)
    sum_ref: float = 0.0
    max_abs_err: float = 0.0  # |err| ≥ 0, so 0 is the identity of max
    sum_cosine: float = 0.0

    def update(self, reference: np.ndarray, test: np.ndarray) -> None:
        """Fold in one batch; `reference` and `test` have the same shape, samples on the first axis.

        Float32 batches stay float32 element-wise (activations of a real model are ~10^8 values a batch, and a float64
        copy of each would dominate the run time); every sum is accumulated in float64. The per-sample cosine comes from
        Σr², Σr·e and Σe² (e = test − ref), each computed directly, so it stays accurate when the error is tiny.

        Raises:
            DataError: the shapes differ, or the arrays are scalars (no sample axis).
        """
        ref, tst = np.asarray(reference), np.asarray(test)
        if ref.shape != tst.shape:
            raise DataError(
                f"reference batch has shape {ref.shape} but test batch has {tst.shape}; pass matching tensors"
            )
        if ref.ndim == 0:
            raise DataError("got a scalar; pass a batch whose first axis indexes samples (e.g. x[None])")
        n = ref.shape[0]
        if n == 0:
            return
        dtype = np.result_type(ref.dtype, tst.dtype, np.float32)
        ref = ref.astype(dtype, copy=False).reshape(n, -1)
        tst = tst.astype(dtype, copy=False).reshape(n, -1)
        err = tst - ref
        ref_sq = np.einsum("ij,ij->i", ref, ref).astype(np.float64)
        if ref.shape[1] == 0:
            cosines = np.full(n, np.nan)  # an empty sample has no cosine, as in `cosine_similarity`
            err_sq = np.zeros(n)
        else:
            ref_err = np.einsum("ij,ij->i", ref, err).astype(np.float64)
            err_sq = np.einsum("ij,ij->i", err, err).astype(np.float64)
            dot = ref_sq + ref_err
            cosines = cosine_from_sums(dot, ref_sq, np.maximum(ref_sq + 2 * ref_err + err_sq, 0.0))
        self.num_samples += n
        self.num_elements += err.size
        self.sum_ref_sq += float(ref_sq.sum())
        self.sum_err_sq += float(err_sq.sum())
        self.sum_err += float(err.sum(dtype=np.float64))
        self.sum_ref += float(ref.sum(dtype=np.float64))
        self.sum_cosine += float(cosines.sum())
        if err.size:
            np.abs(err, out=err)
            # np.maximum, unlike max(), propagates NaN whatever the order.
            self.max_abs_err = float(np.maximum(self.max_abs_err, err.max()))
            self.sum_abs_err += float(err.sum(dtype=np.float64))

    def merge(self, other: ErrorAccumulator) -> ErrorAccumulator:
        """Return a new accumulator holding both streams; `self` and `other` are unchanged."""
        if not isinstance(other, ErrorAccumulator):
            raise TypeError(f"cannot merge ErrorAccumulator with {type(other).__name__}")
        merged = {
            f.name: getattr(self, f.name) + getattr(other, f.name)
            for f in dataclasses.fields(self)
            if f.name != "max_abs_err"
        }
        return ErrorAccumulator(**merged, max_abs_err=float(np.maximum(self.max_abs_err, other.max_abs_err)))

    def result(self) -> TensorError:
        """Summarise the stream; every float is nan when no element was seen."""
        n = self.num_elements
        if n == 0:
            cosine = self.sum_cosine / self.num_samples if self.num_samples else math.nan
            return TensorError(math.nan, cosine, math.nan, math.nan, math.nan, math.nan, self.num_samples, 0)
        return TensorError(
            sqnr_db=sqnr_from_sums(self.sum_ref_sq, self.sum_err_sq),
            cosine_mean=self.sum_cosine / self.num_samples,
            relative_rmse=relative_rmse_from_sums(self.sum_ref_sq, self.sum_err_sq),
            rmse=math.sqrt(self.sum_err_sq / n),
            max_abs_error=self.max_abs_err,
            ref_rms=math.sqrt(self.sum_ref_sq / n),
            num_samples=self.num_samples,
            num_elements=n,
            mean_abs_error=self.sum_abs_err / n,
            mean_error=self.sum_err / n,
            ref_mean=self.sum_ref / n,
        )
