"""The streaming state of diagnose's float + quantized passes: every matched tensor's error, the task's metrics and
(for a classifier) the output margins, folded in batch by batch.

`Passes` follows the accumulator contract of `stats/accumulators.py` — `update` per batch, `merge` of two states built
for the same models (shards of the data run apart, e.g. on Ray workers, give the same result as one stream), `results`
at the end — so where the batches run is the caller's choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from quantdoctor.errors import DataError

JOIN_OPS = frozenset({"CONCATENATION", "Concat"})


class Passes:
    """Accumulators of one pass over (a shard of) the evaluation data.

    Args:
        float_graph, quant_graph: the two models' graphs (`backends/base.Graph`).
        outputs: the float model's output specs.
        matching: the float ↔ quantized tensor pairs.
        task, options: the task judging the outputs (`quantdoctor.tasks`) and its options.
        top_k: k of the margins.
        keep: copies of the float model's outputs are kept for the first `keep` samples fed (the verification
            samples: the counterfactuals compare against them instead of running the float model again).
    """

    def __init__(self, float_graph, quant_graph, outputs: Sequence[Any], matching, task, options, top_k: int,
                 keep: int = 0) -> None:
        from quantdoctor.diagnose.outputs import class_output, output_pairs, output_scales
        from quantdoctor.stats.accumulators import ErrorAccumulator
        from quantdoctor.stats.margins import MarginAccumulator
        from quantdoctor.tasks import build_accumulator

        from quantdoctor.matching.match import through_conversions
        from quantdoctor.stats.channels import ChannelErrorAccumulator

        self.matched = [p.float_index for p in matching.pairs]
        self.q_ids = [p.quant_index for p in matching.pairs]
        self._q_of: dict[int, list[int]] = {}  # float tensor -> its quantized partners, in pair order
        for f, q in zip(self.matched, self.q_ids):
            self._q_of.setdefault(f, []).append(q)
        # Tensors that join parts: a concatenation's output and the graph outputs get per-channel errors, so the
        # channel groups of a mixed tensor are measured (`diagnose/mixed_ranges.py`).
        joins = set()
        for f, q in zip(self.matched, self.q_ids):
            t = quant_graph.tensors[through_conversions(quant_graph, q)]
            producer = None if t.producer is None else quant_graph.op(t.producer)
            if (producer is not None and producer.type in JOIN_OPS) or q in quant_graph.outputs \
                    or f in float_graph.outputs:
                if len(t.shape) >= 2 and t.shape[-1] > 1:
                    joins.add(f)
        self.channels = {f: ChannelErrorAccumulator() for f in sorted(joins)}
        self.f_outs, self.q_outs = output_pairs(float_graph, quant_graph)
        self.errors = {f: ErrorAccumulator() for f in self.matched}
        self.task = build_accumulator(task, outputs, options, scales=output_scales(quant_graph, self.q_outs))
        self.keep = keep
        self.kept: list[list[np.ndarray]] = []  # per batch, the float outputs of its first samples within `keep`
        self.margins, self.class_output = None, None
        if task.name == "classify":
            self.class_output = class_output(outputs, options)
            if int(np.prod(outputs[self.class_output].shape)) > 1:
                self.margins = MarginAccumulator(k=top_k)

    def feed(self, float_runner, quant_runner, dataset, batch_size: int, probes=None,
             indices: np.ndarray | None = None, advance=None) -> None:
        """Run `dataset`'s batches (all, or the samples at `indices`) through both runners and fold each in, with the
        explain `probes` if given; `advance(n)` is told each batch's size (a progress bar)."""
        f_ids = self.float_ids(probes.float_ids if probes is not None else ())
        q_ids = self.quant_ids()
        labels = dataset.labels
        for x, idx in dataset.batches(batch_size, indices):
            # Views into the interpreters' buffers (no copies); dropped before the next batch runs.
            fv = float_runner.capture(x, f_ids, copy=False)
            qv = quant_runner.capture(x, q_ids, copy=False)
            self.update(fv, qv, None if labels is None else labels[idx], len(idx))
            if probes is not None:
                probes.update(fv, qv)
            del fv, qv
            if advance is not None:
                advance(len(idx))

    def float_ids(self, extra: Sequence[int] = ()) -> list[int]:
        """Float tensors to capture each batch: the matched ones, `extra` (the probes'), then the outputs."""
        ids = list(self.matched) + sorted(set(extra) - set(self.matched))
        return ids + self.f_outs

    def quant_ids(self) -> list[int]:
        return self.q_ids + self.q_outs

    def update(self, fv: dict[int, np.ndarray], qv: dict[int, np.ndarray], labels: np.ndarray | None, n: int) -> None:
        """Fold in one batch of `n` samples: fv/qv map float/quantized tensor indices to float32 values.

        The tensors' errors fold on `FOLD_THREADS` threads, each accumulator on one (`stats.accumulators.deal`), while
        this thread folds the outputs.
        """
        from concurrent.futures import ThreadPoolExecutor

        from quantdoctor.stats.accumulators import FOLD_THREADS, deal

        with ThreadPoolExecutor(FOLD_THREADS) as pool:
            parts = deal({f: fv[f].size for f in self._q_of}, FOLD_THREADS)
            folds = [pool.submit(self._fold, part, fv, qv) for part in parts]
            self.task.update([fv[t] for t in self.f_outs], [qv[t] for t in self.q_outs], labels)
            if self.margins is not None:
                c = self.class_output
                self.margins.update(fv[self.f_outs[c]].reshape(n, -1), qv[self.q_outs[c]].reshape(n, -1))
            for fold in folds:
                fold.result()
        take = min(n, self.keep - sum(len(k[0]) for k in self.kept)) if self.f_outs else 0
        if take > 0:
            self.kept.append([np.array(fv[t][:take], copy=True) for t in self.f_outs])

    def _fold(self, part: Sequence[int], fv: dict[int, np.ndarray], qv: dict[int, np.ndarray]) -> None:
        for f in part:
            for q in self._q_of[f]:
                self.errors[f].update(fv[f], qv[q])
                if f in self.channels:
                    self.channels[f].update(fv[f], qv[q])

    def merge(self, other: Passes) -> Passes:
        """A new state holding both streams (`self` and `other` unchanged)."""
        merged = object.__new__(Passes)
        merged.__dict__.update(self.__dict__)
        merged.errors = {f: a.merge(other.errors[f]) for f, a in self.errors.items()}
        merged.channels = {f: a.merge(other.channels[f]) for f, a in self.channels.items()}
        merged.task = self.task.merge(other.task)
        merged.margins = None if self.margins is None else self.margins.merge(other.margins)
        merged.kept = self.kept + other.kept  # shards feed consecutive samples: the earlier one first
        merged.keep = self.keep + other.keep
        return merged

    def kept_outputs(self) -> list[np.ndarray] | None:
        """The float outputs of the first `keep` samples, one array per output; None when fewer were fed."""
        if not self.kept or sum(len(k[0]) for k in self.kept) < self.keep:
            return None
        return [np.concatenate(parts)[: self.keep] for parts in zip(*self.kept)]

    def channel_results(self) -> dict[int, Any]:
        """Per-channel error (`stats.channels.ChannelError`) of each tensor that joins parts."""
        return {f: a.result() for f, a in self.channels.items() if a.num_channels}

    def results(self):
        """(error per matched float tensor, the task's result, the margins or None).

        Raises:
            DataError: no sample was seen.
        """
        result = self.task.result()
        if result.num_samples == 0:
            raise DataError("no samples left to evaluate; give more data or a smaller --calib-count")
        margins = None if self.margins is None else self.margins.result()
        return {f: a.result() for f, a in self.errors.items()}, result, margins
