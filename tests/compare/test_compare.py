"""compare() on the DenseNet pair: its numbers against an independent measurement (Keras float logits, LiteRT run by
hand, margins and a margin-swap experiment in plain numpy)."""

from __future__ import annotations


import numpy as np
import pytest

from quantdoctor.diagnose.compare import AlignMethod, ExplanationKind, compare
from tests.compare.conftest import SCHEMES

K = 3
BUCKET = 10 ** (1 / 40)  # OutputMargins' histogram bucket: quantiles are exact to within one bucket


def independent(m) -> dict[str, float]:
    """Agreements, accuracies and margins of one side, from the raw outputs."""
    f, q, y = m.float_logits, m.quant_logits, m.labels
    f1 = f.argmax(1)
    rows = np.arange(len(f))
    own = q[rows, f1][:, None]
    # int8 outputs tie often: a tie ranks the lower class index first, as np.argmax does
    rank = (q > own).sum(1) + ((q == own) & (np.arange(q.shape[1]) < f1[:, None])).sum(1)
    top = np.sort(f, axis=1)
    runner_up = np.argsort(-f, axis=1, kind="stable")[:, 1]
    margin = top[:, -1] - top[:, -2]
    noise = (q[rows, f1] - q[rows, runner_up]) - margin
    return {
        "top1_agreement": float(np.mean(q.argmax(1) == f1)),
        "topk_agreement": float(np.mean(rank < K)),
        "float_top1": float(np.mean(f1 == y)),
        "quant_top1": float(np.mean(q.argmax(1) == y)),
        "margin": margin,
        "noise": noise,
    }


def swap_flip_rate(margins: np.ndarray, noise: np.ndarray) -> float:
    """Empirical flip rate of `margins` under `noise` drawn independently (every margin against every noise value)."""
    return float(np.mean(margins[:, None] + noise[None, :] < 0))


@pytest.fixture(scope="module", params=SCHEMES)
def compared(request, densenet_pair, quantized):
    a, b = densenet_pair
    qa, qb = quantized(request.param)
    c = compare(a.model_path, b.model_path, a.data_path, data_b=b.data_path,
                quantized_a=qa.tflite, quantized_b=qb.tflite, top_k=K, batch_size=64)
    return request.param, c, independent(qa), independent(qb)


def test_pair_is_clearly_better_than_chance(densenet_pair):
    a, b = densenet_pair
    assert (a.num_classes, b.num_classes) == (80, 200)
    assert a.heldout_accuracy > 0.6 and b.heldout_accuracy > 0.4  # chance: 0.0125 and 0.005


def test_gap_equals_independent_litert_run(compared):
    scheme, c, ia, ib = compared
    for name in ("top1_agreement", "topk_agreement", "float_top1", "quant_top1"):
        m = c.metric(name)
        assert m.a == pytest.approx(ia[name], abs=1e-12), (scheme, name)
        assert m.b == pytest.approx(ib[name], abs=1e-12), (scheme, name)
    assert c.gap_points == pytest.approx(100 * (ia["top1_agreement"] - ib["top1_agreement"]), abs=1e-9)


def test_margins_match_numpy_on_float_logits(compared):
    scheme, c, ia, ib = compared
    for side, ind in ((c.margins_a, ia), (c.margins_b, ib)):
        assert side.num_samples == len(ind["margin"])
        assert side.top1_margin_mean == pytest.approx(ind["margin"].mean(), rel=1e-4)
        assert side.top1_margin_min == pytest.approx(ind["margin"].min(), rel=1e-3, abs=1e-5)
        ratio = side.top1_margin_median / np.median(ind["margin"])
        assert 1 / BUCKET <= ratio <= BUCKET, scheme
        assert side.pair_noise_std == pytest.approx(ind["noise"].std(), rel=1e-3, abs=1e-6)
        assert side.observed_flip_rate == pytest.approx(1 - ind["top1_agreement"], abs=1e-12)
    # the 200-class model has the smaller margins, as the user story says
    assert np.median(ib["margin"]) < np.median(ia["margin"])


def test_layers_align_by_label_and_only_the_head_differs(compared):
    _, c, _, _ = compared
    assert len(c.layers) == len(c.a.layers) == len(c.b.layers)
    assert not c.unaligned
    assert {p.method for p in c.layers} == {AlignMethod.LABEL}
    assert all(p.label_a == p.label_b for p in c.layers)
    differing = [p for p in c.layers if p.shape_a != p.shape_b]
    assert [(p.label_a, p.shape_a[-1], p.shape_b[-1]) for p in differing] == [("logits", 80, 200)]


def test_explanations_rank_the_mechanism_the_swap_experiment_supports(compared):
    """Swap the noise: B's margins under A's measured logit noise (numpy, every margin against every noise value).
    What that adds over A is the margins' part of the gap; the rest of B's flips is its extra noise. When one part
    clearly dominates, compare must rank it first; when they are close, either may lead."""
    scheme, c, ia, ib = compared
    p_a = swap_flip_rate(ia["margin"], ia["noise"])
    p_swap = swap_flip_rate(ib["margin"], ia["noise"])
    p_b = swap_flip_rate(ib["margin"], ib["noise"])
    margin_part, noise_part = p_swap - p_a, p_b - p_swap
    kinds = [e.kind for e in c.explanations]
    print(f"{scheme}: empirical margin part {margin_part:.4f}, noise part {noise_part:.4f}; "
          f"compare: {[(e.kind.value, round(e.score, 3)) for e in c.explanations]}")
    if abs(ia["top1_agreement"] - ib["top1_agreement"]) * min(len(ia["margin"]), len(ib["margin"])) < 1:  # a tie
        assert kinds == [ExplanationKind.NO_GAP]
        return
    supported = {ExplanationKind.MARGINS, ExplanationKind.LOGIT_NOISE}
    if abs(margin_part - noise_part) >= 0.005 and max(margin_part, noise_part) >= 1.5 * min(margin_part, noise_part):
        supported = {ExplanationKind.MARGINS if margin_part > noise_part else ExplanationKind.LOGIT_NOISE}
    assert kinds[0] in supported, (scheme, margin_part, noise_part)
    margins = next(e for e in c.explanations if e.kind is ExplanationKind.MARGINS)
    assert margins.evidence["worse"] == "B"
    assert margins.evidence["margin_part"] == pytest.approx(margin_part, abs=0.01 + 0.3 * abs(margin_part))
    assert margins.evidence["observed_gap"] == pytest.approx(ia["top1_agreement"] - ib["top1_agreement"], abs=1e-12)
    assert margins.score == pytest.approx(margins.evidence["margin_part"] / margins.evidence["observed_gap"])
    # the sentence quotes the numbers of the evidence
    assert f"{100 * margins.evidence['observed_gap']:+.1f} points" in margins.sentence


def test_summary_and_json_carry_the_ranked_explanations(compared):
    import json

    _, c, _, _ = compared
    d = json.loads(c.to_json())
    assert [e["kind"] for e in d["explanations"]] == [e.kind.value for e in c.explanations]
    assert d["gap_points"] == pytest.approx(c.gap_points)
    assert d["margins_b"]["num_classes"] == 200 and d["margins_a"]["num_classes"] == 80
    text = c.summary(width=100)
    assert c.explanations[0].sentence.split(":")[0] in " ".join(text.split())
    assert max(len(line) for line in text.splitlines()) <= 100
