"""Helpers shared by the task tests."""

from __future__ import annotations

import math

import numpy as np

from quantdoctor.backends.base import TensorSpec


def specs(*shapes: tuple[int, ...], names: tuple[str, ...] | None = None) -> list[TensorSpec]:
    names = names or tuple(f"out{i}" for i in range(len(shapes)))
    return [TensorSpec(n, tuple(s), "float32") for n, s in zip(names, shapes)]


def assert_same_metrics(a: dict[str, float], b: dict[str, float]) -> None:
    """Equal up to float rounding (sums taken in another order), nan equal to nan."""
    assert a.keys() == b.keys()
    for key in a:
        if math.isnan(a[key]):
            assert math.isnan(b[key]), key
        else:
            assert np.isclose(a[key], b[key], rtol=1e-9, atol=0), (key, a[key], b[key])
