"""Layer alignment and the parting layer on hand-built layers (no model is run)."""

from __future__ import annotations

import math

from quantdoctor.diagnose.compare import AlignMethod, align_layers, parting_layer, predicted_flip_rate
from quantdoctor.diagnose.results import LayerResult, MatchMethod
from quantdoctor.stats.margins import MarginAccumulator
from tests.report.conftest import tensor_error


def layer(position: int, label: str, op: str, sqnr: float, shape=(1, 8)) -> LayerResult:
    return LayerResult(
        position=position, float_tensor=f"t{position}", quant_tensor=f"q{position}", keras_layers=(label,), op_type=op,
        shape=shape, match=MatchMethod.EXACT_ID, accumulated=tensor_error(sqnr), quant=None, weights=None,
        input_tensors=(), input_sqnr_db=None, rmse_over_scale=None,
    )


def test_labels_first_then_position_for_the_rest_and_the_unaligned_listed():
    a = [layer(0, "conv", "CONV_2D", 40), layer(1, "bn", "MUL", 38), layer(2, "bn", "MUL", 36),
         layer(3, "head_a", "FULLY_CONNECTED", 30), layer(4, "extra_a", "MEAN", 30)]
    b = [layer(0, "conv", "CONV_2D", 40), layer(1, "bn", "MUL", 34), layer(2, "bn", "MUL", 31),
         layer(3, "head_b", "FULLY_CONNECTED", 20, shape=(1, 20)), layer(4, "pad", "PAD", 20)]
    pairs, unaligned = align_layers(tuple(a), tuple(b))
    got = [(p.label_a, p.label_b, p.method, p.position_a, p.position_b) for p in pairs]
    assert got == [
        ("conv", "conv", AlignMethod.LABEL, 0, 0),
        ("bn", "bn", AlignMethod.LABEL, 1, 1),  # the n-th occurrence of a label pairs with the n-th
        ("bn", "bn", AlignMethod.LABEL, 2, 2),
        ("head_a", "head_b", AlignMethod.POSITION, 3, 3),
    ]
    assert [(u.side, u.label) for u in unaligned] == [("a", "extra_a"), ("b", "pad")]
    assert [p.delta_db for p in pairs] == [0, -4, -5, -10]
    assert parting_layer(pairs).position_b == 1  # first layer >= 3 dB below
    assert parting_layer(pairs, worse="a") is None


def test_predicted_flip_rate_reproduces_the_accumulators_own_prediction():
    import numpy as np

    rng = np.random.default_rng(0)
    f = rng.normal(size=(500, 50)) * 3
    q = f + rng.normal(scale=0.5, size=f.shape)
    acc = MarginAccumulator(k=3)
    acc.update(f, q)
    m = acc.result()
    assert predicted_flip_rate(m, m.pair_noise_std, m.pair_noise_mean) == m.predicted_flip_rate
    more_noise = predicted_flip_rate(m, 2 * m.pair_noise_std, m.pair_noise_mean)
    assert more_noise > m.predicted_flip_rate
    assert math.isnan(predicted_flip_rate(m, math.nan, 0.0))
