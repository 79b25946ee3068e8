"""mixed_ranges: parts of very different range on one scale. Hand-built layers for the rule, then a planted
detector-style head (tests/mixed_models.py) diagnosed, verified and repaired end to end."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from quantdoctor.backends.base import Graph, OpInfo, QuantParams, TensorInfo
from quantdoctor.diagnose.findings import Context, Finding, Severity
from quantdoctor.diagnose.mixed_ranges import absorb_symptoms, grid_sqnr_db, mixed_ranges
from quantdoctor.diagnose.results import LayerResult, MatchMethod
from quantdoctor.stats.activations import ActivationStats
from tests.report.conftest import tensor_error


def _stats(channel_min, channel_max) -> ActivationStats:
    lo, hi = float(min(channel_min)), float(max(channel_max))
    return ActivationStats(
        num_values=1000, num_nonfinite=0, min=lo, max=hi, mean=(lo + hi) / 2, std=1.0, kurtosis=0.0,
        percentiles={"0.1": lo, "99.9": hi}, percentile_error_bounds={}, clipped_share=0.0, zero_share=0.0,
        channel_min=tuple(channel_min), channel_max=tuple(channel_max), channel_range_ratio=1.0,
    )


def _layer(position, label, op, channel_min, channel_max, scale=None, inputs=(), sqnr=40.0, share=0.0):
    quant = None if scale is None else QuantParams("int8", (scale,), (-128,), None)
    return LayerResult(
        position=position, float_tensor=f"t_{label}", quant_tensor=f"q_{label}", keras_layers=(label,), op_type=op,
        shape=(len(channel_min),), match=MatchMethod.EXACT_ID, accumulated=tensor_error(sqnr), quant=quant,
        weights=None, input_tensors=tuple(f"t_{i}" for i in inputs), input_sqnr_db=None, rmse_over_scale=None,
        float_stats=_stats(channel_min, channel_max), output_error_share=share,
    )


def _ctx(layers, graph=None, agreement=0.1) -> Context:
    return Context(SimpleNamespace(layers=tuple(layers), model=SimpleNamespace(top1_agreement=agreement)), graph)


def _head(box_max=300.0, score_scale=1 / 256, concat_scale=None, concat_inputs=("boxes", "scores")):
    """boxes (0..box_max) and scores (0..1) concatenated and read by a dense head: the planted model, by hand."""
    concat_scale = box_max / 255 if concat_scale is None else concat_scale
    return [
        _layer(1, "boxes", "MUL", [0.0] * 4, [box_max] * 4, concat_scale),
        _layer(2, "scores", "LOGISTIC", [0.0] * 10, [1.0] * 10, score_scale, sqnr=45.0),
        _layer(4, "head_concat", "CONCATENATION", [0.0] * 14, [box_max] * 4 + [1.0] * 10, concat_scale,
               inputs=concat_inputs, share=0.1),
        _layer(5, "logits", "FULLY_CONNECTED", [-5.0] * 10, [5.0] * 10, 0.04, inputs=("head_concat",), sqnr=1.0,
               share=0.85),
    ]


def test_a_concat_of_pixels_and_scores_is_found_with_its_numbers():
    (f,) = mixed_ranges(_ctx(_head()))
    e = f.evidence
    assert (e["op"], e["wide_part"], e["small_part"], e["grouped_by"]) == ("head_concat", "boxes", "scores", "inputs")
    assert e["range_ratio"] == pytest.approx(300.0)
    assert e["shared_scale"] == pytest.approx(300 / 255)
    assert e["small_levels"] == pytest.approx(255 / 300)  # the scores span 0.85 of a step...
    assert e["occupied_levels"] == 2  # ...so each rounds to 0 or to one step
    assert e["small_sqnr_db"] < 6 and e["wide_sqnr_db"] > 40  # boxes look fine, the scores are gone
    assert e["small_input_sqnr_db"] == 45.0
    assert f.positions == (4, 5)  # the concat and its integer reader, which would re-quantize a float concat
    assert f.score == pytest.approx(0.95) and f.severity is Severity.CRITICAL


def test_ranges_within_the_ratio_are_not_mixed():
    assert mixed_ranges(_ctx(_head(box_max=15.0))) == []  # ×15 < 20: the scores keep 17 levels


def test_a_float_concat_has_no_shared_grid():
    layers = _head()
    layers[2] = _layer(4, "head_concat", "CONCATENATION", [0.0] * 14, [300.0] * 4 + [1.0] * 10, None,
                       inputs=("boxes", "scores"))  # dynamic range: activations stay float
    assert mixed_ranges(_ctx(layers)) == []


def test_a_graph_output_is_split_into_channel_groups():
    out = _layer(3, "head", "FULLY_CONNECTED", [0.0] * 14, [300.0] * 4 + [1.0] * 10, 300 / 255, sqnr=45.0,
                 share=0.9)
    (f,) = mixed_ranges(_ctx([out]))
    e = f.evidence
    assert (e["grouped_by"], e["wide_part"], e["small_part"]) == ("channels", "head[0:4]", "head[4:14]")
    assert f.positions == (3,) and math.isnan(e["small_input_sqnr_db"])


def test_the_requantize_op_in_front_of_the_concat_is_among_the_positions():
    t = lambda i, name, producer, consumers: TensorInfo(i, name, (1, 4), "int8", None, producer, consumers, False)
    graph = Graph(
        tensors={0: t(0, "q_boxes", 1, (4,)), 1: t(1, "q_scores", 2, (3,)), 2: t(2, "requantized", 3, (4,)),
                 3: t(3, "q_head_concat", 4, (5,)), 4: t(4, "q_logits", 5, ())},
        ops=(OpInfo(1, "MUL", (), (0,)), OpInfo(2, "LOGISTIC", (), (1,)), OpInfo(3, "QUANTIZE", (1,), (2,)),
             OpInfo(4, "CONCATENATION", (0, 2), (3,)), OpInfo(5, "FULLY_CONNECTED", (3,), (4,))),
        inputs=(), outputs=(4,), conversion_types=frozenset({"QUANTIZE", "DEQUANTIZE"}),
    )
    (f,) = mixed_ranges(_ctx(_head(), graph))
    assert f.positions == (3, 4, 5) and f.evidence["requantize_op"] == 3


def test_a_producer_on_the_shared_scale_is_where_the_crush_happens():
    layers = _head(score_scale=300 / 255)  # no requantize op: the converter gave the scores the concat's scale
    (f,) = mixed_ranges(_ctx(layers))
    assert f.positions == (2, 4, 5) and f.layers == ("scores", "head_concat", "logits")


def test_outliers_and_coverage_on_the_same_op_become_info():
    (mixed,) = mixed_ranges(_ctx(_head()))
    outliers = Finding("activation_outliers", Severity.CRITICAL, (4, 5), ("head_concat", "logits"), (), {}, "", 0.95)
    elsewhere = Finding("low_grid_coverage", Severity.WARNING, (1, 4), ("boxes",), (), {}, "", 0.1)
    found = absorb_symptoms([outliers, elsewhere, mixed])
    assert found[0].severity is Severity.INFO and found[0].evidence["explained_by"] == "head_concat"
    assert found[1].severity is Severity.WARNING  # its own layer is not one the mixed ranges name


@pytest.mark.parametrize("lo, hi, scale, zero, expected", [
    (0.0, 1.0, 4.0, 0, 0.0),  # everything rounds to 0: the noise is the signal
    (0.0, 0.99, 1 / 256, -128, 10 * math.log10((0.99 ** 2 / 3) / ((1 / 256) ** 2 / 12))),  # fine grid: step²/12
    (0.0, 1.0, 1 / 1024, 0, 1.725),  # int8 from 0: the grid ends at 127/1024 and clips the rest
    (0.0, 0.0, 1.0, 0, math.nan),
])
def test_grid_sqnr_of_uniform_values(lo, hi, scale, zero, expected):
    got = grid_sqnr_db(lo, hi, scale, zero)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected, abs=0.05)


def test_the_sentence_quotes_the_numbers():
    from quantdoctor.report.findings_text import finding_sentence

    (f,) = mixed_ranges(_ctx(_head()))
    text = finding_sentence(f)
    assert "CONCATENATION 'head_concat' shares one int8 scale (1.18) between parts spanning 0..300 (boxes)" in text
    assert "0..1 (scores, 300× narrower): the small input spans 0.85 steps and rounds to 2 levels" in text
    assert "cannot be applied automatically" in text


def test_candidates_keep_the_concat_and_its_reader_float_and_int16_where_the_builder_can():
    from quantdoctor.repair.actions import Int16Activations, KeepFloat
    from quantdoctor.repair.candidates import rank_candidates

    layers = _head()
    (f,) = mixed_ranges(_ctx(layers))
    d = SimpleNamespace(layers=tuple(layers), findings=(f,))
    names = {l.float_tensor for l in layers}
    ort = [c.action for c in rank_candidates(d, "ort-qdq-int8", names) if c.reason.startswith("finding mixed_ranges")]
    assert KeepFloat(ops=("t_head_concat", "t_logits")) in ort
    assert Int16Activations(ops=("t_head_concat",)) in ort
    a16 = [c.action for c in rank_candidates(d, "ort-qdq-a16w8", names) if c.reason.startswith("finding mixed")]
    assert not [a for a in a16 if isinstance(a, Int16Activations)]


# -- end to end: the planted head, int8 ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    from tests.mixed_models import mixed_data, mixed_head_model

    folder = tmp_path_factory.mktemp("mixed")
    x, y = mixed_data()
    np.savez(folder / "data.npz", x=x, y=y)
    mixed_head_model().save(folder / "mixed.keras")
    return folder


def test_the_planted_head_is_a_verified_mixed_ranges_finding(planted):
    from quantdoctor import diagnose

    d = diagnose(planted / "mixed.keras", planted / "data.npz", scheme="int8", calib_count=32)
    assert d.model.top1_agreement < 0.3  # every score rounds to zero: the decisions are gone
    top = d.findings[0]
    assert top.mechanism == "mixed_ranges" and top.layers[0] == "head_concat"
    assert top.evidence["small_part"] == "scores" and top.evidence["wide_part"] == "boxes_px"
    assert top.evidence["range_ratio"] >= 100 and top.evidence["occupied_levels"] == 1
    assert top.evidence["requantize_op"] in top.positions  # LOGISTIC's 1/256 grid is requantized in front of it
    assert top.verified and top.role == "cause" and top.check.recovery >= 0.9
    outliers = [f for f in d.findings if f.mechanism in ("activation_outliers", "low_grid_coverage")]
    assert all(f.severity is Severity.INFO and not f.verified for f in outliers)


def test_the_planted_head_is_repaired_by_keeping_the_concat_float(planted, tmp_path):
    from quantdoctor.repair import repair
    from quantdoctor.repair.actions import KeepFloat, short_name

    r = repair(planted / "mixed.keras", planted / "data.npz", scheme="int8", calib_count=32, max_drop=5.0,
               out=tmp_path)
    assert r.baseline_metric < 0.3 and r.budget_met and r.final_metric >= 0.95
    assert any(isinstance(a, KeepFloat) and "head_concat" in {short_name(o) for o in a.targets()} for a in r.actions)
    assert r.evaluations <= 10


def test_the_same_head_with_matching_ranges_has_no_finding(planted):
    from quantdoctor import diagnose
    from tests.mixed_models import mixed_head_model

    mixed_head_model(box_scale=1.0).save(planted / "control.keras")  # boxes in 0..1 like the scores
    d = diagnose(planted / "control.keras", planted / "data.npz", scheme="int8", calib_count=32)
    assert d.model.top1_agreement >= 0.95
    assert not [f for f in d.findings if f.mechanism == "mixed_ranges"]
