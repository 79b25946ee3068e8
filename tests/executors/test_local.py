"""The executor registry, option checks, the in-process executor, and the one-line error when Ray is missing."""

from __future__ import annotations

import subprocess
import sys

import pytest

from quantdoctor.errors import UnknownNameError, UserInputError
from quantdoctor.executors import EXECUTORS, LocalExecutor, WorkerMethod, make_executor


class Counter:
    """A per-worker object: counts how often it was made (class attribute) and the items it saw."""

    made = 0

    def __init__(self, offset: int) -> None:
        Counter.made += 1
        self.offset, self.seen = offset, 0

    def add(self, item: int) -> tuple[int, int]:
        self.seen += 1
        return item + self.offset, self.seen


def test_registry_names():
    assert EXECUTORS.names() == ["local", "ray"]
    with pytest.raises(UnknownNameError, match="choose one of: local, ray"):
        make_executor("dask")


def test_local_maps_in_order_and_makes_the_worker_object_once():
    Counter.made = 0
    ex = make_executor("local")
    method = WorkerMethod(Counter, (10,), "add")
    assert ex.map(method, [3, 1, 2]) == [(13, 1), (11, 2), (12, 3)]
    assert ex.map(method, [5]) == [(15, 4)]  # the same object: made once, its state kept
    assert Counter.made == 1
    assert ex.map(lambda x: x * x, [4, 2]) == [16, 4]
    assert ex.workers == 1 and ex.profile.items == 6
    ex.close()


def test_local_item_error_propagates():
    with pytest.raises(ZeroDivisionError):
        LocalExecutor().map(lambda x: 1 // x, [1, 0])


@pytest.mark.parametrize("name, workers, address, message", [
    ("local", 0, None, "--workers must be 1 or more, got 0"),
    ("ray", 0, None, "--workers must be 1 or more, got 0"),
    ("local", 2, None, "--workers 2 needs --executor ray"),
    ("local", None, "auto", "--ray-address needs --executor ray"),
])
def test_bad_options_are_user_errors(name, workers, address, message):
    with pytest.raises(UserInputError, match=message):
        make_executor(name, workers, address)


def test_missing_ray_is_one_line_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(UserInputError) as info:
        make_executor("ray", 2)
    assert str(info.value) == "--executor ray needs Ray, which is not installed: pip install 'quantdoctor[ray]'"


def test_cli_missing_ray_exits_1_before_any_work(monkeypatch, capsys, tmp_path):
    from quantdoctor.cli.main import main

    monkeypatch.setitem(sys.modules, "ray", None)
    code = main(["repair", str(tmp_path / "absent.keras"), "--data", str(tmp_path / "absent.npz"), "--scheme", "int8",
                 "--executor", "ray"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err == ["quantdoctor: error: --executor ray needs Ray, which is not installed: pip install 'quantdoctor[ray]'"]


def test_cli_ray_address_without_ray_executor_exits_1(capsys, tmp_path):
    from quantdoctor.cli.main import main

    code = main(["repair", str(tmp_path / "absent.keras"), "--data", str(tmp_path / "absent.npz"), "--scheme", "int8",
                 "--ray-address", "auto"])
    assert code == 1
    assert "--ray-address needs --executor ray" in capsys.readouterr().err


def test_import_quantdoctor_does_not_import_ray():
    code = "import sys, quantdoctor, quantdoctor.executors, quantdoctor.repair.search; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
