"""OutputsAccumulator: every output measured, groups given or found, levels from scales, merge."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quantdoctor.errors import DataError
from quantdoctor.stats.metrics import max_abs_error, relative_rmse, sqnr_db
from quantdoctor.tasks.outputs import OutputsAccumulator
from tests.tasks.conftest import specs


def _head(n: int, rng: np.random.Generator) -> np.ndarray:
    """Boxes spanning ±300 on channels 0:4, scores 0..1 on 4:10."""
    return np.concatenate([rng.uniform(-300, 300, (n, 20, 4)), rng.uniform(0, 1, (n, 20, 6))], axis=2)


def test_each_output_measured_and_groups_found():
    rng = np.random.default_rng(8)
    f = [_head(5, rng), rng.normal(size=(5,))]
    q = [x + rng.normal(scale=0.01, size=x.shape) for x in f]
    acc = OutputsAccumulator(specs((20, 10), ()), scales=[600 / 255, None], roles=["boxes + class scores", "values"])
    acc.update(f, q)
    head, scalar = acc.result()
    assert head.sqnr_db == pytest.approx(sqnr_db(f[0], q[0]))
    assert head.relative_error == pytest.approx(relative_rmse(f[0], q[0]))
    assert scalar.max_abs_error == pytest.approx(max_abs_error(f[1], q[1]))
    assert scalar.groups == () and head.role == "boxes + class scores"
    boxes, scores = head.groups
    assert (boxes.name, boxes.start, boxes.stop, scores.start, scores.stop) == ("channels [0:4]", 0, 4, 4, 10)
    assert scores.sqnr_db == pytest.approx(sqnr_db(f[0][..., 4:], q[0][..., 4:]))
    assert scores.levels == pytest.approx((scores.float_max - scores.float_min) * 255 / 600)
    assert scores.levels < 1.0 < 200 < boxes.levels


def test_given_groups_and_channel_axis():
    rng = np.random.default_rng(9)
    f = rng.normal(size=(3, 4, 8, 8))  # (C, H, W) per sample
    q = f.copy()
    q[:, 3] += 1.0  # only channel 3 has error
    acc = OutputsAccumulator(specs((4, 8, 8)), groups={0: [(0, 3, "a"), (3, 4, "b")]}, channel_axes={0: 0})
    acc.update([f], [q])
    a, b = acc.result()[0].groups
    assert (a.name, a.sqnr_db, a.levels) == ("a", math.inf, None)
    assert b.sqnr_db == pytest.approx(sqnr_db(f[:, 3], q[:, 3]))
    assert b.float_min == f[:, 3].min()


def test_homogeneous_output_has_no_groups():
    f = np.random.default_rng(1).normal(size=(4, 10))
    acc = OutputsAccumulator(specs((10,)))
    acc.update([f], [f])
    assert acc.result()[0].groups == ()


def test_merge_equals_all_at_once():
    rng = np.random.default_rng(10)
    f = [_head(8, rng)]
    q = [f[0] + rng.normal(scale=0.05, size=f[0].shape)]
    whole, a, b = (OutputsAccumulator(specs((20, 10))) for _ in range(3))
    whole.update(f, q)
    a.update([f[0][:3]], [q[0][:3]])
    b.update([f[0][3:]], [q[0][3:]])
    merged, expected = a.merge(b).result()[0], whole.result()[0]
    assert merged.sqnr_db == pytest.approx(expected.sqnr_db, rel=1e-12)
    assert [(g.start, g.stop, g.float_min, g.float_max) for g in merged.groups] == \
        [(g.start, g.stop, g.float_min, g.float_max) for g in expected.groups]
    assert [g.sqnr_db for g in merged.groups] == pytest.approx([g.sqnr_db for g in expected.groups], rel=1e-12)


def test_wrong_output_count():
    acc = OutputsAccumulator(specs((3,), (3,)))
    with pytest.raises(DataError, match="got 1 float and 1 quantized outputs for a model with 2"):
        acc.update([np.zeros((1, 3))], [np.zeros((1, 3))])
