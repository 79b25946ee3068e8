"""A model run in segments with chosen ops computed by the caller: the machinery of counterfactuals, for any runtime.

A runtime gives three things (`SpliceBase` subclasses in `backends/<runtime>/subgraph.py`): how to cut ops out into a
runnable `Subgraph` (`_cut`), which activation tensors one op reads in the order its own cut takes them
(`_op_inputs`), and how a float value is stored on a tensor's grid (`_on_grid`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from quantdoctor.backends.base import Graph
from quantdoctor.errors import DataError

Compute = Callable[[int, list[np.ndarray]], list[np.ndarray]]


class SpliceBase:
    """The model run in segments, with the ops in `replaced` computed by the caller instead of by this model.

    `compute(op, inputs)` gets the float values of a replaced op's inputs as this model computed them and returns its
    outputs, e.g. the float model's op on those inputs ("this op exact", the keep-float fix without a rebuild) or a
    quantized op in a float model ("only this op quantized"). Ops between replaced ones run as one cut each, with their
    own kernels; a float value fed into an integer tensor is quantized as the model would store it. A replaced op's
    output that only replaced ops read stays float (as it would between two ops kept in float); one that the model's
    own kernels read, or that the model returns, is stored on its tensor's grid. Ops that lead to no graph output are
    dropped. Replacing nothing runs the whole model as one cut.
    """

    def __init__(self, graph: Graph, replaced: Sequence[int]) -> None:
        self.graph = graph
        self.replaced = tuple(sorted({int(i) for i in replaced}))
        unknown = set(self.replaced) - {op.index for op in graph.ops}
        if unknown:
            raise DataError(f"op(s) {sorted(unknown)} are not in the model")
        self.outputs = tuple(graph.outputs)
        # Execution order split at the replaced ops: ("cut", ops) and ("op", index) steps.
        steps: list[tuple[str, Any]] = []
        for i in live_ops(graph):
            if i in self.replaced:
                steps.append(("op", i))
            elif steps and steps[-1][0] == "cut":
                steps[-1][1].append(i)
            else:
                steps.append(("cut", [i]))
        reads_after: list[set[int]] = []  # tensors read by later steps or returned
        later = set(self.outputs)
        for kind, what in reversed(steps):
            reads_after.append(set(later))
            ops = [what] if kind == "op" else what
            later |= {t for o in ops for t in graph.op(o).inputs if t >= 0}
        reads_after.reverse()
        self.steps: list[tuple[str, Any, tuple[int, ...], tuple[int, ...]]] = []
        for (kind, what), needed in zip(steps, reads_after, strict=True):
            if kind == "op":
                outs = tuple(t for t in graph.op(what).outputs if t >= 0)
                self.steps.append(("op", what, self._op_inputs(what), outs))
                continue
            produced = [t for o in what for t in graph.op(o).outputs if t >= 0]
            outs = [t for t in dict.fromkeys(produced) if t in needed]
            if outs:
                sub = self._cut(what, outs)
                self.steps.append(("cut", sub, sub.inputs, sub.outputs))
        self.inputs = tuple(t for t in graph.inputs if t in later)

    def _cut(self, ops: list[int], outputs: list[int]) -> Any:
        """A runnable cut of `ops` returning `outputs` (`inputs`, `outputs`, `run(float_inputs)`)."""
        raise NotImplementedError

    def _op_inputs(self, op: int) -> tuple[int, ...]:
        """The activation tensors op `op` reads, in the order its one-op cut takes them."""
        raise NotImplementedError

    def _on_grid(self, t: int, value: np.ndarray) -> np.ndarray:
        """A float value as this model's tensor `t` would hold it (quantized and back for integer tensors)."""
        raise NotImplementedError

    def run(self, x: np.ndarray, compute: Compute) -> list[np.ndarray]:
        """Float32 graph outputs for the float batch `x`.

        Args:
            compute: `compute(op_index, inputs) -> outputs` for each replaced op: `inputs` are the float values of the
                op's activation inputs in `_op_inputs` order, `outputs` one float array per op output.
        """
        values: dict[int, np.ndarray] = {t: np.asarray(x, dtype=np.float32) for t in self.graph.inputs}
        for kind, what, ins, outs in self.steps:
            args = [values[t] for t in ins]
            results = what.run(args) if kind == "cut" else compute(what, args)
            for t, v in zip(outs, results, strict=True):
                values[t] = v if kind == "cut" or self._stays_float(t) else self._on_grid(t, v)
        return [values[t] for t in self.outputs]

    def _stays_float(self, t: int) -> bool:
        consumers = self.graph.tensors[t].consumers
        return bool(consumers) and t not in self.outputs and all(c in self.replaced for c in consumers)


def live_ops(graph: Graph) -> list[int]:
    """Ops (weight unpacks left out: a cut adds them back) that lead to a graph output, in execution order."""
    needed = set(graph.outputs)
    live: list[int] = []
    for op in reversed(graph.ops):
        if graph.is_weight_dequantize(op):
            continue
        if any(t in needed for t in op.outputs):
            live.append(op.index)
            needed.update(t for t in op.inputs if t >= 0)
    return live[::-1]
