"""Every model output measured on its own, whatever the task: SQNR, relative and max error, per channel group."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from quantdoctor.backends.base import TensorSpec
from quantdoctor.errors import DataError
from quantdoctor.stats.accumulators import ErrorAccumulator
from quantdoctor.stats.channels import ChannelError, ChannelErrorAccumulator, group_channels, group_sqnr
from quantdoctor.tasks.base import ChannelGroup, OutputMetrics

GroupSpec = tuple[int, int, str]  # (start, stop, name)


class OutputsAccumulator:
    """Streams the error of each output of a model, and of each channel of the outputs that have channels.

    Args:
        outputs: the model's outputs (per-sample shapes), in the model's order.
        scales: each output's quantization scale (None for a float output); gives each group's `levels`.
        groups: channel groups named by the task, per output index: [(start, stop, name), ...]. Outputs without
            given groups get those `group_channels` finds, when it finds two or more.
        roles: each output's role in the task ("class scores", ...); "values" by default.
        channel_axes: per output index, the per-sample axis holding its channels when it is not the last one
            (e.g. 0 for a (C, H, W) mask or a transposed (4+C, A) detection head).
    """

    def __init__(self, outputs: Sequence[TensorSpec], scales: Sequence[float | None] | None = None,
                 groups: dict[int, list[GroupSpec]] | None = None, roles: Sequence[str] | None = None,
                 channel_axes: dict[int, int] | None = None) -> None:
        self.specs = tuple(outputs)
        n = len(self.specs)
        self.scales = tuple(scales) if scales is not None else (None,) * n
        self.roles = tuple(roles) if roles is not None else ("values",) * n
        if len(self.scales) != n or len(self.roles) != n:
            raise ValueError(f"{n} outputs but {len(self.scales)} scales and {len(self.roles)} roles")
        self.groups = dict(groups or {})
        self.channel_axes = dict(channel_axes or {})
        self.errors = [ErrorAccumulator() for _ in range(n)]
        # Created at the first batch: a spec may leave the channel count open (dynamic shape).
        self.channels: list[ChannelErrorAccumulator | None] = [None] * n

    def update(self, float_outputs: Sequence[np.ndarray], quant_outputs: Sequence[np.ndarray]) -> None:
        """Fold in one batch: one array per output, samples first, for each model.

        Raises:
            DataError: the number of outputs differs from the model's, or float and quantized shapes differ.
        """
        check_output_count(float_outputs, quant_outputs, len(self.specs))
        for i, (f, q) in enumerate(zip(float_outputs, quant_outputs)):
            f, q = np.asarray(f), np.asarray(q)
            self.errors[i].update(f, q)
            axis = self.channel_axes.get(i, -1)
            axis = axis + 1 if axis >= 0 else f.ndim + axis  # per-sample axis -> batch axis
            if f.ndim >= 2 and 1 <= axis < f.ndim and f.shape[axis] > 1:
                f, q = np.moveaxis(f, axis, -1), np.moveaxis(q, axis, -1)
                if self.channels[i] is None:
                    self.channels[i] = ChannelErrorAccumulator()
                self.channels[i].update(f, q)

    def merge(self, other: OutputsAccumulator) -> OutputsAccumulator:
        """Return a new accumulator holding both streams; `self` and `other` are unchanged."""
        if len(other.specs) != len(self.specs):
            raise ValueError(f"cannot merge accumulators of {len(self.specs)} and {len(other.specs)} outputs")
        merged = OutputsAccumulator(self.specs, self.scales, self.groups, self.roles, self.channel_axes)
        merged.errors = [a.merge(b) for a, b in zip(self.errors, other.errors)]
        merged.channels = [_merge_channels(a, b) for a, b in zip(self.channels, other.channels)]
        return merged

    def channel_errors(self) -> list[ChannelError | None]:
        """Per output, its per-channel sums (None for an output without channels)."""
        return [c.result() if c is not None else None for c in self.channels]

    def result(self) -> tuple[OutputMetrics, ...]:
        metrics = []
        for i, (spec, acc, channels) in enumerate(zip(self.specs, self.errors, self.channel_errors())):
            err = acc.result()
            metrics.append(OutputMetrics(
                index=i, name=spec.name, role=self.roles[i], shape=tuple(spec.shape), sqnr_db=err.sqnr_db,
                relative_error=err.relative_rmse, max_abs_error=err.max_abs_error,
                groups=self._groups(i, channels),
            ))
        return tuple(metrics)

    def _groups(self, index: int, channels: ChannelError | None) -> tuple[ChannelGroup, ...]:
        if channels is None or channels.count == 0:
            return ()
        spans = self.groups.get(index)
        if spans is None:
            found = group_channels(channels.min, channels.max)
            if len(found) < 2:
                return ()
            spans = [(a, b, f"channels [{a}:{b}]") for a, b in found]
        return tuple(channel_group(channels, a, b, name, self.scales[index]) for a, b, name in spans)


def _merge_channels(a: ChannelErrorAccumulator | None,
                    b: ChannelErrorAccumulator | None) -> ChannelErrorAccumulator | None:
    if a is None and b is None:
        return None
    return (a or ChannelErrorAccumulator()).merge(b or ChannelErrorAccumulator())


def channel_group(channels: ChannelError, start: int, stop: int, name: str, scale: float | None) -> ChannelGroup:
    """Measure channels [start, stop) of a `ChannelError` as one `ChannelGroup`."""
    lo = min(channels.min[start:stop], default=math.nan)
    hi = max(channels.max[start:stop], default=math.nan)
    levels = (hi - lo) / scale if scale and scale > 0 and math.isfinite(hi - lo) else None
    return ChannelGroup(name=name, start=start, stop=stop, float_min=lo, float_max=hi,
                        sqnr_db=group_sqnr(channels, start, stop), levels=levels)


def check_output_count(float_outputs: Sequence[np.ndarray], quant_outputs: Sequence[np.ndarray],
                       expected: int) -> None:
    """Refuse batches that do not hold one array per model output for both models.

    Raises:
        DataError: a list has another length.
    """
    if len(float_outputs) != expected or len(quant_outputs) != expected:
        raise DataError(
            f"got {len(float_outputs)} float and {len(quant_outputs)} quantized outputs for a model with "
            f"{expected}; pass every output of the model, in its output order"
        )


def batch_size(outputs: Sequence[np.ndarray]) -> int:
    """The number of samples in a batch of outputs (the first axis of the first output)."""
    first = np.asarray(outputs[0])
    return int(first.shape[0]) if first.ndim else 1
