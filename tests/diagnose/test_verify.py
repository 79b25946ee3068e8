"""Counterfactuals at the output (diagnose/verify.py): the splice reproduces both models at its two ends, the planted
faults come out first as verified causes with their measured recovery, and a healthy model gets no cause."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantdoctor import diagnose
from quantdoctor.diagnose.findings import Severity
from tests.planted import planted_gamma_spread, planted_margins, planted_outlier, plain_model, save_model


# "dynamic" (per-channel): the per-tensor hybrid depthwise kernel of this model gives different output every run.
@pytest.mark.parametrize("scheme", ["int8", "dynamic", "int8-io"])
def test_every_op_exact_is_the_float_model_and_no_op_exact_is_the_quantized_model(tiny_model_path, tiny_npz, scheme):
    from quantdoctor.backends.tflite.runner import TfliteRunner
    from quantdoctor.data import load_dataset
    from quantdoctor.diagnose.counterfactuals import Counterfactuals
    from quantdoctor.matching.match import match_graphs
    from quantdoctor.quantize.converter import calibration_from, convert, convert_calibrated_pair
    import keras

    model = keras.saving.load_model(tiny_model_path)
    ds = load_dataset(tiny_npz, (24, 24, 3))
    if scheme == "dynamic":
        fb, qb = convert(model, None), convert(model, scheme)
    else:
        fb, qb = convert_calibrated_pair(model, scheme, calibration_from(ds.subset(np.arange(8))))
    fr, qr = TfliteRunner(fb, 16), TfliteRunner(qb, 16)
    cf = Counterfactuals(fr, qr, match_graphs(fr.graph, qr.graph), ds, 40, batch_size=16)
    assert len(cf.candidates) >= 8  # every conv, depthwise, dense, add, concat, pool has a float twin
    x = ds.subset(np.arange(16))
    xb = next(iter(x.batches(16)))[0]

    def exact(q_op, args):
        if q_op not in cf.twins:
            return [np.asarray(args[0], np.float32)]
        return cf._float_twin(q_op, args)

    nothing = qr.splice([]).run(xb, exact)[0]
    np.testing.assert_array_equal(nothing, qr.run(xb))
    everything = qr.splice(cf._with_conversions(cf.candidates)).run(xb, exact)[0]
    if scheme == "int8-io":  # the int8 output tensor keeps its grid: equal to the float logits within half a step
        step = qr.graph.tensors[qr.graph.outputs[0]].quant.scales[0]
        assert np.max(np.abs(everything - fr.run(xb))) <= 0.5 * step + 1e-6
    else:
        np.testing.assert_allclose(everything, fr.run(xb), rtol=1e-4, atol=1e-4)
    assert cf.baseline.kind == "quantized" and math.isnan(cf.baseline.recovery)


def test_bn_gamma_spread_is_the_verified_cause_and_the_margins_are_context(data):
    d = diagnose(save_model(planted_gamma_spread(), data, "gamma"), data / "data.npz", scheme="dynamic-per-tensor")
    top = d.findings[0]
    assert top.mechanism == "weight_range_disparity" and top.layers == ("proj_bn",)
    assert top.verified and top.role == "cause" and top.severity is Severity.CRITICAL
    assert top.check.kind == "op_exact" and top.check.recovery >= 0.5
    assert top.check.top1_agreement > d.verification.baseline.top1_agreement
    v = d.verification
    assert v.causes == top.positions and v.all_exact.top1_agreement == 1.0
    row = next(r for r in v.table if r.in_causes)
    assert row.label == "proj_bn" and row.alone is not None and row.loss_alone > 0  # alone it loses decisions
    margins = [f for f in d.findings if f.mechanism == "output_margins"]
    assert all(f.role == "context" and not f.verified for f in margins)
    assert "Verified: making proj_bn exact" in d.summary(width=120)


def test_activation_outlier_is_verified_as_the_pair_around_the_crushed_grid(data):
    d = diagnose(save_model(planted_outlier(1000.0), data, "outlier"), data / "data.npz", scheme="int8", calib_count=16)
    top = d.findings[0]
    assert top.mechanism == "activation_outliers" and top.verified and top.check.recovery >= 0.9
    # neither op alone recovers: the loss sits in the int8 grid between them, which only both in float remove
    singles = {r.label: r.exact.recovery for r in d.verification.table if r.in_causes}
    assert set(singles) == {"c2_relu", "proj_bn"} and max(singles.values()) < 0.5


def test_tiny_margins_are_verified_at_the_head(data):
    d = diagnose(save_model(planted_margins(), data, "margins"), data / "data.npz", scheme="int8", calib_count=16)
    top = d.findings[0]
    assert top.mechanism == "output_margins" and top.verified and top.role == "cause"
    assert top.check.recovery >= 0.9


def test_healthy_model_has_no_verified_cause(data):
    d = diagnose(save_model(plain_model(), data, "healthy"), data / "data.npz", scheme="int8", calib_count=16)
    assert d.verification is not None and d.verification.causes == ()
    assert not any(f.verified for f in d.findings)
    assert not [f for f in d.findings if f.severity is Severity.CRITICAL]


def test_no_verify_skips_the_counterfactuals(data):
    d = diagnose(save_model(planted_gamma_spread(), data, "gamma2"), data / "data.npz", scheme="dynamic-per-tensor",
                 verify=False)
    assert d.verification is None and not any(f.verified for f in d.findings)


def test_the_top_findings_fix_is_built_for_real_and_measured(data):
    """--verify-fixes: the planted gamma spread's fix (per-channel weights for proj_bn) built by the quantizer."""
    from quantdoctor.repair.fixes import verify_fixes

    path = save_model(planted_gamma_spread(), data, "gamma_fix")
    d = diagnose(path, data / "data.npz", scheme="dynamic-per-tensor")
    d = verify_fixes(d, path, data / "data.npz", scheme="dynamic-per-tensor")
    fix = d.findings[0].fix_check
    assert fix is not None and "proj_bn" in fix.action
    assert fix.outcome.kind == "fix_applied" and fix.outcome.top1_agreement > fix.before
    assert fix.outcome.recovery >= 0.5
    from quantdoctor.report.findings_text import finding_sentence

    assert "Fix applied with the real quantizer (per-channel weights" in finding_sentence(d.findings[0], d)
    import json

    import jsonschema

    from tests.report.test_schema import SCHEMA

    jsonschema.validate(json.loads(d.to_json()), json.loads(SCHEMA.read_text()))


