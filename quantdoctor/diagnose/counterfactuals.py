"""Counterfactuals measured at the model output, by running one model in segments with some ops computed by the other
(`Runner.splice`, a backend primitive), so neither needs a re-conversion and both work for a quantized model made
elsewhere:

- *op exact*: the quantized model, with the chosen ops computed by the float model's ops on the inputs the quantized
  model gives them (an integer output is stored on its tensor's grid again). This is the keep-this-op-in-float fix,
  measured without a rebuild: it removes the op's own quantization and nothing upstream of it, so a late op does not
  "recover" errors it only passes on.
- *alone quantized*: the float model, with only the chosen ops computed by their quantized versions (on float inputs,
  quantized into integer input tensors as the quantized model stores them).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import numpy as np

from quantdoctor.backends.base import Graph, as_inputs, batch_len
from quantdoctor.diagnose.verification import Outcome, recovery
from quantdoctor.matching.match import Matching, through_conversions

_INTEGER = ("int8", "uint8", "int16", "uint16")
_SHAPE_TYPES = ("int32", "int64")
MAX_CHAIN = 3  # float ops a fused quantized op may stand for (Conv + Relu, Conv + Clip, ...)
OP_BYTES = 8 << 20  # float inputs one call of a kept one-op cut takes at most (in pieces of the batch beyond)


class Counterfactuals:
    """Evaluates counterfactuals of the quantized model against the float model on a fixed verification subset.

    Args:
        float_runner, quant_runner: backend runners (`backends/base.Runner`) of the float and the quantized model.
        matching: the float ↔ quantized tensor pairs.
        dataset: the evaluation set; its first `samples` samples verify.
        float_outputs: the float model's outputs on those samples (one array per output), when a pass over them has
            computed them already; by default the float model runs them again.
    """

    def __init__(self, float_runner, quant_runner, matching: Matching, dataset, samples: int, *,
                 batch_size: int = 16, top_k: int = 3, task=None, task_options=None,
                 float_outputs: Sequence[np.ndarray] | None = None) -> None:
        from quantdoctor.tasks import build_accumulator, resolve_task
        from quantdoctor.tasks.base import TaskOptions

        self.fr, self.qr = float_runner, quant_runner
        self.task_options = task_options or TaskOptions(top_k=top_k)
        self.task = task or resolve_task("auto", float_runner.outputs(), self.task_options)
        self._new_acc = lambda: build_accumulator(self.task, float_runner.outputs(), self.task_options)
        self.fg: Graph = float_runner.graph
        self.qg: Graph = quant_runner.graph
        # Own runners: every op's cut is kept across evaluations, each taking a few samples per call (`max_bytes`), so
        # that making every op exact does not hold a whole batch of every activation of the model.
        self.f_ops, self.q_ops = float_runner.op_runner(constants={}), quant_runner.op_runner(constants={})
        self.f_ops.max_bytes = self.q_ops.max_bytes = OP_BYTES
        self.top_k = top_k
        subset = dataset if len(dataset) <= samples else dataset.subset(np.arange(samples))
        self.samples = len(subset)
        labels = subset.labels
        batches = [(x, None if labels is None else labels[idx]) for x, idx in subset.batches(batch_size)]
        if float_outputs is not None and all(len(o) == self.samples for o in float_outputs):
            ends = np.cumsum([batch_len(x) for x, _ in batches])
            float_out = [[o[e - batch_len(x):e] for o in float_outputs] for (x, _), e in zip(batches, ends)]
        else:
            float_out = [[np.array(v, copy=True) for v in float_runner.run_all(x)] for x, _ in batches]
        whole = quant_runner.splice(())  # the baseline, run as every counterfactual runs: in cuts of the model
        quant_out = [whole.run(x, _nothing) for x, _ in batches]
        del whole
        # The samples whose top-1 decision the quantized model loses come first, so that an op set which does not win
        # them back is refuted after their batches (`recovers`); the outcomes do not depend on the order.
        order = self._lost_first(float_out, quant_out)
        if order is not None:
            batches, float_out, quant_out = _regroup(batches, float_out, quant_out, order, batch_size)
        self.batches, self.float_out = batches, float_out
        self._seen = np.cumsum([batch_len(x) for x, _ in batches]).tolist()  # samples after each batch
        self.matching = matching
        self._q_to_f = matching.q_to_f
        self._f_to_q = {p.float_index: p.quant_index for p in matching.pairs}
        self.twins = self._twins()  # quantized op -> (float ops, input permutation)
        self.candidates = tuple(sorted(self.twins))
        self.count = 0
        self.seconds = 0.0
        self.early = 0  # evaluations decided before their last batch
        self._done: dict[tuple[str, tuple[int, ...]], Outcome] = {}  # each counterfactual is measured once
        self._partial: dict[tuple[str, tuple[int, ...]], tuple[object, int]] = {}  # decided early: (state, next batch)
        acc = self._new_acc()
        for (_, y), f_out, q_out in zip(self.batches, self.float_out, quant_out):
            acc.update(f_out, q_out, y)
        self.baseline = self._done[("quantized", ())] = self._outcome("quantized", (), acc.result())
        self.count = 1

    def _lost_first(self, float_out, quant_out) -> np.ndarray | None:
        """Sample positions, those whose top-1 decision the quantized model changes first (stable); None unless the
        task is a classifier's."""
        if self.task.name != "classify":
            return None
        from quantdoctor.diagnose.outputs import class_output

        c = class_output(self.fr.outputs(), self.task_options)
        f = np.concatenate([np.asarray(o[c]).reshape(len(o[c]), -1) for o in float_out])
        q = np.concatenate([np.asarray(o[c]).reshape(len(o[c]), -1) for o in quant_out])
        return np.argsort(f.argmax(1) == q.argmax(1), kind="stable")

    def _float_source(self, t: int) -> int | None:
        """The float tensor a quantized tensor stands for (through inserted (de)quantize ops)."""
        f = self.matching.float_of(self.qg, t)
        if f is not None:
            return f
        frontier = [t]
        for _ in range(3):  # a graph output read through its (quantize and) dequantize ops
            frontier = [op.outputs[0] for f in frontier for c in self.qg.tensors[f].consumers
                        for op in [self.qg.op(c)] if self.qg.is_conversion(op) and op.outputs]
            found = [self._q_to_f[f] for f in frontier if f in self._q_to_f]
            if found:
                return found[0]
        return None

    def _twins(self) -> dict[int, tuple[tuple[int, ...], tuple[int, ...]]]:
        """Quantized op → (float ops that compute its output from the paired inputs, input permutation).

        Usually one float op of the same type. A QDQ quantizer may fold an activation into the op before it (ORT:
        Conv+Relu → Conv whose output grid clips); its twin is then that chain of float ops (at most `MAX_CHAIN`,
        each after the first reading only the one before). Float input k of the first op is quantized input perm[k].
        """
        out = {}
        for op in self.qg.ops:
            if self.qg.is_conversion(op) or not op.outputs or op.outputs[0] < 0:
                continue
            f_t = self._float_source(op.outputs[0])
            f_prod = None if f_t is None else self.fg.tensors[f_t].producer
            if f_prod is None:
                continue
            chain = [f_prod]
            while self.qg.qdq and self.fg.op(chain[0]).type != op.type and len(chain) < MAX_CHAIN:
                ins = self.f_ops.io(chain[0]).inputs
                prev = self.fg.tensors[ins[0]].producer if len(ins) == 1 else None
                if prev is None:
                    break
                chain.insert(0, prev)
            first = self.fg.op(chain[0])
            if first.type != op.type or len(self.fg.op(chain[-1]).outputs) != len(op.outputs):
                continue
            if any(self.f_ops.io(c).inputs != tuple(t for t in self.fg.op(b).outputs if t >= 0)
                   for b, c in zip(chain, chain[1:])):
                continue
            q_in = [through_conversions(self.qg, t) for t in self.q_ops.io(op.index).inputs]
            f_in = self.f_ops.io(chain[0]).inputs
            perm = []
            for t in f_in:
                q = self._f_to_q.get(t)
                q = None if q is None else through_conversions(self.qg, q)
                if q is None and self.fg.tensors[t].dtype in _SHAPE_TYPES:
                    # A shape computed at run time (SHAPE → STRIDED_SLICE → PACK in front of a RESHAPE) is not
                    # matched as an activation: pair it with the quantized op's unused shape input in order.
                    q = next((u for u in q_in if self.qg.tensors[u].dtype in _SHAPE_TYPES
                              and q_in.index(u) not in perm), None)
                if q not in q_in:
                    break
                perm.append(q_in.index(q))
            # The quantized op may also read a shape where the float op reads a constant: such inputs are not data.
            rest = [q_in[k] for k in range(len(q_in)) if k not in perm]
            shapes_only = all(self.qg.tensors[t].dtype in _SHAPE_TYPES for t in rest)
            if len(perm) == len(f_in) and shapes_only and len(set(perm)) == len(perm):
                out[op.index] = (tuple(chain), tuple(perm))
        return out

    def _fused(self, q_op: int) -> bool:
        """A quantized op that stands for several float ops (an activation folded into its output grid)."""
        return q_op in self.twins and len(self.twins[q_op][0]) > 1

    def _quantized_op(self, q_op: int, args: list[np.ndarray]) -> list[np.ndarray]:
        """The quantized op alone on float inputs, its outputs on the grid of the quantize op that follows them (in a
        QDQ graph that grid is part of the op: it clips for the activation a quantizer folded into it)."""
        values = self.q_ops.run_outputs(q_op, args)
        out = []
        for t, v in zip(self.qg.op(q_op).outputs, values):
            g = self.qg.tensors[self.qg.quantized_form(t)] if t >= 0 else None
            out.append(v if g is None or g.index == t or g.quant is None else _on_grid(v, g))
        return out

    def _float_twin(self, q_op: int, args: list[np.ndarray]) -> list[np.ndarray]:
        """The float twin of quantized op `q_op` on its (float) input values."""
        chain, perm = self.twins[q_op]
        values = self.f_ops.run_outputs(chain[0], [args[j] for j in perm])
        for f_op in chain[1:]:
            values = self.f_ops.run_outputs(f_op, values[:1])
        return values

    def _with_conversions(self, ops: Sequence[int]) -> list[int]:
        """`ops` plus the (de)quantize ops that keeping them in float removes: a dequantize fed by an exact op, any
        conversion whose readers are all exact (or that returns a graph output from an exact op). A quantize op whose
        reader still computes quantized stays: that reader needs its input on the grid."""
        chosen = set(ops)
        outputs = set(self.qg.outputs)
        conversions = [op for op in self.qg.ops if self.qg.is_conversion(op) and not self.qg.is_weight_dequantize(op)]
        grew = True
        while grew:
            grew = False
            for op in conversions:
                if op.index in chosen:
                    continue
                src = self.qg.tensors[op.inputs[0]].producer
                from_exact = src is not None and src in chosen
                readers = [c for t in op.outputs for c in self.qg.tensors[t].consumers]
                to_float = all(self.qg.tensors[t].dtype not in _INTEGER for t in op.outputs)
                returned = not readers and any(t in outputs for t in op.outputs)
                # The quantize op after a fused op (Conv whose Relu/Clip the quantizer folded) is that activation:
                # it stays unless the fused op itself is computed in float.
                carries_activation = not to_float and src is not None and not from_exact and self._fused(src)
                if carries_activation:
                    continue
                if (readers and all(c in chosen for c in readers)) or (from_exact and (to_float or returned)):
                    chosen.add(op.index)
                    grew = True
        return sorted(chosen)

    def op_exact(self, ops: Sequence[int]) -> Outcome:
        """The quantized model with `ops` computed by their float twins on the inputs the quantized model gives."""
        return self._measure("op_exact", op_set(ops))

    def alone_quantized(self, ops: Sequence[int]) -> Outcome:
        """The float model with only `ops` computed by their quantized versions."""
        return self._measure("alone_quantized", op_set(ops))

    def prefetch(self, wanted: Sequence[tuple[str, Sequence[int]]]) -> None:
        """Counterfactuals about to be read, independent of each other ((kind, ops) pairs: "op_exact" or
        "alone_quantized"). In this process each runs when it is read; an executor runs them side by side
        (`diagnose/parallel.py`)."""

    def recovers(self, ops: Sequence[int], target: float) -> bool:
        """Whether `op_exact(ops)` wins back at least `target` of the loss: the same decision, reached before the last
        batch when the batches seen already settle it.

        A classifier's top-1 agreement is a count, so the batches left can move it by at most their size: once even
        their all agreeing cannot lift the recovery to `target`, or even their all disagreeing cannot pull it below, the
        answer is known. The lost decisions' batches run first, so an op set that does not win them back is refuted
        after them. A later `op_exact(ops)` resumes from where this stopped. Other tasks' headlines are not counts:
        they run every batch.
        """
        key = ("op_exact", op_set(ops))
        if key not in self._done:
            decided = self._evaluate(*key, target=target)
            if decided is not None:
                return decided
        return self._done[key].recovery >= target

    def _measure(self, kind: str, ops: tuple[int, ...]) -> Outcome:
        if (kind, ops) not in self._done:
            self._evaluate(kind, ops)
        return self._done[(kind, ops)]

    def _splice(self, kind: str, ops: tuple[int, ...]):
        """The spliced model of a counterfactual, and the `compute` that gives its replaced ops' outputs."""
        if kind == "alone_quantized":
            by_float = {self.twins[q][0][0]: q for q in ops}  # the first float op of each twin computes it all
            rest = {f for q in ops for f in self.twins[q][0][1:]}  # the others pass its value on

            def compute(f_op, args):
                if f_op not in by_float:
                    return [np.asarray(args[0], dtype=np.float32)]
                q_op = by_float[f_op]
                perm = self.twins[q_op][1]
                q_args = [None] * len(perm)
                for k, j in enumerate(perm):
                    q_args[j] = args[k]
                return self._quantized_op(q_op, q_args)

            return self.fr.splice(sorted(set(by_float) | rest)), compute

        def compute(q_op, args):
            if q_op not in self.twins:  # a (de)quantize next to exact ops: float in, float out
                return [np.asarray(args[0], dtype=np.float32)]
            return self._float_twin(q_op, args)

        return self.qr.splice(self._with_conversions(ops)), compute

    def _evaluate(self, kind: str, ops: tuple[int, ...], target: float | None = None) -> bool | None:
        """Run the counterfactual's batches (from where an earlier early decision stopped) into its accumulator.

        With `target`, stop once the recovery's side of `target` is settled and return it (the state is kept for a
        later resume); otherwise, or when only the last batch settles it, store the outcome and return None.
        """
        start = time.perf_counter()
        key = (kind, ops)
        acc, first = self._partial.pop(key, (None, 0))
        if acc is None:
            acc = self._new_acc()
            self.count += 1
        elif target is not None:  # asked again: the batches already run may settle it
            decided = self._settled(acc, first - 1, target)
            if decided is not None:
                self._partial[key] = (acc, first)
                return decided
        splice, compute = self._splice(kind, ops)
        try:
            for i in range(first, len(self.batches)):
                (x, y), f_out = self.batches[i], self.float_out[i]
                acc.update(f_out, splice.run(x, compute), y)
                decided = None if target is None or i + 1 == len(self.batches) else self._settled(acc, i, target)
                if decided is not None:
                    self._partial[key] = (acc, i + 1)
                    self.early += first == 0
                    return decided
            self._done[key] = self._outcome(kind, ops, acc.result())
            return None
        finally:
            self.seconds += time.perf_counter() - start

    def _settled(self, acc, batch: int, target: float) -> bool | None:
        """Whether the recovery will reach `target` whatever the batches after `batch` give; None when it may go either
        way (or the task's headline is not a count of samples)."""
        from quantdoctor.tasks.classify import classification_metrics

        m = classification_metrics(acc.result())
        if m is None:
            return None
        seen, n = self._seen[batch], self.samples
        agree = round(m.top1_agreement * seen)
        base = self.baseline.top1_agreement
        if recovery(base, (agree + n - seen) / n) < target - 1e-9:  # the rest all agreeing falls short
            return False
        if recovery(base, agree / n) >= target + 1e-9:  # the rest all disagreeing still reaches it
            return True
        return None

    def _outcome(self, kind: str, ops: tuple[int, ...], result) -> Outcome:
        """The task's result as an outcome: a classifier's agreements and accuracy, else the task's headline."""
        from quantdoctor.tasks.classify import classification_metrics

        base = getattr(self, "baseline", None)
        m = classification_metrics(result)
        if m is not None:
            rec = math.nan if base is None else recovery(base.top1_agreement, m.top1_agreement)
            accuracy = m.quant_top1 if m.num_labelled else None
            return Outcome(kind, ops, m.top1_agreement, m.topk_agreement, accuracy, m.logit_sqnr_db, rec)
        value = result.value
        rec = math.nan if base is None else recovery(base.top1_agreement, value)
        sqnr = min((o.sqnr_db for o in result.outputs), default=math.nan)
        return Outcome(kind, ops, value, value, None, sqnr, rec, metric=result.headline)


