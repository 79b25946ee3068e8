"""Pair the activation tensors of a float .tflite with those of its quantized version.

Both files come from the same source model, and the converter keeps its location names through quantization, so most
tensors pair by identical name (``exact_id``). The rest pair by name without the converter's de-duplication digit
(``name``), or by op type and shape given already-paired inputs (``shape+topology``). What stays unpaired is reported with
the reason, never dropped.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from functools import cached_property

from quantdoctor.backends.base import Graph
from quantdoctor.matching.types import MatchMethod, Unmatched

_DEDUP_DIGITS = re.compile(r"\d+$")
_SHAPE_DTYPES = ("int32", "int64", "bool")


@dataclass(frozen=True)
class TensorPair:
    float_index: int
    quant_index: int
    method: MatchMethod


@dataclass(frozen=True)
class Matching:
    pairs: tuple[TensorPair, ...]
    unmatched: tuple[Unmatched, ...]

    def reasons(self) -> Counter:
        return Counter(u.reason for u in self.unmatched)

    @cached_property
    def q_to_f(self) -> dict[int, int]:
        return {p.quant_index: p.float_index for p in self.pairs}

    def float_of(self, qg: Graph, q: int) -> int | None:
        """The float tensor a quantized tensor stands for: its pair, the pair of the tensor it converts, or (QDQ) the
        pair of that tensor's quantize op output."""
        for t in (q, through_conversions(qg, q)):
            if t in self.q_to_f:
                return self.q_to_f[t]
        return self.q_to_f.get(qg.quantized_form(through_conversions(qg, q))) if qg.qdq else None


def _per_sample(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[1:])


def match_graphs(fg: Graph, qg: Graph) -> Matching:
    """Pair float activations with quantized activations. Each tensor is used at most once."""
    # Shape arithmetic (int32/int64 tensors a Reshape or Flatten computes) carries no sample data: nothing to compare.
    f_acts = [t for t in fg.activations() if fg.tensors[t].dtype not in _SHAPE_DTYPES]
    q_acts = [t for t in qg.activations() if qg.tensors[t].dtype not in _SHAPE_DTYPES]
    q_by_name: dict[str, list[int]] = {}
    for t in q_acts:
        q_by_name.setdefault(qg.tensors[t].name, []).append(t)
    pairs: dict[int, TensorPair] = {}
    used_q: set[int] = set()

    def take(f: int, q: int, method: MatchMethod) -> None:
        pairs[f] = TensorPair(f, q, method)
        used_q.add(q)

    # Graph inputs and outputs pair by position: int8 I/O may rename or retype them.
    for f, q in zip(fg.inputs, qg.inputs):
        take(f, q, MatchMethod.EXACT_ID if fg.tensors[f].name == qg.tensors[q].name else MatchMethod.NAME)
    for f, q in zip(fg.outputs, qg.outputs):
        if f not in pairs:
            take(f, q, MatchMethod.EXACT_ID if fg.tensors[f].name == qg.tensors[q].name else MatchMethod.NAME)

    for f in f_acts:
        if f in pairs:
            continue
        ft = fg.tensors[f]
        for q in q_by_name.get(ft.name, []):
            if q not in used_q and _per_sample(qg.tensors[q].shape) == _per_sample(ft.shape) and not _is_conversion(qg, q):
                take(f, q, MatchMethod.EXACT_ID)
                break

    q_by_stem: dict[str, list[int]] = {}
    for t in q_acts:
        if t not in used_q and not _is_conversion(qg, t):
            q_by_stem.setdefault(_DEDUP_DIGITS.sub("", qg.tensors[t].name), []).append(t)
    for f in f_acts:
        if f in pairs:
            continue
        ft = fg.tensors[f]
        for q in q_by_stem.get(_DEDUP_DIGITS.sub("", ft.name), []):
            if q not in used_q and _per_sample(qg.tensors[q].shape) == _per_sample(ft.shape):
                take(f, q, MatchMethod.NAME)
                break

    _match_by_topology(fg, qg, f_acts, q_acts, pairs, used_q, take)

    unmatched = [
        Unmatched("float", fg.tensors[f].name, fg.producer_type(f), "no quantized tensor with this name, or op and shape")
        for f in f_acts
        if f not in pairs
    ]
    for q in q_acts:
        if q in used_q:
            continue
        unmatched.append(Unmatched("quantized", qg.tensors[q].name, qg.producer_type(q), _why_unmatched(qg, q)))
    if qg.qdq:  # the quantized value of a QDQ tensor is its quantize op's output: pair that one
        for f, p in list(pairs.items()):
            q = qg.quantized_form(p.quant_index)
            if q != p.quant_index and q not in used_q:
                used_q.discard(p.quant_index)
                used_q.add(q)
                pairs[f] = TensorPair(f, q, p.method)
        unmatched = [u for u in unmatched if u.side == "float"]
        unmatched += [Unmatched("quantized", qg.tensors[q].name, qg.producer_type(q), _why_unmatched(qg, q))
                      for q in q_acts if q not in used_q]
    where = (lambda q: through_conversions(qg, q)) if qg.qdq else (lambda q: q)
    ordered = tuple(sorted(pairs.values(), key=lambda p: _position(qg, where(p.quant_index))))
    return Matching(ordered, tuple(unmatched))


