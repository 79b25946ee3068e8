"""A `Diagnosis`'s layers as one flat pandas table, for notebooks and CSV export."""

from __future__ import annotations

import math
from typing import Any

from quantdoctor.diagnose.results import Diagnosis, LayerResult
from quantdoctor.report.sentences import act_dtype

COLUMNS = (
    "position", "label", "keras_layers", "op_type", "shape", "match",
    "sqnr_db", "cosine", "relative_rmse", "max_abs_error", "rmse_over_scale",
    "input_sqnr_db", "sqnr_drop_db", "noise_added",
    "act_dtype", "act_granularity", "act_scale",
    "weight_storage", "weight_granularity", "weight_kernel",
    "isolated_sqnr_db",
)


def layers_frame(diagnosis: Diagnosis):  # -> pandas.DataFrame
    """One row per matched tensor in position order; what was not measured or does not apply is missing (`isna`)."""
    import pandas as pd

    rows = [layer_row(l) for l in sorted(diagnosis.layers, key=lambda l: l.position)]
    return pd.DataFrame(rows, columns=list(COLUMNS))


OUTPUT_COLUMNS = (
    "index", "output", "role", "shape", "group", "start", "stop", "sqnr_db", "relative_error", "max_abs_error",
    "float_min", "float_max", "levels",
)


def outputs_frame(diagnosis: Diagnosis):  # -> pandas.DataFrame
    """One row per model output (group None), then one per channel group of it; empty without a task result.

    A group row carries the group's SQNR and range; the output-wide errors (relative, max) are NaN there.
    """
    import pandas as pd

    rows = []
    for o in diagnosis.task.outputs if diagnosis.task is not None else ():
        shape = "x".join(str(n) for n in o.shape)
        rows.append({"index": o.index, "output": o.name, "role": o.role, "shape": shape, "group": None,
                     "start": math.nan, "stop": math.nan, "sqnr_db": o.sqnr_db, "relative_error": o.relative_error,
                     "max_abs_error": o.max_abs_error, "float_min": math.nan, "float_max": math.nan,
                     "levels": math.nan})
        for g in o.groups:
            rows.append({"index": o.index, "output": o.name, "role": o.role, "shape": shape, "group": g.name,
                         "start": g.start, "stop": g.stop, "sqnr_db": g.sqnr_db, "relative_error": math.nan,
                         "max_abs_error": math.nan, "float_min": g.float_min, "float_max": g.float_max,
                         "levels": _num(g.levels)})
    return pd.DataFrame(rows, columns=list(OUTPUT_COLUMNS))


def layer_row(layer: LayerResult) -> dict[str, Any]:
    """The flat record of one layer, keyed by `COLUMNS` (inf is kept; a missing number is NaN, missing text None)."""
    q, w = layer.quant, layer.weights
    return {
        "position": layer.position,
        "label": layer.label,
        "keras_layers": "+".join(layer.keras_layers),
        "op_type": layer.op_type,
        "shape": "x".join(str(n) for n in layer.shape),
        "match": layer.match.value,
        "sqnr_db": layer.accumulated.sqnr_db,
        "cosine": layer.accumulated.cosine_mean,
        "relative_rmse": layer.accumulated.relative_rmse,
        "max_abs_error": layer.accumulated.max_abs_error,
        "rmse_over_scale": _num(layer.rmse_over_scale),
        "input_sqnr_db": _num(layer.input_sqnr_db),
        "sqnr_drop_db": _num(layer.sqnr_drop_db),
        "noise_added": layer.noise_added,
        "act_dtype": act_dtype(layer),
        "act_granularity": q.granularity if q else None,
        "act_scale": q.scales[0] if q and q.scales else math.nan,
        "weight_storage": w.storage if w else None,
        "weight_granularity": w.quant.granularity if w and w.quant else None,
        "weight_kernel": w.kernel if w else None,
        "isolated_sqnr_db": layer.isolated.sqnr_db if layer.isolated else math.nan,
    }


def _num(v: float | None) -> float:
    return math.nan if v is None else float(v)
