"""regress: per-output and per-channel error, fidelity by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantdoctor.tasks.base import TaskOptions
from quantdoctor.tasks.regress import RegressAccumulator, fidelity
from tests.tasks.conftest import assert_same_metrics, specs


def test_metrics_by_hand():
    acc = RegressAccumulator(specs((2,), ()), TaskOptions())
    # output 0: ‖f‖ = 5, ‖q − f‖ = 1 → relative error 0.2; output 1 exact
    acc.update([np.array([[3.0, 0.0], [0.0, 4.0]]), np.array([1.0, 1.0])],
               [np.array([[3.0, 0.0], [0.0, 5.0]]), np.array([1.0, 1.0])])
    r = acc.result()
    assert r.metrics == pytest.approx({"fidelity": 1 - (0.2 + 0) / 2, "relative_error": 0.1,
                                       "sqnr_db": 10 * math.log10(25), "max_abs_error": 1.0})
    assert r.num_samples == 2 and r.headline == "fidelity"
    ch0, ch1 = r.details["channels"]["0"]
    assert (ch0["relative_error"], ch0["sqnr_db"]) == (0.0, math.inf)
    assert ch1 == pytest.approx({"channel": 1, "relative_error": 0.25, "sqnr_db": 10 * math.log10(16),
                                 "max_abs_error": 1.0})
    assert "1" not in r.details["channels"]  # a scalar output has no channels


@pytest.mark.parametrize("errors, expected", [
    ([0.0], 1.0), ([0.1, 0.3], 0.8), ([1.5], 0.0), ([math.inf, 0.0], 0.0), ([], math.nan), ([math.nan], math.nan),
])
def test_fidelity(errors, expected):
    got = fidelity(errors)
    assert (math.isnan(got) and math.isnan(expected)) or got == pytest.approx(expected)


def test_merge_equals_all_at_once():
    rng = np.random.default_rng(2)
    f = [rng.normal(size=(9, 5, 3)), rng.normal(size=(9,))]
    q = [x + rng.normal(scale=0.1, size=x.shape) for x in f]
    whole = RegressAccumulator(specs((5, 3), ()), TaskOptions())
    whole.update(f, q)
    a, b = RegressAccumulator(specs((5, 3), ()), TaskOptions()), RegressAccumulator(specs((5, 3), ()), TaskOptions())
    a.update([x[:4] for x in f], [x[:4] for x in q])
    b.update([x[4:] for x in f], [x[4:] for x in q])
    merged, expected = a.merge(b).result(), whole.result()
    assert_same_metrics(merged.metrics, expected.metrics)
    assert merged.num_samples == 9
    for m, e in zip(merged.details["channels"]["0"], expected.details["channels"]["0"]):
        assert_same_metrics(m, e)
