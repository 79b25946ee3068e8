"""Diagnose on an executor's workers (`--executor ray`): the passes split by data, the counterfactuals by batches.

Passes: the evaluation set is cut into contiguous shards of whole batches (one per worker), so every batch holds the
samples it holds in one process. A worker makes the float and quantized runners once (one thread each: the workers
share the cores) from model bytes sent through the object store once, runs the batches of its shard through both,
folds them into a `Passes` (`diagnose/passes.py`) and returns it; the shards' states merged in shard order give the
results. Counts (agreements, flips, samples) are the same as in one process; float sums are added in another order,
so they agree to rounding (relative 1e-9 in the tests).

Explain probes: they run on the shards, not in the driver. Their activation statistics and grid coverage cover every
sample, so each shard keeps its own and they are merged like the passes; the isolated/expected errors cover the first
`explain_samples` samples, so only the shard(s) holding those samples run ops alone, exactly on those samples. The
driver's `Probes` receives the merged state (`_absorb`). This relies on the fields `Probes.acts`, `Probes.seen` and each
planned op's `isolated`, `expected` and `first_inputs`; `_absorb` checks both sides planned the same ops.

Counterfactuals: group testing is sequential (each set tested depends on the outcome of the one before), so each
evaluation is split instead: the verification batches and the float model's outputs, computed once in the driver, are
sent to the workers through the object store once; each worker makes its `Counterfactuals` once and measures its range
of batches into the task's accumulator; the accumulators merged in batch order give the same outcome as one process
(counts equal, float sums to rounding), so the search decides the same.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from quantdoctor.backends.base import as_inputs, batch_slice
from quantdoctor.diagnose.counterfactuals import Counterfactuals, op_set
from quantdoctor.executors.base import Executor, WorkerMethod


def shards(n: int, batch_size: int, parts: int) -> list[tuple[int, int]]:
    """At most `parts` contiguous [start, stop) ranges of `n` samples, cut at batch boundaries, as even as they allow."""
    batches = -(-n // batch_size)
    parts = max(1, min(parts, batches))
    cuts = [round(i * batches / parts) for i in range(parts + 1)]
    return [(a * batch_size, min(b * batch_size, n)) for a, b in zip(cuts, cuts[1:])]


@dataclass(frozen=True)
class ModelPair:
    """What a worker needs to make the two runners: the models' bytes, the runner class, batch size and threads."""

    float_model: bytes
    quant_model: bytes
    runner: type  # TfliteRunner, OnnxRunner: (model, batch_size, num_threads)
    batch_size: int
    num_threads: int | None = 1

    @classmethod
    def of(cls, float_runner, quant_runner, batch_size: int) -> ModelPair:
        return cls(bytes(float_runner.model), bytes(quant_runner.model), type(quant_runner), batch_size)

    def runners(self) -> tuple[Any, Any]:
        """The (float, quantized) runners, made once per process (the passes and the counterfactuals share them)."""
        key = (hash(self.float_model), hash(self.quant_model), self.runner, self.batch_size, self.num_threads)
        if key not in _RUNNERS:
            _RUNNERS.clear()  # one model pair per worker process at a time
            _RUNNERS[key] = tuple(self.runner(m, self.batch_size, num_threads=self.num_threads)
                                  for m in (self.float_model, self.quant_model))
        return _RUNNERS[key]


_RUNNERS: dict[tuple, tuple[Any, Any]] = {}


@dataclass(frozen=True)
class Shard:
    """A worker's share of the passes: its `Passes`, and the probes' mergeable state (None without explain)."""

    start: int
    passes: Any
    probes: dict | None


