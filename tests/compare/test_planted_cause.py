"""The seed question with a planted cause: B (200 classes) gets one conv whose per-tensor weight scale is set by a
single output channel (tests/compare/planted_pair.py), the float model unchanged. The op's own isolated SQNR stays
above 25 dB, B's margins are small, and still the first finding must be that conv, verified by its counterfactual,
with the margins shown as context; `compare` must name it first."""

from __future__ import annotations

import pytest

from quantdoctor import compare, diagnose
from quantdoctor.diagnose.findings import Severity
from tests.compare.planted_pair import PLANTED_LAYER, plant


@pytest.fixture(scope="module")
def planted_b(densenet_pair, tmp_path_factory):
    import keras

    _, b = densenet_pair
    model = keras.saving.load_model(b.model_path)
    plant(model)
    path = tmp_path_factory.mktemp("planted") / "densenet200_planted.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def diagnosed(planted_b, densenet_pair):
    _, b = densenet_pair
    return diagnose(planted_b, b.data_path, scheme="dynamic-per-tensor", batch_size=64)


def test_the_planted_conv_is_the_first_finding_verified_and_margins_are_context(diagnosed):
    d = diagnosed
    assert d.model.top1_agreement < 0.9  # the plant costs B more than 10 % of its decisions
    top = d.findings[0]
    layer = next(l for l in d.layers if l.label == PLANTED_LAYER)
    assert layer.isolated.sqnr_db > 25  # the op itself looks healthy: a proxy would not single it out
    assert top.layers == (PLANTED_LAYER,) and top.mechanism == "weight_range_disparity"
    assert top.verified and top.role == "cause" and top.severity is Severity.CRITICAL
    assert top.check.top1_agreement - d.verification.baseline.top1_agreement >= 0.1
    assert top.check.recovery >= 0.8
    margins = next(f for f in d.findings if f.mechanism == "output_margins")
    assert margins.role == "context" and not margins.verified
    assert d.findings.index(margins) > 0
    assert d.verification.causes == (layer.position,)
    text = d.summary(width=120)
    assert f"Verified: making {PLANTED_LAYER} exact" in text and "Context for" in text


def test_compare_leads_with_the_verified_cause(planted_b, densenet_pair):
    a, b = densenet_pair
    c = compare(a.model_path, planted_b, a.data_path, data_b=b.data_path, scheme="dynamic-per-tensor", batch_size=64)
    first = c.explanations[0]
    assert first.kind.value == "verified_cause"
    assert first.evidence["layers"] == [PLANTED_LAYER] and first.evidence["worse"] == "B"
    assert first.evidence["after"] > first.evidence["before"] + 0.1
    assert f"Fixing {PLANTED_LAYER} in B" in first.sentence
    assert "A has no" in first.sentence
