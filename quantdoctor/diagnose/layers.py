"""Turn matched tensor pairs and their accumulated errors into LayerResult records."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from quantdoctor.backends.base import Graph
from quantdoctor.diagnose.results import SQNR_CAP_DB, Coverage, LayerResult, TensorError
from quantdoctor.matching.keras_names import LayerLabel
from quantdoctor.matching.match import Matching, through_conversions
from quantdoctor.stats.weights import WeightReport

_INTEGER = ("int8", "uint8", "int16", "int32")


def is_dynamic_range(qg: Graph) -> bool:
    """True when activations stay float and (some) weights are integer: the hybrid scheme."""
    acts_integer = any(qg.tensors[t].dtype in _INTEGER for t in qg.activations() if qg.producer_type(t) != "INPUT")
    return not acts_integer


def build_layers(
    fg: Graph,
    qg: Graph,
    matching: Matching,
    errors: dict[int, TensorError],
    labels: dict[int, LayerLabel],
    evidence: dict[int, Any] | None = None,
    weight_reports: dict[int, WeightReport] | None = None,
    channel_errors: dict[int, Any] | None = None,
) -> tuple[LayerResult, ...]:
    """One LayerResult per matched pair, in the quantized graph's execution order (graph inputs first).

    `evidence` (float tensor → `probes.Evidence`) and `weight_reports` (quantized op index → WeightReport) add what
    the explain probes measured; `channel_errors` (float tensor → `ChannelError`) the per-channel error of tensors that
    join parts. `output_error_share` = the op's noise added (increase of the noise-to-signal ratio from
    its worst input to its output) over the sum of all ops' positive noise added: an additive first-order split of the
    output's error among the ops that built it up. An op keeps at most its own (isolated) noise; the rest of what grows
    across it is amplified upstream error and goes to the nearest ops upstream that make error of their own.
    """
    evidence = evidence or {}
    weight_reports = weight_reports or {}
    dynamic = is_dynamic_range(qg)
    q_to_f = {p.quant_index: p.float_index for p in matching.pairs}
    results = []
    for pair in matching.pairs:
        f, q = pair.float_index, pair.quant_index
        # A graph output read through an inserted DEQUANTIZE: describe the integer op behind it (same values).
        qt = qg.tensors[through_conversions(qg, q)]
        producer = None if qt.producer is None else qg.op(qt.producer)
        op_type = "INPUT" if producer is None else producer.type
        inputs: list[int] = []
        if producer is not None:
            for i in qg.activation_inputs(producer):
                src = matching.float_of(qg, i) if qg.qdq else q_to_f.get(through_conversions(qg, i))
                if src is not None:
                    inputs.append(src)
        if qg.qdq and qg.tensors[q].quant is not None:  # QDQ: the grid is the quantize op's output
            qt = replace(qt, quant=qg.tensors[q].quant, dtype=qg.tensors[q].dtype)
        in_sqnr = None
        if inputs:
            in_sqnr = min(errors[i].sqnr_db for i in inputs if i in errors) if any(i in errors for i in inputs) else None
        elif producer is None:
            in_sqnr = None
        err = errors[f]
        rmse_over_scale = None
        if qt.quant is not None and qt.dtype in _INTEGER:
            rmse_over_scale = err.rmse / float(np.mean(qt.quant.scales))
        label = labels.get(f)
        ev = evidence.get(f)
        results.append(
            LayerResult(
                position=-1 if producer is None else producer.index,
                float_tensor=fg.tensors[f].name,
                quant_tensor=qt.name,
                keras_layers=label.layers if label else (),
                op_type=op_type,
                shape=tuple(qt.shape[1:]),
                match=pair.method,
                accumulated=err,
                quant=qt.quant if qt.dtype in _INTEGER else None,
                weights=None if producer is None else qg.weight_info(producer, dynamic),
                input_tensors=tuple(fg.tensors[i].name for i in inputs),
                input_sqnr_db=_input_sqnr(in_sqnr, producer is None),
                rmse_over_scale=rmse_over_scale,
                isolated=ev.isolated if ev else None,
                expected=ev.expected if ev else None,
                float_stats=ev.float_stats if ev else None,
                quant_stats=ev.quant_stats if ev else None,
                grid=ev.grid if ev else None,
                grid_mode=ev.grid_mode if ev else None,
                weight_report=None if producer is None else weight_reports.get(producer.index),
                channel_error=(channel_errors or {}).get(f),
            )
        )
    return _with_shares(sorted(results, key=lambda r: r.position))


def _with_shares(layers: list[LayerResult]) -> tuple[LayerResult, ...]:
    def nsr(db: float) -> float:  # clipped to ±60 dB so an exact (+inf) or destroyed (−inf) tensor stays finite
        return 0.0 if np.isnan(db) else 10.0 ** (-min(max(db, -60.0), 60.0) / 10.0)

    added = [
        max(nsr(l.accumulated.sqnr_db) - nsr(l.input_sqnr_db), 0.0) if l.input_sqnr_db is not None else 0.0
        for l in layers
    ]
    # An op creates at most its own (isolated) error; what grows across it beyond that is upstream error it amplifies
    # (e.g. a small channel scaled back up by the next layer). That excess is credited once to the nearest ops upstream
    # that make error of their own (ops exact on their own, like a float MEAN, are looked through).
    by_name = {l.float_tensor: i for i, l in enumerate(layers)}

    def exact(i: int) -> bool:
        iso = layers[i].isolated
        return iso is not None and iso.sqnr_db >= SQNR_CAP_DB

    def makers(i: int, seen: set[int]) -> list[int]:
        out = []
        for t in layers[i].input_tensors:
            j = by_name.get(t)
            if j is None or j >= i or j in seen:
                continue
            seen.add(j)
            out.extend(makers(j, seen) if exact(j) else [j])
        return out

    credited = list(added)
    for i, layer in enumerate(layers):
        if layer.isolated is None:
            continue
        own = 0.0 if exact(i) else nsr(layer.isolated.sqnr_db)
        excess = added[i] - own
        targets = makers(i, set()) if excess > 0 else []
        if targets:
            credited[i] -= excess
            for j in targets:
                credited[j] += excess / len(targets)
    added = credited
    total = sum(added)
    if total <= 0:
        return tuple(layers)
    return tuple(replace(l, output_error_share=a / total) for l, a in zip(layers, added))


def _input_sqnr(value: float | None, is_graph_input: bool) -> float | None:
    # The graph input itself has no input; an op whose inputs could not be paired has an unknown one.
    return None if is_graph_input else value


FOLDED_ACTIVATIONS = frozenset({"Relu", "Clip", "LeakyRelu"})


def coverage(layers: tuple[LayerResult, ...], matching: Matching, fg: Graph, keras_weighted: set[str] | None) -> Coverage:
    """Match coverage; conv/depthwise/dense layers are counted as Keras layers when known, else as float ops."""
    float_total = len(matching.pairs) + sum(1 for u in matching.unmatched if u.side == "float")
    if keras_weighted is not None:
        total = keras_weighted
        covered = {name for l in layers for name in l.keras_layers} & total
    else:
        matched = {l.float_tensor for l in layers}
        total, covered = set(), set()
        for op in fg.ops:
            if op.type not in fg.weighted_types:
                continue
            for t in op.outputs:
                total.add(fg.tensors[t].name)
                # A quantizer that folds the activation after the op (ORT: Conv+Relu/Clip) pairs the activation's
                # output: the op is covered through it.
                readers = [fg.op(c) for c in fg.tensors[t].consumers]
                fused = len(readers) == 1 and readers[0].type in FOLDED_ACTIVATIONS and \
                    fg.tensors[readers[0].outputs[0]].name in matched
                if fg.tensors[t].name in matched or fused:
                    covered.add(fg.tensors[t].name)
    return Coverage(
        matched=len(matching.pairs),
        float_tensors=float_total,
        weighted_layers_matched=len(covered),
        weighted_layers=len(total),
    )