class ShardWorker:
    """On a worker: runs shards of the evaluation set through both models into a `Passes` (and the probes)."""

    def __init__(self, models: ModelPair, dataset, matching, task, options, top_k: int,
                 explain_samples: int | None, keep: int = 0) -> None:
        self.models, self.dataset, self.matching = models, dataset, matching
        self.task, self.options, self.top_k, self.explain_samples = task, options, top_k, explain_samples
        self.keep = keep

    def run(self, shard: tuple[int, int]) -> Shard:
        from quantdoctor.diagnose.passes import Passes

        start, stop = shard
        fr, qr = self.models.runners()
        keep = int(np.clip(self.keep - start, 0, stop - start))  # of the first `keep` samples
        passes = Passes(fr.graph, qr.graph, fr.outputs(), self.matching, self.task, self.options, self.top_k, keep)
        probes = None
        if self.explain_samples is not None:
            from quantdoctor.diagnose.layers import is_dynamic_range
            from quantdoctor.diagnose.probes import Probes

            isolate = int(np.clip(self.explain_samples - start, 0, stop - start))  # of the first explain_samples
            probes = Probes(fr, qr, self.matching, is_dynamic_range(qr.graph), isolate)
        passes.feed(fr, qr, self.dataset, self.models.batch_size, probes, np.arange(start, stop))
        return Shard(start, passes, None if probes is None else _probe_state(probes))


def sharded_passes(executor: Executor, float_runner, quant_runner, eval_ds, matching, task, options, top_k: int,
                   batch_size: int, probes=None, parts: int | None = None, keep: int = 0):
    """The passes over `eval_ds` run shard by shard on `executor`'s workers, merged in shard order.

    Args:
        probes: the driver's `Probes` (explain), filled with the shards' merged measurements; None without explain.
        parts: shards (default: one per worker).
        keep: float outputs kept for the first `keep` samples (`Passes`).

    Returns:
        The merged `Passes`.
    """
    models = ModelPair.of(float_runner, quant_runner, batch_size)
    explain = None if probes is None else probes.explain_samples
    worker = WorkerMethod(ShardWorker, (models, eval_ds, matching, task, options, top_k, explain, keep), "run")
    parts = executor.workers if parts is None else parts
    results = executor.map(worker, shards(len(eval_ds), batch_size, parts))
    start = time.perf_counter()
    merged = functools.reduce(lambda a, b: a.merge(b), [r.passes for r in results])
    if probes is not None:
        _absorb(probes, [r.probes for r in results])
    executor.profile.extra["merge"] = executor.profile.extra.get("merge", 0.0) + time.perf_counter() - start
    return merged


def _probe_state(probes) -> dict:
    """What of a `Probes` merges across shards (accumulators and the first sample's inputs; no runner)."""
    return {"acts": probes.acts, "seen": probes.seen,
            "ops": [(p.q_op, p.f_out, p.isolated, p.expected, p.first_inputs) for p in probes.ops]}


def _absorb(probes, states: Sequence[dict]) -> None:
    """Fill the driver's `probes` with the shards' states, merged in shard order.

    Raises:
        RuntimeError: a worker planned other ops than the driver (the probes' planning is not deterministic).
    """
    def merge(a, b):
        return None if a is None else a.merge(b)

    acts = dict(states[0]["acts"])
    for s in states[1:]:
        acts = {f: tuple(merge(a, b) for a, b in zip(acts[f], s["acts"][f])) for f in acts}
    probes.acts = acts
    probes.seen = sum(s["seen"] for s in states)
    planned = [(p.q_op, p.f_out) for p in probes.ops]
    for s in states:
        if [(q, f) for q, f, *_ in s["ops"]] != planned:
            raise RuntimeError("a worker planned other probes than the driver; run with --executor local")
    for k, p in enumerate(probes.ops):
        parts = [s["ops"][k] for s in states]
        p.isolated = functools.reduce(merge, [iso for _, _, iso, _, _ in parts])
        p.expected = functools.reduce(merge, [exp for _, _, _, exp, _ in parts])
        p.first_inputs = next((first for *_, first in parts if first), ())


