"""Streaming model-level metrics of a classifier: float vs quantized predictions, with or without labels."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantdoctor.errors import DataError, UserInputError
from quantdoctor.stats.accumulators import ErrorAccumulator, result_from_dict
from quantdoctor.stats.metrics import is_probabilities, kl_rows, softmax

WORST_CLASSES = 10
UNLABELLED = -1


@dataclass(frozen=True)
class ClassLoss:
    """One class the quantized model gets wrong more often than the float one.

    With labels the rates are the class's top-1 accuracy (support = labelled samples of the class). Without labels,
    support = samples the float model predicts as the class, float_rate = 1.0 and quant_rate = the share of them the
    quantized model still predicts as the class. drop = float_rate − quant_rate.
    """

    class_index: int
    support: int
    float_rate: float
    quant_rate: float
    drop: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassLoss:
        return result_from_dict(cls, data)


@dataclass(frozen=True)
class ModelMetrics:
    """Agreement, accuracy and output error of a quantized classifier against its float original.

    Agreements compare the two models on every sample; accuracies (None without labels) use labelled samples only.
    `top-k agreement` means the float top-1 class is among the quantized top-k. `kl_mean` is the mean KL(float‖quant)
    of the output distributions in nats; `logit_*` compare the raw outputs (logits, or probabilities if the model ends
    in softmax). Floats are nan when no sample was seen.
    """

    num_samples: int
    num_labelled: int
    k: int
    top1_agreement: float
    topk_agreement: float
    float_top1: float | None
    float_topk: float | None
    quant_top1: float | None
    quant_topk: float | None
    kl_mean: float
    logit_sqnr_db: float
    logit_cosine: float
    worst_classes: tuple[ClassLoss, ...]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["worst_classes"] = [loss.to_dict() for loss in self.worst_classes]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelMetrics:
        data = dict(data)
        data["worst_classes"] = tuple(ClassLoss.from_dict(d) for d in data.get("worst_classes", ()))
        return result_from_dict(cls, data)


def in_top_k(scores: np.ndarray, index: np.ndarray, k: int) -> np.ndarray:
    """True where `scores[i, index[i]]` is among the k highest of row i.

    Ties go to the lower class index, as `np.argmax` does, so `in_top_k(s, i, 1)` is `np.argmax(s, 1) == i`. Ranking by
    counting beats sorting: O(N·C), and no unstable `argpartition`.
    """
    rows = np.arange(scores.shape[0])
    own = scores[rows, index][:, None]
    earlier = np.arange(scores.shape[1])[None, :] < index[:, None]
    rank = np.sum(scores > own, axis=1) + np.sum((scores == own) & earlier, axis=1)
    return rank < k


def _share(count: float, total: int) -> float:
    return count / total if total else math.nan


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise UserInputError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class ClassificationAccumulator:
    """Streams float and quantized classifier outputs into `ModelMetrics` in O(num_classes) memory.

    Args:
        num_classes: width of the output rows.
        k: the k of top-k; clipped to num_classes.
    """

    def __init__(self, num_classes: int, k: int = 3) -> None:
        self.num_classes = _positive_int(num_classes, "num_classes")
        self.k = min(_positive_int(k, "k"), self.num_classes)
        self.num_samples = 0
        self.num_labelled = 0
        self.topk_agree = 0
        self.float_topk_correct = 0
        self.quant_topk_correct = 0
        self.sum_kl = 0.0
        self.logits = ErrorAccumulator()
        counts = [np.zeros(self.num_classes, dtype=np.int64) for _ in range(5)]
        # Per class: float top-1 predictions, and how many of those the quantized model keeps ...
        self.float_predicted, self.kept = counts[:2]
        # ... and labelled samples, with float / quantized top-1 hits.
        self.label_count, self.float_correct, self.quant_correct = counts[2:]

    def update(self, float_out: np.ndarray, quant_out: np.ndarray, labels: np.ndarray | None = None) -> None:
        """Fold in one batch of outputs, shape (N, num_classes), logits or probabilities; labels (N,) with -1 = none.

        Raises:
            DataError: shapes do not match num_classes or each other, or labels are not class indices or -1.
        """
        f, q = self._check_outputs(float_out, quant_out)
        y = self._check_labels(labels, f.shape[0])
        if f.shape[0] == 0:
            return
        f1, q1 = np.argmax(f, axis=1), np.argmax(q, axis=1)
        c = self.num_classes
        self.num_samples += f.shape[0]
        self.topk_agree += int(in_top_k(q, f1, self.k).sum())
        self.float_predicted += np.bincount(f1, minlength=c)
        self.kept += np.bincount(f1[f1 == q1], minlength=c)

        labelled = y != UNLABELLED
        yl, fl, ql = y[labelled], f[labelled], q[labelled]
        self.num_labelled += int(labelled.sum())
        self.label_count += np.bincount(yl, minlength=c)
        self.float_correct += np.bincount(yl[f1[labelled] == yl], minlength=c)
        self.quant_correct += np.bincount(yl[q1[labelled] == yl], minlength=c)
        self.float_topk_correct += int(in_top_k(fl, yl, self.k).sum())
        self.quant_topk_correct += int(in_top_k(ql, yl, self.k).sum())

        p_float, p_quant = _probabilities(f, q)
        self.sum_kl += float(kl_rows(p_float, p_quant).sum())
        self.logits.update(f, q)

    def merge(self, other: ClassificationAccumulator) -> ClassificationAccumulator:
        """Return a new accumulator holding both streams; `self` and `other` are unchanged.

        Raises:
            ValueError: the two were built with different num_classes or k.
        """
        if (self.num_classes, self.k) != (other.num_classes, other.k):
            raise ValueError(
                f"cannot merge accumulators of (num_classes, k) = {(self.num_classes, self.k)} "
                f"and {(other.num_classes, other.k)}"
            )
        merged = ClassificationAccumulator(self.num_classes, self.k)
        for name, value in vars(self).items():
            if name not in ("num_classes", "k", "logits"):
                setattr(merged, name, value + getattr(other, name))
        merged.logits = self.logits.merge(other.logits)
        return merged

    def result(self, max_worst: int = WORST_CLASSES) -> ModelMetrics:
        """Summarise the stream; `max_worst` bounds how many losing classes are listed."""
        n, nl = self.num_samples, self.num_labelled
        logits = self.logits.result()
        return ModelMetrics(
            num_samples=n,
            num_labelled=nl,
            k=self.k,
            top1_agreement=_share(int(self.kept.sum()), n),
            topk_agreement=_share(self.topk_agree, n),
            float_top1=_share(int(self.float_correct.sum()), nl) if nl else None,
            float_topk=_share(self.float_topk_correct, nl) if nl else None,
            quant_top1=_share(int(self.quant_correct.sum()), nl) if nl else None,
            quant_topk=_share(self.quant_topk_correct, nl) if nl else None,
            kl_mean=_share(self.sum_kl, n),
            logit_sqnr_db=logits.sqnr_db,
            logit_cosine=logits.cosine_mean,
            worst_classes=self._worst_classes(max_worst),
        )

    def _worst_classes(self, limit: int) -> tuple[ClassLoss, ...]:
        """Classes that lose most, by drop × support (= samples lost) descending, then class index."""
        if self.num_labelled:
            support, float_hits, quant_hits = self.label_count, self.float_correct, self.quant_correct
        else:
            support, float_hits, quant_hits = self.float_predicted, self.float_predicted, self.kept
        # drop × support is an integer count of lost samples, so the ordering has no float ties to break.
        lost = float_hits - quant_hits
        classes = np.flatnonzero((support > 0) & (lost > 0))
        order = classes[np.lexsort((classes, -lost[classes]))][:limit]
        return tuple(
            ClassLoss(
                class_index=int(c),
                support=int(support[c]),
                float_rate=float_hits[c] / support[c],
                quant_rate=quant_hits[c] / support[c],
                drop=lost[c] / support[c],
            )
            for c in order
        )

    def _check_outputs(self, float_out: np.ndarray, quant_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        f, q = np.asarray(float_out), np.asarray(quant_out)
        expected = f"(N, {self.num_classes})"
        for name, out in (("float", f), ("quantized", q)):
            if out.ndim != 2 or out.shape[1] != self.num_classes:
                raise DataError(
                    f"{name} outputs have shape {out.shape}, expected {expected}; "
                    "pass class scores of shape (N, num_classes), or reshape them"
                )
        if f.shape != q.shape:
            raise DataError(
                f"float outputs have shape {f.shape} but quantized outputs {q.shape}; pass the same samples"
            )
        return f, q

    def _check_labels(self, labels: np.ndarray | None, n: int) -> np.ndarray:
        if labels is None:
            return np.full(n, UNLABELLED, dtype=np.int64)
        y = np.asarray(labels)
        if y.shape != (n,):
            raise DataError(f"labels have shape {y.shape}, expected ({n},): one class index (or -1) per sample")
        if not np.issubdtype(y.dtype, np.integer):
            # Labels read from CSV or JSON often arrive as floats; accept them when they are whole numbers.
            if not np.issubdtype(y.dtype, np.floating) or not np.all(np.isfinite(y) & (y == np.round(y))):
                raise DataError(f"labels must be integer class indices or -1, got dtype {y.dtype}")
        y = y.astype(np.int64)
        bad = (y < UNLABELLED) | (y >= self.num_classes)
        if bad.any():
            raise DataError(
                f"label {int(y[bad][0])} is outside 0..{self.num_classes - 1}; use -1 for unlabelled samples"
            )
        return y


def _probabilities(float_out: np.ndarray, quant_out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Turn both outputs into distributions, deciding from the float output alone.

    A model ending in softmax has a float output that sums to 1, but its quantized copy often does not (int8 softmax
    rounds small probabilities to 0), and a softmax over probabilities would flatten them; so when the float output is
    already probabilities, the quantized one is clipped at 0 and renormalised instead.
    """
    if not is_probabilities(float_out):
        return softmax(float_out), softmax(quant_out)
    q = np.clip(np.asarray(quant_out, dtype=np.float64), 0.0, None)
    total = q.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(float_out, dtype=np.float64), np.where(total > 0, q / total, q)
