"""The backend protocol: load a model, run it, and read back any of its tensors.

A second framework is a new folder under `backends/` implementing this protocol, not `if framework ==` branches.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class TensorSpec:
    """Name, per-sample shape and dtype of a model input or output."""

    name: str
    shape: tuple[int, ...]  # without the batch dimension
    dtype: str


class Backend(Protocol):
    """What the diagnosis needs from a runnable model."""

    def inputs(self) -> list[TensorSpec]: ...

    def outputs(self) -> list[TensorSpec]: ...

    def run(self, batch: np.ndarray) -> np.ndarray:
        """First output for a float batch, as float32 (quantized outputs are dequantized)."""
        ...

    def capture(self, batch: np.ndarray, names: Sequence[int]) -> dict[int, np.ndarray]:
        """Values (float32, dequantized) of the given tensors for a float batch."""
        ...
