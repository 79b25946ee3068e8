"""diagnose --executor ray on a real two-CPU local cluster gives the report of the in-process run, and the executor
options are checked in one line before any work.

Tolerance: every count, string, index and decision in the report is equal; every float agrees within 1e-3 relative
plus 1e-6 absolute. The workers run LiteRT on one thread each, and LiteRT's float kernels round differently with one
thread than with two (up to ~1e-6 relative on a tensor), so the sums differ by more than their summation order alone
(tests/executors/test_parallel.py holds that part to 1e-9 with the same runners).
"""

from __future__ import annotations

import json
import math

import pytest

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def outlier(tmp_path_factory):
    """The planted activation outlier (tests/planted.py): int8 loses decisions, group testing locates and verifies."""
    import numpy as np

    from tests.planted import planted_data, planted_outlier

    folder = tmp_path_factory.mktemp("outlier")
    x, y = planted_data()
    np.savez(folder / "data.npz", x=x, y=y)
    planted_outlier(1000.0).save(folder / "outlier.keras")
    return folder / "outlier.keras", folder / "data.npz"


def _compare(a, b, path="", seen=None):
    """Walk two JSON reports: floats within 1e-3 relative + 1e-6 absolute, everything else equal."""
    if isinstance(a, dict):
        assert a.keys() == b.keys(), path
        for k in a:
            if k not in ("seconds", "decided_early"):  # costs: wall times; Ray runs every batch of a decision
                _compare(a[k], b[k], f"{path}/{k}", seen)
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (u, v) in enumerate(zip(a, b)):
            _compare(u, v, f"{path}[{i}]", seen)
    elif isinstance(a, float) and isinstance(b, float):
        if seen is not None:
            seen.append(path)
        assert a == b or (math.isnan(a) and math.isnan(b)) or abs(a - b) <= 1e-3 * max(abs(a), abs(b)) + 1e-6, \
            f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_diagnose_on_ray_reports_as_in_process(cluster, outlier, monkeypatch):
    from quantdoctor.diagnose.pipeline import diagnose
    from quantdoctor.executors.ray import RayExecutor

    model, data = outlier
    options = dict(scheme="int8", calib_count=16, batch_size=8, explain_samples=20)  # 48 samples: 3 + 3 batches
    local = diagnose(model, data, **options)

    items: list[tuple[str, int]] = []  # (worker method, items) of each map
    measured: list[tuple] = []  # the counterfactual items: (kind, ops, first batch, end batch)

    original = RayExecutor.map

    def counting_map(self, fn, jobs):
        items.append((fn.method, len(jobs)))
        if fn.method == "measure":
            measured.extend(jobs)
        return original(self, fn, jobs)

    monkeypatch.setattr(RayExecutor, "map", counting_map)
    remote = diagnose(model, data, executor="ray", workers=2, **options)

    assert ("run", 2) in items  # the passes: two shards
    # Every evaluation but the baseline (run in the driver with the float outputs) is measured on the workers, once:
    # split by batches between the two, or whole as one item of a batch of independent ones (the table's rows).
    assert len({(kind, ops) for kind, ops, _, _ in measured}) == remote.verification.evaluations - 1
    batches = max(end for *_, end in measured)
    assert any(first == 0 and end == batches for *_, first, end in measured)  # whole, side by side
    assert any(end - first < batches for *_, first, end in measured)  # split
    assert local.findings and local.verification.causes  # something to locate and verify
    assert [f.mechanism for f in remote.findings] == [f.mechanism for f in local.findings]
    assert [(f.positions, f.severity, f.verified) for f in remote.findings] == \
        [(f.positions, f.severity, f.verified) for f in local.findings]
    assert remote.verification.causes == local.verification.causes
    assert remote.verification.evaluations == local.verification.evaluations
    assert local.verification.decided_early > 0 and remote.verification.decided_early == 0
    assert remote.model.top1_agreement == local.model.top1_agreement  # counts: exactly
    assert remote.task.num_samples == local.task.num_samples == 48
    floats: list[str] = []
    a, b = json.loads(local.to_json()), json.loads(remote.to_json())
    _compare(a["layers"], b["layers"], "/layers", floats)  # accumulated error, statistics, isolated/expected
    _compare(a, b)  # the whole report: task metrics, findings, verification, margins
    assert any(p.endswith("sqnr_db") for p in floats)
    assert ray.is_initialized()  # joined, not started: left running


@pytest.mark.parametrize("argv, message", [
    (["--workers", "2"], "--workers 2 needs --executor ray"),
    (["--ray-address", "auto"], "--ray-address needs --executor ray"),
    (["--executor", "ray", "--workers", "0"], "--workers: must be"),
    (["--executor", "dask"], "--executor: invalid choice: 'dask'"),
])
def test_cli_executor_options_are_one_line_errors(argv, message, capsys, tmp_path):
    from quantdoctor.cli.main import main

    code = main(["diagnose", str(tmp_path / "absent.keras"), "--data", str(tmp_path / "absent.npz"), "--scheme", "int8",
                 *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1
    assert message in err[0]


def test_config_checks_the_executor_options():
    from quantdoctor.diagnose.config import DiagnoseConfig
    from quantdoctor.errors import UnknownNameError, UserInputError

    with pytest.raises(UnknownNameError, match="choose one of: local, ray"):
        DiagnoseConfig(scheme="int8", executor="dask")
    with pytest.raises(UserInputError, match="--workers 3 needs --executor ray"):
        DiagnoseConfig(scheme="int8", workers=3)
    cfg = DiagnoseConfig(scheme="int8", executor="ray", workers=2, ray_address="auto")
    assert DiagnoseConfig.from_dict(cfg.to_dict()) == cfg
