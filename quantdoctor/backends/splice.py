"""Cuts shared by every runtime: single ops run alone (`OpRunnerBase`) and the model run in segments with chosen ops
computed by the caller (`SpliceBase`) — the machinery of isolated errors and counterfactuals.

A runtime gives three things (`SpliceBase` subclasses in `backends/<runtime>/subgraph.py`): how to cut ops out into a
runnable `Subgraph` (`_cut`), which activation tensors one op reads in the order its own cut takes them
(`_op_inputs`), and how a float value is stored on a tensor's grid (`_on_grid`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from quantdoctor.backends.base import Batch, Graph, as_inputs
from quantdoctor.errors import DataError

SHAPE_READERS = frozenset({"SHAPE", "Shape"})
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

    def run(self, x: Batch, compute: Compute) -> list[np.ndarray]:
        """Float32 graph outputs for the float batch `x` (one array, or one per model input).

        Args:
            compute: `compute(op_index, inputs) -> outputs` for each replaced op: `inputs` are the float values of the
                op's activation inputs in `_op_inputs` order, `outputs` one float array per op output.
        """
        arrays = as_inputs(x)
        if len(arrays) != len(self.graph.inputs):
            raise DataError(f"the model has {len(self.graph.inputs)} inputs; {len(arrays)} array(s) were given")
        values: dict[int, np.ndarray] = {t: np.asarray(a, dtype=np.float32) for t, a in zip(self.graph.inputs, arrays)}
        for kind, what, ins, outs in self.steps:
            args = [values[t] for t in ins]
            results = what.run(args) if kind == "cut" else compute(what, args)
            for t, v in zip(outs, results, strict=True):
                values[t] = v if kind == "cut" or self._stays_float(t) else self._on_grid(t, v)
        return [values[t] for t in self.outputs]

    def _stays_float(self, t: int) -> bool:
        # An op that reads only the tensor's shape (a converter's SHAPE in front of a RESHAPE) does not need its
        # values on the grid.
        consumers = [c for c in self.graph.tensors[t].consumers if self.graph.op(c).type not in SHAPE_READERS]
        return bool(consumers) and t not in self.outputs and all(c in self.replaced for c in consumers)


class OpRunnerBase:
    """Runs single ops of a model on inputs taken from elsewhere: one cut per op, built on first use and kept.

    A runtime gives `_plan(op)` (which tensors the op's cut reads and writes: `.inputs`, `.outputs`) and `_cut_op(op)`
    (the runnable cut: `run(float_inputs)`, `run_raw(arrays)`).

    Args:
        model: the model bytes every index refers to.
        constants: per op index, constants to replace in that op's cut (tensor index → array), e.g. a float model's
            weights swapped for a quantized model's dequantized ones.

    `max_bytes` (None: no limit) caps the float inputs one call of a kept cut takes: `run_outputs` feeds a larger
    batch in pieces of a power-of-two number of samples and joins their outputs, so the cuts kept for every op of a
    model hold a few samples' activations each rather than a whole batch's (ops compute each sample on its own).
    """

    max_bytes: int | None = None

    def __init__(self, model: bytes, num_threads: int | None = None,
                 constants: dict[int, dict[int, np.ndarray]] | None = None) -> None:
        self.model = bytes(model)
        self.constants = constants or {}
        self._threads = num_threads
        self._ops: dict[int, Any] = {}
        self._io: dict[int, Any] = {}

    def _plan(self, op_index: int) -> Any:
        raise NotImplementedError

    def _cut_op(self, op_index: int) -> Any:
        raise NotImplementedError

    def io(self, op_index: int) -> Any:
        """The source tensors op `op_index` reads (the order `run` wants its inputs in) and writes."""
        if op_index not in self._io:
            self._io[op_index] = self._plan(op_index)
        return self._io[op_index]

    def _op(self, op_index: int) -> Any:
        if op_index not in self._ops:
            self._ops[op_index] = self._cut_op(op_index)
        return self._ops[op_index]

    def _check_count(self, op_index: int, arrays: Sequence[np.ndarray]) -> None:
        want = len(self.io(op_index).inputs)
        if len(arrays) != want:
            raise DataError(f"op {op_index} reads {want} activation tensor(s); {len(arrays)} array(s) were given")

    def run_raw(self, op_index: int, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Outputs of op `op_index` as the kernel writes them (integers stay integers), inputs cast as given."""
        self._check_count(op_index, arrays)
        return self._op(op_index).run_raw(arrays)

    def run_outputs(self, op_index: int, float_inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """All float32 outputs of op `op_index` fed with float inputs (float values going into an integer tensor are
        quantized as the model stores them; integer outputs are dequantized).

        Raises:
            DataError: the number of inputs is not the number the op reads.
        """
        self._check_count(op_index, float_inputs)
        rows = self._rows(float_inputs)
        if rows is None:
            return self._op(op_index).run(float_inputs)
        n = len(float_inputs[0])
        pieces = [self._op(op_index).run([a[i:i + rows] for a in float_inputs]) for i in range(0, n, rows)]
        return [np.concatenate(parts) for parts in zip(*pieces)]

    def _rows(self, arrays: Sequence[np.ndarray]) -> int | None:
        """Samples per piece under `max_bytes`, or None to run the batch whole (small enough, or an input that is not
        a float batch, such as a shape a RESHAPE reads)."""
        if self.max_bytes is None or not arrays:
            return None
        n = len(arrays[0]) if np.ndim(arrays[0]) else 0
        if n < 2 or any(np.ndim(a) == 0 or len(a) != n or np.asarray(a).dtype.kind != "f" for a in arrays):
            return None
        per_sample = sum(np.asarray(a).nbytes for a in arrays) / n
        if per_sample * n <= self.max_bytes:
            return None
        fits = max(1, int(self.max_bytes // per_sample))
        return 1 << (fits.bit_length() - 1)  # a power of two: a batch of 16 splits into equal pieces

    def run(self, op_index: int, float_inputs: Sequence[np.ndarray]) -> np.ndarray:
        """The first float32 output of op `op_index` fed with float inputs."""
        return self.run_outputs(op_index, float_inputs)[0]


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