def test_an_early_decision_is_the_full_decision_and_resuming_it_measures_the_same(data):
    """`recovers` stops once the batches seen settle the answer; it must be the answer of the full evaluation, and a
    later `op_exact` of the same set (resumed) must equal one measured from scratch."""
    import keras

    from quantdoctor.backends.tflite.runner import TfliteRunner
    from quantdoctor.data import load_dataset
    from quantdoctor.diagnose.counterfactuals import Counterfactuals
    from quantdoctor.matching.match import match_graphs
    from quantdoctor.quantize.converter import calibration_from, convert_calibrated_pair

    path = save_model(planted_outlier(1000.0), data, "outlier_early")
    ds = load_dataset(data / "data.npz", (24, 24, 3))
    fb, qb = convert_calibrated_pair(keras.saving.load_model(path), "int8", calibration_from(ds.subset(np.arange(16))))
    fr, qr = TfliteRunner(fb, 8), TfliteRunner(qb, 8)
    matching = match_graphs(fr.graph, qr.graph)
    cf = Counterfactuals(fr, qr, matching, ds, 64, batch_size=8)
    fresh = Counterfactuals(fr, qr, matching, ds, 64, batch_size=8)
    assert cf.baseline.top1_agreement < 0.9  # a loss to win back
    sets = [[op] for op in cf.candidates] + [list(cf.candidates[:k]) for k in (2, 4)] + [list(cf.candidates)]
    answers = set()
    for ops in sets:
        for target in (0.3, 0.5, 0.9):
            got = cf.recovers(ops, target)
            answers.add(got)
            assert got == (fresh.op_exact(ops).recovery >= target), (ops, target)
    assert answers == {True, False}
    assert cf.early > 0  # some were settled before their last batch
    for ops in sets:
        full = cf.op_exact(ops)  # resumed where the early decision stopped
        assert full.top1_agreement == fresh.op_exact(ops).top1_agreement
        assert full.topk_agreement == fresh.op_exact(ops).topk_agreement
        assert full.logit_sqnr_db == pytest.approx(fresh.op_exact(ops).logit_sqnr_db, rel=1e-6)
    assert cf.count == fresh.count  # a resumed evaluation is still one evaluation


def test_regrouping_keeps_each_samples_inputs_labels_and_outputs_together():
    from quantdoctor.diagnose.counterfactuals import _regroup

    rng = np.random.default_rng(0)
    image, vector, label = rng.normal(size=(10, 3, 2)), rng.normal(size=(10, 4)), np.arange(10)
    f_out, q_out = image.sum(axis=(1, 2))[:, None], vector.sum(axis=1)[:, None]
    cuts = [(0, 4), (4, 8), (8, 10)]
    batches = [((image[a:b], vector[a:b]), label[a:b]) for a, b in cuts]
    order = np.array([7, 2, 9, 0, 1, 3, 4, 5, 6, 8])
    new, f_new, q_new = _regroup(batches, [[f_out[a:b]] for a, b in cuts], [[q_out[a:b]] for a, b in cuts], order, 3)
    assert [len(y) for _, y in new] == [3, 3, 3, 1] and all(isinstance(x, tuple) for x, _ in new)
    seen = np.concatenate([y for _, y in new])
    assert np.array_equal(seen, order)
    for ((img, vec), y), (f,), (q,) in zip(new, f_new, q_new, strict=True):
        assert np.array_equal(img, image[y]) and np.array_equal(vec, vector[y])
        assert np.array_equal(f, f_out[y]) and np.array_equal(q, q_out[y])
