"""ClassificationAccumulator on tiny hand-built outputs, plus streaming, merging and validation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from quantdoctor.errors import DataError, UserInputError
from quantdoctor.stats.classification import ClassificationAccumulator, ClassLoss, ModelMetrics, in_top_k

# 4 samples, 3 classes. Float top-1: 0, 1, 2, 2.
FLOAT = np.array([[2, 1, 0], [0, 3, 1], [0, 1, 2], [1, 0, 2]], dtype=np.float32)
# Quant top-1: 0, 2, 1, 0; quant top-2: {0,1}, {2,1}, {1,2}, {0,1}.
QUANT = np.array([[2, 1, 0], [0, 1, 3], [0, 2, 1], [2, 1, 0]], dtype=np.float32)
LABELS = np.array([0, 1, -1, 2])


def _run(labels=LABELS, k=2) -> ModelMetrics:
    acc = ClassificationAccumulator(num_classes=3, k=k)
    acc.update(FLOAT, QUANT, labels)
    return acc.result()


def test_agreement_and_accuracy_by_hand():
    m = _run()
    assert (m.num_samples, m.num_labelled, m.k) == (4, 3, 2)
    # top-1 agrees on sample 0 only; float top-1 is in quant top-2 for samples 0, 1, 2 (not 3: 2 ∉ {0,1})
    assert (m.top1_agreement, m.topk_agreement) == (0.25, 0.75)
    # labelled samples 0, 1, 3 (labels 0, 1, 2): float right on all three, quant only on sample 0
    assert (m.float_top1, m.quant_top1) == (1.0, pytest.approx(1 / 3))
    # top-2: float top-2 holds every label; quant {0,1}∋0, {2,1}∋1, {0,1}∌2
    assert (m.float_topk, m.quant_topk) == (1.0, pytest.approx(2 / 3))


def test_logit_error_by_hand():
    m = _run()
    # Σf² = 5+10+5+5 = 25; Σe² = 0+8+2+6 = 16
    assert m.logit_sqnr_db == pytest.approx(10 * math.log10(25 / 16), rel=1e-12)
    # per-sample cosines 1, 6/10, 4/5, 2/5 -> mean 0.7
    assert m.logit_cosine == pytest.approx(0.7, rel=1e-12)


def test_kl_of_logits_by_hand():
    # softmax([0,0]) = [.5,.5], softmax([0, ln 3]) = [.25,.75]; KL = .5·ln 2 + .5·ln(2/3) = 0.143841; second row 0
    acc = ClassificationAccumulator(2, k=1)
    acc.update(np.array([[0.0, 0.0], [1.0, 2.0]]), np.array([[0.0, math.log(3)], [1.0, 2.0]]))
    assert acc.result().kl_mean == pytest.approx(0.143841 / 2, rel=1e-5)


def test_kl_of_probabilities_renormalises_the_quantized_output():
    # Float ends in softmax; the quantized output lost mass (sums to 0.8) as int8 softmax does.
    # Renormalised [.2,.6] -> [.25,.75], KL 0.143841. A softmax of [.2,.6] would give 0.0204 instead.
    acc = ClassificationAccumulator(2, k=1)
    acc.update(np.array([[0.5, 0.5]]), np.array([[0.2, 0.6]]))
    assert acc.result().kl_mean == pytest.approx(0.143841, rel=1e-5)


def test_worst_classes_with_labels_use_per_class_accuracy():
    worst = _run().worst_classes
    # class 0 keeps its only labelled sample; classes 1 and 2 each lose one of one: tie on drop×support -> index order
    assert worst == (ClassLoss(1, 1, 1.0, 0.0, 1.0), ClassLoss(2, 1, 1.0, 0.0, 1.0))


def test_worst_classes_without_labels_use_kept_share_of_float_predictions():
    m = _run(labels=None)
    assert m.num_labelled == 0
    assert (m.float_top1, m.float_topk, m.quant_top1, m.quant_topk) == (None, None, None, None)
    # float predicts class 2 twice (samples 2, 3) and quant keeps neither: 2 lost; class 1 once, lost; class 0 kept
    assert m.worst_classes == (ClassLoss(2, 2, 1.0, 0.0, 1.0), ClassLoss(1, 1, 1.0, 0.0, 1.0))


def test_worst_classes_sorted_by_samples_lost_and_capped():
    # 12 classes; float predicts class c for c+1 samples, quant loses all of them except in class 0
    num_classes = 12
    predicted = np.repeat(np.arange(num_classes), np.arange(1, num_classes + 1))
    float_out = np.eye(num_classes)[predicted]
    quant_out = np.eye(num_classes)[np.where(predicted == 0, 0, (predicted + 1) % num_classes)]
    acc = ClassificationAccumulator(num_classes)
    acc.update(float_out, quant_out)
    worst = acc.result().worst_classes
    assert [loss.class_index for loss in worst] == list(range(11, 1, -1))  # 10 of the 11 losing classes
    assert [loss.support for loss in worst] == list(range(12, 2, -1))
    assert [loss.class_index for loss in acc.result(max_worst=3).worst_classes] == [11, 10, 9]


def test_unlabelled_samples_count_for_agreement_only():
    acc = ClassificationAccumulator(3, k=2)
    acc.update(FLOAT, QUANT, np.array([-1, -1, -1, 2]))
    m = acc.result()
    assert (m.num_samples, m.num_labelled) == (4, 1)
    assert m.top1_agreement == 0.25
    # only sample 3 (label 2): float right, quant wrong (0), quant top-2 {0,1} ∌ 2
    assert (m.float_top1, m.quant_top1, m.float_topk, m.quant_topk) == (1.0, 0.0, 1.0, 0.0)


def test_ties_resolve_like_argmax():
    acc = ClassificationAccumulator(3, k=2)
    tied = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [0.0, 2.0, 2.0]])
    # float top-1 by np.argmax: 0, 2, 1
    float_out = np.array([[5.0, 0.0, 0.0], [0.0, 0.0, 5.0], [0.0, 2.0, 2.0]])
    acc.update(float_out, tied, np.array([0, 2, 2]))
    m = acc.result()
    # quant top-1 (argmax): 0, 0, 1 -> agrees on samples 0 and 2
    assert m.top1_agreement == pytest.approx(2 / 3)
    # quant top-2 with ties to the lower index: {0,1}, {0,1}, {1,2} -> float top-1 0 ∈, 2 ∉, 1 ∈
    assert m.topk_agreement == pytest.approx(2 / 3)
    # labels 0, 2, 2: quant top-1 0 ✓, 0 ✗, 1 ✗; quant top-2 ∋0 ✓, ∌2 ✗, ∋2 ✓
    assert (m.quant_top1, m.quant_topk) == (pytest.approx(1 / 3), pytest.approx(2 / 3))


def test_in_top_k_matches_a_stable_sort():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 3, size=(200, 6)).astype(float)  # many ties
    index = rng.integers(0, 6, size=200)
    for k in (1, 2, 4):
        stable_top_k = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        assert np.array_equal(in_top_k(scores, index, k), (stable_top_k == index[:, None]).any(axis=1))
    assert np.array_equal(in_top_k(scores, np.argmax(scores, axis=1), 1), np.ones(200, dtype=bool))


def test_k_larger_than_num_classes_is_clipped():
    acc = ClassificationAccumulator(3, k=5)
    assert acc.k == 3
    acc.update(FLOAT, QUANT, LABELS)
    m = acc.result()
    assert (m.k, m.topk_agreement, m.quant_topk) == (3, 1.0, 1.0)


def _random_outputs(seed: int = 0, n: int = 50, c: int = 7):
    rng = np.random.default_rng(seed)
    float_out = rng.normal(size=(n, c))
    quant_out = float_out + rng.normal(scale=0.7, size=(n, c))
    labels = rng.integers(-1, c, size=n)
    return float_out, quant_out, labels


def _assert_same(a: ModelMetrics, b: ModelMetrics) -> None:
    da, db = a.to_dict(), b.to_dict()
    for key in ("kl_mean", "logit_sqnr_db", "logit_cosine"):
        assert da.pop(key) == pytest.approx(db.pop(key), rel=1e-9)
    assert da == db


def test_streaming_and_merge_equal_all_at_once():
    float_out, quant_out, labels = _random_outputs()
    whole = ClassificationAccumulator(7)
    whole.update(float_out, quant_out, labels)
    expected = whole.result()
    assert 0 < expected.top1_agreement < 1 and expected.worst_classes  # the data exercises every counter

    streamed = ClassificationAccumulator(7)
    for lo, hi in ((0, 13), (13, 13), (13, 40), (40, 50)):
        streamed.update(float_out[lo:hi], quant_out[lo:hi], labels[lo:hi])
    _assert_same(streamed.result(), expected)

    first, second = ClassificationAccumulator(7), ClassificationAccumulator(7)
    first.update(float_out[:20], quant_out[:20], labels[:20])
    second.update(float_out[20:], quant_out[20:], labels[20:])
    first_before = first.result()
    _assert_same(first.merge(second).result(), expected)
    assert first.result() == first_before


def test_merge_rejects_different_shapes():
    with pytest.raises(ValueError, match="num_classes, k"):
        ClassificationAccumulator(3).merge(ClassificationAccumulator(4))


def test_empty_result():
    m = ClassificationAccumulator(5).result()
    assert m.num_samples == 0 and math.isnan(m.top1_agreement) and math.isnan(m.kl_mean)
    assert m.float_top1 is None and m.worst_classes == ()


def test_result_round_trips_through_json():
    m = _run()
    data = json.loads(json.dumps(m.to_dict()))
    assert data["worst_classes"][0]["class_index"] == 1
    assert ModelMetrics.from_dict(data) == m


@pytest.mark.parametrize(
    "float_out, quant_out, labels, message",
    [
        (np.ones((2, 4)), np.ones((2, 4)), None, r"shape \(2, 4\), expected \(N, 3\)"),
        (np.ones((2, 3)), np.ones((3, 3)), None, r"quantized outputs \(3, 3\)"),
        (np.ones(3), np.ones(3), None, r"float outputs have shape \(3,\)"),
        (np.ones((2, 3)), np.ones((2, 3)), np.array([0, 3]), "label 3 is outside 0..2"),
        (np.ones((2, 3)), np.ones((2, 3)), np.array([0, -2]), "label -2"),
        (np.ones((2, 3)), np.ones((2, 3)), np.array([0.5, 1.0]), "integer class indices"),
        (np.ones((2, 3)), np.ones((2, 3)), np.array([0, 1, 2]), r"labels have shape \(3,\)"),
    ],
)
def test_bad_input_raises_data_error(float_out, quant_out, labels, message):
    acc = ClassificationAccumulator(3)
    with pytest.raises(DataError, match=message):
        acc.update(float_out, quant_out, labels)
    assert acc.num_samples == 0


def test_whole_float_labels_are_accepted():
    acc = ClassificationAccumulator(3, k=2)
    acc.update(FLOAT, QUANT, LABELS.astype(np.float64))
    assert acc.result() == _run()


@pytest.mark.parametrize("num_classes, k", [(0, 1), (3, 0), (2.5, 1), (True, 1)])
def test_bad_constructor_arguments(num_classes, k):
    with pytest.raises(UserInputError, match="must be a positive integer"):
        ClassificationAccumulator(num_classes, k)