def _is_conversion(g: Graph, t: int) -> bool:
    p = g.tensors[t].producer
    return p is not None and g.is_conversion(g.op(p))


def _position(g: Graph, t: int) -> int:
    p = g.tensors[t].producer
    return -1 if p is None else p


def _match_by_topology(fg: Graph, qg: Graph, f_acts, q_acts, pairs, used_q, take) -> None:
    """Pair what is left by producing op type and shape when all the op's data inputs are already paired."""
    f_to_q = {p.float_index: p.quant_index for p in pairs.values()}
    for f in f_acts:
        if f in pairs or fg.tensors[f].producer is None:
            continue
        fop = fg.op(fg.tensors[f].producer)
        f_inputs = fg.activation_inputs(fop)
        if not f_inputs or any(i not in f_to_q for i in f_inputs):
            continue
        q_inputs = {through_conversions(qg, f_to_q[i]) for i in f_inputs}
        for q in q_acts:
            if q in used_q or qg.tensors[q].producer is None:
                continue
            qop = qg.op(qg.tensors[q].producer)
            if qop.type != fop.type or _per_sample(qg.tensors[q].shape) != _per_sample(fg.tensors[f].shape):
                continue
            if {through_conversions(qg, i) for i in qg.activation_inputs(qop)} == q_inputs:
                take(f, q, MatchMethod.SHAPE_TOPOLOGY)
                f_to_q[f] = q
                break


def through_conversions(g: Graph, t: int) -> int:
    """Follow QUANTIZE/DEQUANTIZE producers back to the tensor they convert."""
    seen = 0
    while seen < 4:
        p = g.tensors[t].producer
        if p is None or not g.is_conversion(g.op(p)):
            return t
        t = g.op(p).inputs[0]
        seen += 1
    return t


def _why_unmatched(g: Graph, t: int) -> str:
    ptype = g.producer_type(t)
    integer = g.tensors[t].dtype in ("int8", "uint8", "int16", "uint16")
    if _is_conversion(g, t):
        if integer:
            return f"inserted {ptype}: the same values as its float input, on the integer grid"
        return f"inserted {ptype}: the same values as its integer input, back in float"
    consumers = [g.op(c) for c in g.tensors[t].consumers]
    if consumers and all(g.is_conversion(c) for c in consumers):
        if g.qdq and not integer:
            return "float value before its quantize op (the quantize op's output is the one compared)"
        return f"integer twin of a graph output (read through its {consumers[0].type})"
    return "no float tensor with this name, or op and shape"
