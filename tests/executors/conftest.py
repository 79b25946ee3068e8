"""A real two-CPU local Ray cluster, started once per test module that asks for it and shut down after."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()
