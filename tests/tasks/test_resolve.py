"""Task resolution: the auto rules, named tasks that do not fit, and their messages."""

from __future__ import annotations

import pytest

from quantdoctor.errors import UnknownNameError, UserInputError
from quantdoctor.tasks import TASKS, build_accumulator, resolve_task
from quantdoctor.tasks.base import TaskOptions
from tests.tasks.conftest import specs


@pytest.mark.parametrize("shapes, task", [
    (((10, 4), (10,), (10,), ()), "detect"),  # TFLite detection post-process
    (((257, 257, 21),), "segment"),
    (((1000,),), "classify"),
    (((), (1000,)), "classify"),
    (((4,), (128, 128, 2)), "segment"),
])
def test_auto_rules(shapes, task):
    assert resolve_task("auto", specs(*shapes), TaskOptions()).name == task


@pytest.mark.parametrize("shapes", [((8400, 84),), ((1,),), ((17, 3), (1000,)), ()])
def test_auto_refuses_what_it_cannot_tell(shapes):
    message = r"^cannot tell the task .* pass --task detect\|segment\|classify\|regress"
    with pytest.raises(UserInputError, match=message):
        resolve_task("auto", specs(*shapes), TaskOptions())


def test_named_tasks_that_fit():
    assert resolve_task("detect", specs((8400, 84)), TaskOptions()).name == "detect"
    assert resolve_task("regress", specs((8400, 84)), TaskOptions()).name == "regress"
    assert resolve_task("classify", specs((17, 3), (1000,)), TaskOptions()).name == "classify"


@pytest.mark.parametrize("name, shapes, message", [
    ("segment", ((1000,),), "pass --task classify"),
    ("classify", ((64, 64, 3),), "pass --task detect"),
    ("detect", ((1000,),), "raw head"),
    ("detect", ((84, 84),), "--score-slice"),
])
def test_named_tasks_that_do_not_fit(name, shapes, message):
    with pytest.raises(UserInputError, match=message) as info:
        resolve_task(name, specs(*shapes), TaskOptions())
    assert "\n" not in str(info.value)


def test_unknown_task():
    with pytest.raises(UnknownNameError, match="choose one of: classify"):
        resolve_task("pose", specs((3,)), TaskOptions())


def test_every_task_has_a_headline_among_its_budget_metrics():
    for name, task in TASKS.items():
        assert set(task.needs_labels) <= set(task.budget_metrics), name
        if name != "custom":
            assert task.budget_metrics[0] == task.headline, name


def test_build_accumulator_passes_scales():
    task = resolve_task("regress", specs((6,)), TaskOptions())
    acc = build_accumulator(task, specs((6,)), TaskOptions(), scales=[0.25])
    assert acc.outputs.scales == (0.25,)
