"""The Ray executor on a real two-CPU local cluster: order, one object per actor, and a repair that decides exactly as
the in-process one (same actions, same metric values, same evaluation count)."""

from __future__ import annotations

import os

import pytest

ray = pytest.importorskip("ray")

from quantdoctor.executors import RayExecutor, WorkerMethod  # noqa: E402




class Tagged:
    """Made once per actor: returns the process it lives in and how many items it saw."""

    def __init__(self, offset: int) -> None:
        self.offset, self.seen = offset, 0

    def add(self, item: int) -> tuple[int, int, int]:
        self.seen += 1
        return item + self.offset, os.getpid(), self.seen


def _square(x: int) -> int:
    return x * x


def test_ray_map_keeps_order_and_one_object_per_actor(cluster):
    ex = RayExecutor(workers=2)
    method = WorkerMethod(Tagged, (100,), "add")
    out = ex.map(method, list(range(8)))
    assert [v for v, _, _ in out] == [100 + i for i in range(8)]
    pids = {pid for _, pid, _ in out}
    assert os.getpid() not in pids and 1 <= len(pids) <= 2
    for pid in pids:  # each actor's object counted its own items 1, 2, ...: made once, not per item
        seen = [s for _, p, s in out if p == pid]
        assert seen == list(range(1, len(seen) + 1))
    assert ex.map(_square, [3, 4]) == [9, 16]
    assert ex.profile.items == 10 and ex.profile.startup > 0
    ex.close()
    assert ray.is_initialized()  # joined, not started here: left running


def test_too_many_workers_for_the_cluster_is_a_user_error(cluster):
    from quantdoctor.errors import UserInputError

    ex = RayExecutor(workers=3)
    with pytest.raises(UserInputError, match="--workers 3 is more than the 2 CPU"):
        ex.map(WorkerMethod(Tagged, (0,), "add"), [1])
    ex.close()


def test_repair_on_ray_decides_as_in_process(cluster, planted_npz, tmp_path, monkeypatch):
    import tests.planted as planted
    from quantdoctor.executors import ray as ray_executor
    from quantdoctor.repair import repair

    path = tmp_path / "margins.keras"  # its search evaluates a round of four candidates
    planted.planted_margins().save(path)
    options = dict(scheme="int8", calib_count=16, max_drop=5.0)
    local = repair(path, planted_npz, **options)

    items: list[int] = []
    real_map = ray_executor.RayExecutor.map

    def counting_map(self, fn, jobs):
        items.append(len(jobs))
        return real_map(self, fn, jobs)

    monkeypatch.setattr(ray_executor.RayExecutor, "map", counting_map)
    remote = repair(path, planted_npz, executor="ray", workers=2, **options)

    assert max(items) >= 2  # a round of several candidates went to the two actors
    assert local.budget_met and remote.budget_met
    assert remote.actions == local.actions
    assert (remote.baseline_metric, remote.final_metric) == (local.baseline_metric, local.final_metric)
    assert remote.evaluations == local.evaluations
    assert remote.skipped == local.skipped
    strip = lambda rows: [(r.step, r.change, r.metric, r.drop, r.size_bytes, r.float_ops, r.evaluations, r.full)  # noqa: E731
                          for r in rows]
    assert strip(remote.trajectory) == strip(local.trajectory)
    assert remote.model == local.model
    assert ray.is_initialized()
