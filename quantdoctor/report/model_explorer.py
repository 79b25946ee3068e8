"""Per-op overlays for Google AI Edge Model Explorer: one node-data JSON file per metric, loaded next to the .tflite.

    model-explorer quantized.tflite --node_data_paths=DIR/accumulated_sqnr.json,DIR/isolated_sqnr.json,...

Format: Model Explorer's `ModelNodeData` (`model_explorer/node_data_builder.py` of google-ai-edge/model-explorer), a
JSON object keyed by graph id, each value a `GraphNodeData`:

    {"main": {"results": {"12": {"value": -6.4}, ...},
              "thresholds": [{"value": 10, "bgColor": "#e53e3e"}, ...]}}

A node with value v takes the colour of the first threshold whose `value` ≥ v; above the last threshold it stays
uncoloured. Fixed thresholds (not a min-to-max `gradient`) keep the colours meaning the same dB in every model: a
healthy model's worst op at 35 dB stays green instead of being painted red as the bottom of its own range.

Ids, as the built-in TFLite flatbuffer adapter (`direct_flatbuffer_to_json_graph_convert.cc`) assigns them: the graph
id is the subgraph's name, else the key of the signature that runs it, else "main" (subgraph 0) or "subgraph_<i>";
the node id of an op is its operator index in that subgraph, as a string (the GraphInputs and constant nodes are
numbered after the ops). `LayerResult.position` is that operator index in subgraph 0; the graph input (position −1)
and ops without a matched tensor get no value.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from quantdoctor.diagnose.results import SQNR_CAP_DB, Diagnosis, LayerResult
from quantdoctor.errors import UserInputError

DEFAULT_GRAPH_ID = "main"

RED, ORANGE, YELLOW, GREEN, BLUE = "#e53e3e", "#ed8936", "#ecc94b", "#48bb78", "#90cdf4"
BAD_TO_GOOD = (RED, ORANGE, YELLOW, BLUE, GREEN)
"""The colours used, worst first (tests check each metric's direction against this order)."""

SQNR_THRESHOLDS = ((10.0, RED), (20.0, ORANGE), (30.0, YELLOW), (SQNR_CAP_DB, GREEN))
"""SQNR in dB: ≤ 10 mostly noise, ≤ 20 damaged, ≤ 30 noticeable, above that fine. Values are clamped to
±SQNR_CAP_DB (above it the error is rounding noise, see results.SQNR_CAP_DB; JSON has no inf), so every op gets a
colour."""

SEVERITY_VALUE = {"none": 0, "info": 1, "warning": 2, "critical": 3}
SEVERITY_THRESHOLDS = ((0, GREEN), (1, BLUE), (2, ORANGE), (3, RED))


@dataclass(frozen=True)
class Metric:
    """One overlay: the file it goes to, what a node's value is, and the colour thresholds (ascending values)."""

    file: str
    description: str
    value: Callable[[Diagnosis], dict[int, float]]  # op index -> value
    thresholds: tuple[tuple[float, str], ...]


def _sqnr_by_op(pick: Callable[[LayerResult], float | None]) -> Callable[[Diagnosis], dict[int, float]]:
    def values(d: Diagnosis) -> dict[int, float]:
        out: dict[int, float] = {}
        for l in d.layers:
            v = pick(l)
            if l.position < 0 or v is None or math.isnan(v):
                continue
            v = min(max(v, -SQNR_CAP_DB), SQNR_CAP_DB)
            out[l.position] = min(v, out.get(l.position, math.inf))  # an op with several outputs: its worst
        return out

    return values


def _severity_by_op(d: Diagnosis) -> dict[int, float]:
    """The worst severity of any finding naming the op; 0 for every other matched op (checked, nothing found)."""
    out: dict[int, float] = {l.position: 0 for l in d.layers if l.position >= 0}
    for f in d.findings:
        for p in f.positions:
            if p >= 0:
                out[p] = max(out.get(p, 0), SEVERITY_VALUE[f.severity.value])
    return out


METRICS: dict[str, Metric] = {
    "accumulated_sqnr": Metric(
        "accumulated_sqnr.json", "SQNR (dB) of the op's output, quantized model vs float model (higher is better)",
        _sqnr_by_op(lambda l: l.accumulated.sqnr_db), SQNR_THRESHOLDS),
    "isolated_sqnr": Metric(
        "isolated_sqnr.json", "SQNR (dB) of the op alone on the float model's input: its own error (higher is better)",
        _sqnr_by_op(lambda l: l.isolated.sqnr_db if l.isolated else None), SQNR_THRESHOLDS),
    "finding_severity": Metric(
        "finding_severity.json", "worst finding on the op: 0 none, 1 info, 2 warning, 3 critical (lower is better)",
        _severity_by_op, SEVERITY_THRESHOLDS),
}


def graph_id(model: bytes | None) -> str:
    """The graph id Model Explorer gives subgraph 0 of this .tflite (see the module docstring); "main" if None."""
    if model is None:
        return DEFAULT_GRAPH_ID
    from ai_edge_litert import schema_py_generated as schema_fb

    m = schema_fb.Model.GetRootAs(model, 0)
    if m.SubgraphsLength() == 0:
        return DEFAULT_GRAPH_ID
    name = m.Subgraphs(0).Name()
    if name:
        return name.decode("utf-8")
    for i in range(m.SignatureDefsLength()):
        sig = m.SignatureDefs(i)
        if sig.SubgraphIndex() == 0:
            return sig.SignatureKey().decode("utf-8") if sig.SignatureKey() else DEFAULT_GRAPH_ID
    return DEFAULT_GRAPH_ID


def node_data(diagnosis: Diagnosis, metric: str, graph: str = DEFAULT_GRAPH_ID) -> dict[str, Any]:
    """One metric as Model Explorer `ModelNodeData`: {graph: {"results": {op index: {"value": v}}, "thresholds": ...}}.

    Raises:
        UserInputError: unknown metric.
    """
    if metric not in METRICS:
        raise UserInputError(f"unknown Model Explorer metric '{metric}'; use one of {', '.join(METRICS)}")
    m = METRICS[metric]
    values = m.value(diagnosis)
    return {
        graph: {
            "results": {str(p): {"value": _number(v)} for p, v in sorted(values.items())},
            "thresholds": [{"value": _number(v), "bgColor": c} for v, c in m.thresholds],
        }
    }


def write_model_explorer(
    diagnosis: Diagnosis, out_dir: str | os.PathLike[str], model: bytes | str | os.PathLike[str] | None = None
) -> dict[str, Path]:
    """Write one node-data file per metric (and a README.txt saying how to load them) into `out_dir`, atomically.

    Args:
        model: the quantized .tflite (bytes or path) the diagnosis ran, to read its graph id; without it "main",
            which is what the TFLite converter names the main subgraph.

    Returns:
        {metric name: path of its file, "readme": path of README.txt}.

    Raises:
        UserInputError: `out_dir` exists and is not a folder, or `model` is a path that cannot be read.
    """
    from quantdoctor.files import atomic_write_text as _write_atomic

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"--model-explorer {out} is an existing file; give a folder (it is created if missing)")
    model_name = "QUANTIZED.tflite" if model is None or isinstance(model, bytes) else str(model)
    if model is not None and not isinstance(model, bytes):
        try:
            model = Path(model).read_bytes()
        except OSError as exc:
            raise UserInputError(f"cannot read the quantized model {model}: {exc.strerror}; check the path") from None
    graph = graph_id(model)
    documents = {name: json.dumps(node_data(diagnosis, name, graph), indent=1) + "\n" for name in METRICS}
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, text in documents.items():
        written[name] = out / METRICS[name].file
        _write_atomic(written[name], text)
    written["readme"] = out / "README.txt"
    _write_atomic(written["readme"], _readme(diagnosis, graph, written, model_name))
    return written


def _readme(d: Diagnosis, graph: str, written: dict[str, Path], model_name: str) -> str:
    files = ",".join(str(p) for p in written.values() if p.suffix == ".json")
    lines = [
        "Node data for Google AI Edge Model Explorer (pip install ai-edge-model-explorer), one file per metric:",
        "",
        f"    model-explorer {model_name} --node_data_paths={files}",
        "",
        f"The quantized model: {d.run.quantized_model}. Graph id '{graph}'; node ids are operator indices.",
        "",
    ]
    for name, m in METRICS.items():
        bands = ", ".join(f"<= {v:g}: {c}" for v, c in m.thresholds)
        lines.append(f"{m.file}: {m.description}. Colours: {bands}.")
    return "\n".join(lines) + "\n"


def _number(v: float) -> float | int:
    return int(v) if float(v).is_integer() and abs(v) < 1e15 else float(v)
