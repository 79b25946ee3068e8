"""How float and quantized tensors were paired, and what could not be paired: shared by matching, diagnose and report."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any


class MatchMethod(str, Enum):
    """How a float tensor was paired with a quantized one (STYLE rule 7: every match says how it was made)."""

    EXACT_ID = "exact_id"  # same converter location name (a stable id the converter keeps through quantization)
    NAME = "name"  # same name after dropping the converter's de-duplication suffix
    SHAPE_TOPOLOGY = "shape+topology"  # same op type and shape, fed by already-matched tensors


@dataclass(frozen=True)
class Unmatched:
    """A tensor that has no counterpart on the other side, and why."""

    side: str  # "float" or "quantized"
    tensor: str
    op_type: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
