"""classify: agreement and accuracy from the class output, hand-computed; ModelMetrics carried in the result."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from quantdoctor.errors import UserInputError
from quantdoctor.tasks import classification_metrics, resolve_task
from quantdoctor.tasks.base import TaskOptions
from quantdoctor.tasks.classify import ClassifyAccumulator
from tests.tasks.conftest import assert_same_metrics, specs

FLOAT = np.array([[5.0, 1.0, 0.0, 0.0], [0.0, 4.0, 3.0, 0.0], [0.0, 0.0, 1.0, 2.0]])
QUANT = np.array([[4.0, 1.0, 0.0, 0.0], [0.0, 3.0, 3.5, 0.0], [0.0, 0.0, 1.0, 2.0]])  # sample 1 flips to class 2
EMBED = np.ones((3, 1))  # a second output, (1,) per sample, that is not class scores


def test_agreement_and_accuracy_by_hand():
    acc = ClassifyAccumulator(specs((1,), (4,)), TaskOptions(top_k=2))
    acc.update([EMBED, FLOAT], [EMBED, QUANT], labels=np.array([0, 1, 2]))
    r = acc.result()
    assert (r.headline, r.num_samples) == ("agreement", 3)
    assert r.metrics["agreement"] == pytest.approx(2 / 3)
    assert r.metrics["topk_agreement"] == 1.0  # class 1 is still 2nd in sample 1
    assert r.pair("top1") == (pytest.approx(2 / 3), pytest.approx(1 / 3))  # float: 0, 1 right; quantized: 0 only
    assert r.pair("topk") == (1.0, 1.0)  # top-2 of both: {0, 1}, {1, 2}, {3, 2} hold labels 0, 1, 2
    assert [o.role for o in r.outputs] == ["values", "class scores"]
    m = classification_metrics(r)
    assert m.top1_agreement == pytest.approx(2 / 3) and m.k == 2
    assert r.metrics["kl_mean"] == pytest.approx(m.kl_mean) and m.kl_mean > 0


def test_without_labels_accuracies_are_nan_on_both_sides():
    acc = ClassifyAccumulator(specs((4,)), TaskOptions())
    acc.update([FLOAT], [QUANT])
    f, q = acc.result().pair("top1")
    assert math.isnan(f) and math.isnan(q)


def test_result_round_trips_through_json():
    acc = ClassifyAccumulator(specs((4,)), TaskOptions())
    acc.update([FLOAT], [QUANT], np.array([0, 1, -1]))
    r = acc.result()
    data = json.loads(json.dumps(r.to_dict()))
    assert data["metrics"]["agreement"] == pytest.approx(2 / 3)
    assert classification_metrics(r) == acc.classes.result()


def test_merge_equals_all_at_once():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(20, 6))
    q = f + rng.normal(scale=0.5, size=f.shape)
    y = rng.integers(0, 6, 20)
    whole = ClassifyAccumulator(specs((6,)), TaskOptions())
    whole.update([f], [q], y)
    a, b = ClassifyAccumulator(specs((6,)), TaskOptions()), ClassifyAccumulator(specs((6,)), TaskOptions())
    a.update([f[:7]], [q[:7]], y[:7])
    b.update([f[7:]], [q[7:]], y[7:])
    merged, expected = a.merge(b).result(), whole.result()
    assert_same_metrics(merged.metrics, expected.metrics)
    assert merged.float_values == expected.float_values
    assert 0 < expected.metrics["agreement"] < 1


def test_class_output_option():
    assert ClassifyAccumulator(specs((3,), (5,)), TaskOptions(class_output=1)).index == 1
    with pytest.raises(UserInputError, match="output 0 .* not a vector of class scores"):
        ClassifyAccumulator(specs((2, 2), (5,)), TaskOptions(class_output=0))
    with pytest.raises(UserInputError, match="--class-output 4 does not exist"):
        ClassifyAccumulator(specs((5,)), TaskOptions(class_output=4))
    with pytest.raises(UserInputError, match="pass --task detect"):
        resolve_task("classify", specs((8400, 84)), TaskOptions())
