"""Where the error starts: the first op whose output is much worse than its input."""

from __future__ import annotations

import math
from typing import Sequence

from quantdoctor.diagnose.results import LayerResult, Onset


def find_onset(layers: Sequence[LayerResult], drop_db: float, below_db: float) -> Onset | None:
    """The first layer (topological order) whose SQNR drops by at least `drop_db` from its worst input and ends below
    `below_db`. An exact input (+inf dB) counts as `below_db + drop_db`, so a first layer that alone falls under
    `below_db` is an onset too. None when no layer qualifies: the error builds up gradually or stays small.
    """
    rule = f"first op whose SQNR falls by ≥ {drop_db:g} dB from its input to below {below_db:g} dB"
    for layer in sorted(layers, key=lambda l: l.position):
        out = layer.accumulated.sqnr_db
        if layer.input_sqnr_db is None or math.isnan(out) or out >= below_db:
            continue
        inp = min(layer.input_sqnr_db, below_db + drop_db)
        if inp - out >= drop_db:
            return Onset(layer.position, layer.label, out, layer.input_sqnr_db, rule)
    return None
