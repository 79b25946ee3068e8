"""Shared by the planted-fault tests (test_findings.py, test_verify.py): the held-out digits they diagnose on."""

from __future__ import annotations

import numpy as np
import pytest

from tests.planted import planted_data


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A folder holding data.npz (held-out digits of the planted model); models are saved next to it."""
    folder = tmp_path_factory.mktemp("planted")
    x, y = planted_data()
    np.savez(folder / "data.npz", x=x, y=y)
    return folder