# -- counterfactuals ------------------------------------------------------------------------------------------------
class ShardedCounterfactuals(Counterfactuals):
    """`Counterfactuals` whose every evaluation runs on `executor`'s workers, the verification batches split among
    them; what it decides from (outcomes, count) is what the in-process one gives."""

    def __init__(self, executor: Executor, float_runner, quant_runner, matching, dataset, samples: int, *,
                 batch_size: int = 16, **options: Any) -> None:
        self._executor, self._worker = executor, None
        self._models = ModelPair.of(float_runner, quant_runner, batch_size)
        self._options = dict(batch_size=batch_size, **options)
        # Reads the verification batches, the float outputs and the baseline once, here.
        super().__init__(float_runner, quant_runner, matching, dataset, samples, batch_size=batch_size, **options)

    def recovers(self, ops, target: float) -> bool:
        # Every batch, split among the workers: an early decision would need the batches in sequence.
        return self.op_exact(ops).recovery >= target

    def _start(self) -> WorkerMethod:
        if self._worker is None:
            args = (self._models, self.matching, self.task, self.task_options, self.top_k, self.batches, self.float_out)
            self._worker = WorkerMethod(CounterfactualWorker, args, "measure")
            self._ranges = shards(len(self.batches), 1, self._executor.workers)  # in batches
        return self._worker

    def _measure(self, kind: str, ops: tuple[int, ...]):
        if (kind, ops) in self._done:
            return self._done[(kind, ops)]
        start = time.perf_counter()
        worker = self._start()
        parts = self._executor.map(worker, [(kind, ops, a, b) for a, b in self._ranges])
        acc = functools.reduce(lambda a, b: a.merge(b), parts)
        self._done[(kind, ops)] = self._outcome(kind, ops, acc.result())
        self.count += 1
        self.seconds += time.perf_counter() - start
        return self._done[(kind, ops)]

    def prefetch(self, wanted) -> None:
        """Independent counterfactuals measured whole, one per item, side by side on the workers (no splice is built
        twice, as splitting each one's batches would)."""
        keys = [k for k in dict.fromkeys((kind, op_set(ops)) for kind, ops in wanted)
                if k not in self._done]
        if len(keys) < 2:
            return
        start = time.perf_counter()
        parts = self._executor.map(self._start(), [(kind, ops, 0, len(self.batches)) for kind, ops in keys])
        for (kind, ops), acc in zip(keys, parts, strict=True):
            self._done[(kind, ops)] = self._outcome(kind, ops, acc.result())
        self.count += len(keys)
        self.seconds += time.perf_counter() - start


def sharded_counterfactuals(executor: Executor):
    """A `Counterfactuals` maker (same arguments) measuring on `executor`'s workers."""
    return functools.partial(ShardedCounterfactuals, executor)


class _Kept:
    """A task accumulator whose `result()` is the accumulator itself (a worker returns it to be merged)."""

    def __init__(self, acc) -> None:
        self.acc = acc

    def update(self, *args: Any) -> None:
        self.acc.update(*args)

    def result(self):
        return self.acc


class _Given:
    """Batches already read, as the dataset `Counterfactuals` reads (len, labels, batches)."""

    def __init__(self, batches: Sequence[tuple[Any, np.ndarray | None]]) -> None:
        self._batches = list(batches)
        self._sizes = [len(as_inputs(x)[0]) for x, _ in self._batches]

    def __len__(self) -> int:
        return sum(self._sizes)

    @property
    def labels(self) -> np.ndarray | None:
        ys = [y for _, y in self._batches]
        return None if any(y is None for y in ys) else np.concatenate(ys)

    def batches(self, batch_size: int):
        start = 0
        for (x, _), n in zip(self._batches, self._sizes):
            yield x, np.arange(start, start + n)
            start += n


class CounterfactualWorker(Counterfactuals):
    """On a worker: `Counterfactuals` over batches and float outputs read in the driver; `measure` returns the task's
    accumulator over a range of batches."""

    def __init__(self, models: ModelPair, matching, task, task_options, top_k: int, batches, float_out) -> None:
        fr, qr = models.runners()
        x, y = batches[0]
        one = _Given([(batch_slice(x, 1), None if y is None else y[:1])])  # made on one sample: cheap
        super().__init__(fr, qr, matching, one, 1, batch_size=models.batch_size, top_k=top_k, task=task,
                         task_options=task_options)
        self._all, self._all_float = list(batches), list(float_out)
        new = self._new_acc
        self._new_acc = lambda: _Kept(new())

    def _outcome(self, kind, ops, result):
        return result if hasattr(self, "_all") else super()._outcome(kind, ops, result)

    def measure(self, item: tuple[str, tuple[int, ...], int, int]):
        kind, ops, a, b = item
        self.batches, self.float_out = self._all[a:b], self._all_float[a:b]
        self._done = {}
        return self._measure(kind, ops)
