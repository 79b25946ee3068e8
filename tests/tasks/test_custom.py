"""custom: the user's metric averaged over samples, and clear errors for bad functions."""

from __future__ import annotations

import numpy as np
import pytest

from quantdoctor.errors import UserInputError
from quantdoctor.tasks import resolve_task
from quantdoctor.tasks.base import TaskOptions
from quantdoctor.tasks.custom import CustomAccumulator
from tests.tasks.conftest import specs


def same_sign(f, q):
    return {"same_sign": float(np.mean(np.sign(f[0]) == np.sign(q[0]))), "gap": float(np.abs(f[0] - q[0]).max())}


def test_batches_weighted_by_size_and_merged():
    f = np.array([[1.0], [1.0], [1.0], [1.0]])
    q = np.array([[1.0], [-1.0], [1.0], [1.0]])
    a = CustomAccumulator(specs((1,)), TaskOptions(metric=same_sign))
    a.update([f[:3]], [q[:3]])  # same_sign 2/3 over 3 samples, gap 2
    b = CustomAccumulator(specs((1,)), TaskOptions(metric=same_sign))
    b.update([f[3:]], [q[3:]])  # 1 over 1 sample, gap 0
    r = a.merge(b).result()
    assert (r.task, r.headline, r.num_samples) == ("custom", "same_sign", 4)
    assert r.metrics == pytest.approx({"same_sign": 0.75, "gap": (3 * 2 + 0) / 4})


@pytest.mark.parametrize("metric, message", [
    (None, "needs a metric"),
    (lambda f, q: 0.5, "returned float; it must return a non-empty dict"),
    (lambda f, q: {"x": float("nan")}, "finite numbers"),
    (lambda f, q: {"x": "high"}, "finite numbers"),
])
def test_bad_metrics_are_user_errors(metric, message):
    with pytest.raises(UserInputError, match=message):
        acc = CustomAccumulator(specs((1,)), TaskOptions(metric=metric))
        acc.update([np.ones((2, 1))], [np.ones((2, 1))])


def test_custom_without_metric_cannot_be_resolved():
    with pytest.raises(UserInputError, match="TaskOptions\\(metric=fn\\)"):
        resolve_task("custom", specs((3,)), TaskOptions())
