"""The one real-model test: EfficientNet-Lite0 on the 120 demo photos reproduces both demo figures and findings."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

# Measured with `quantdoctor demo` (README): the per-tensor scheme collapses, today's default does not.
EXPECTED = {"dynamic-per-tensor": 0.00, "dynamic": 0.98}


@pytest.fixture(scope="module")
def demo_data():
    from quantdoctor.data import Dataset
    from quantdoctor.demo.photos import demo_images

    images = demo_images()
    return Dataset.from_images(
        list(images.paths), list(images.labels), (224, 224, 3), preprocess="efficientnet-lite", description=images.source
    )


@pytest.mark.parametrize("scheme", list(EXPECTED))
def test_demo_agreement_and_onset(demo_data, scheme):
    from quantdoctor import diagnose
    from quantdoctor.demo.efficientnet_lite0 import demo_model_path

    d = diagnose(demo_model_path(), demo_data, scheme=scheme, batch_size=20)
    assert d.run.num_eval_samples == 120 and d.model.num_labelled == 20
    assert d.model.top1_agreement == pytest.approx(EXPECTED[scheme], abs=0.03)
    assert d.model.float_top1 == pytest.approx(0.85)
    assert d.coverage.weighted_ratio == 1.0 and d.coverage.ratio == 1.0
    if scheme == "dynamic-per-tensor":
        # The collapse starts at the first depthwise conv whose weights are big enough to be quantized.
        assert d.onset is not None and d.onset.label == "b2_dw_relu"
        assert d.worst_layers(1)[0].label == "b2_dw_relu"
        # Explain: the runtime departs from what the depthwise ops' own parameters predict (a kernel defect).
        top = d.findings[0]
        assert top.mechanism == "kernel_defect" and top.severity.value == "critical"
        assert top.op_types == ("DEPTHWISE_CONV_2D",) and len(top.positions) == 14
        assert top.evidence["excess_db"] >= 20
        assert len(d.repros) == 1
    else:
        assert d.onset is None
        assert not [f for f in d.findings if f.severity.value == "critical"]  # a healthy model: nothing critical
        assert all(l.excess_db is None or l.excess_db < 10 for l in d.layers)