def op_set(ops: Sequence[int]) -> tuple[int, ...]:
    """The key a counterfactual is remembered by: its ops, each once, in order."""
    return tuple(sorted({int(o) for o in ops}))


def _nothing(op: int, args: list[np.ndarray]) -> list[np.ndarray]:
    raise AssertionError(f"op {op} is not replaced in the baseline")  # a splice replacing nothing never calls it


def _regroup(batches, float_out, quant_out, order: np.ndarray, batch_size: int):
    """The verification batches, float and quantized outputs re-cut into batches of `batch_size` samples taken in
    `order` (sample positions across all batches)."""
    def take(per_batch: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
        whole = [np.concatenate(parts) for parts in zip(*per_batch)]
        return [[w[order[i:i + batch_size]] for w in whole] for i in range(0, len(order), batch_size)]

    multi = isinstance(batches[0][0], (tuple, list))
    xs = take([list(as_inputs(x)) for x, _ in batches])
    ys = [None] * len(xs) if batches[0][1] is None else [y for (y,) in take([[y] for _, y in batches])]
    new_batches = [(tuple(x) if multi else x[0], y) for x, y in zip(xs, ys)]
    return new_batches, take(float_out), take(quant_out)


def _on_grid(value: np.ndarray, tensor) -> np.ndarray:
    """`value` quantized to `tensor`'s integer grid and back (round half to even, saturate)."""
    q = tensor.quant
    info = np.iinfo(np.dtype(tensor.dtype))
    s = np.asarray(q.scales, dtype=np.float32)
    z = np.asarray(q.zero_points or (0,), dtype=np.float32)
    if s.size > 1 and q.axis is not None:
        shape = [1] * value.ndim
        shape[q.axis] = s.size
        s, z = s.reshape(shape), z.reshape(shape)
    return ((np.clip(np.rint(value / s) + z, info.min, info.max) - z) * s).astype(np.float32)
