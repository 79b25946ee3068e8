"""Does the quantized model come from the float model it is compared with?

A `--quantized` file converted from another float model with the same input and output shapes runs, pairs some tensors
by name, and would be reported as a model that "disagrees with float" — a silent wrong answer. The weights tell: a
quantized weight of the right model lies within one quantization step of its float counterpart almost everywhere
(rounding moves it half a step, a different BatchNorm folding a little more), while another model's weights do not.

An op is *consistent* when at least `CONSISTENT_SHARE` of its weight elements satisfy

    |dequantize(q) − w_float| ≤ step + FLOAT_TOLERANCE · max|w_float|

with `step` the element's quantization scale (0 for weights kept in float or float16, where only the relative tolerance
applies). The pair is refused when weighted ops exist on both sides but none pair, or when fewer than
`MIN_CONSISTENT_OPS` of the checked ops are consistent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from quantdoctor.backends.base import Runner
from quantdoctor.diagnose.weights import pair_weighted_ops, read_weights
from quantdoctor.stats.weights import dequantize

CONSISTENT_SHARE = 0.9
FLOAT_TOLERANCE = 1e-2  # float16 storage rounds to ~5e-4 relative; a re-folded BatchNorm moves weights ~1e-6
MIN_CONSISTENT_OPS = 0.5


@dataclass(frozen=True)
class Provenance:
    """How well the quantized model's weights fit the float model's.

    Attributes:
        float_weighted / quant_weighted: weighted ops (conv, depthwise, dense, ...) in each model.
        paired: quantized weighted ops paired with a float op of the same type and weight shape.
        checked: paired ops whose weights could be compared element by element.
        consistent: checked ops whose weights lie within a quantization step of the float ones.
        worst: label of the checked op with the smallest share of elements within a step, and that share.
    """

    float_weighted: int
    quant_weighted: int
    paired: int
    checked: int
    consistent: int
    worst: tuple[str, float] | None = None

    @property
    def mismatch(self) -> bool:
        """True when the weights say the quantized model was made from another float model."""
        if self.float_weighted and self.quant_weighted and not self.paired:
            return True
        return self.checked > 0 and self.consistent < MIN_CONSISTENT_OPS * self.checked

    def reason(self) -> str:
        """Why the pair was refused, in a clause."""
        if not self.paired:
            return (f"none of its {self.quant_weighted} weighted ops pairs with one of the float model's "
                    f"{self.float_weighted} (same op type and weight shape)")
        return (f"the weights of only {self.consistent} of {self.checked} paired ops lie within one quantization step "
                "of the float model's")

    def to_dict(self) -> dict:
        return {
            "float_weighted": self.float_weighted, "quant_weighted": self.quant_weighted, "paired": self.paired,
            "checked": self.checked, "consistent": self.consistent,
            "worst_op": None if self.worst is None else self.worst[0],
            "worst_share_within_step": None if self.worst is None else self.worst[1],
        }


def check_provenance(float_runner: Runner, quant_runner: Runner) -> Provenance:
    """Compare every paired weighted op's quantized weights with the float ones (see the module docstring)."""
    fg, qg = float_runner.graph, quant_runner.graph
    f_count = sum(1 for op in fg.ops if fg.is_weighted(op))
    q_ops = [op for op in qg.ops if qg.is_weighted(op)]
    pairs = pair_weighted_ops(fg, qg)
    checked = consistent = 0
    worst: tuple[str, float] | None = None
    for op in q_ops:
        if op.index not in pairs:
            continue
        share = _share_within_step(float_runner, fg, pairs[op.index][0], quant_runner, qg, op)
        if share is None:
            continue
        checked += 1
        consistent += share >= CONSISTENT_SHARE
        if worst is None or share < worst[1]:
            worst = (qg.tensors[op.outputs[0]].name if op.outputs else op.type, share)
    return Provenance(f_count, len(q_ops), len(pairs), checked, consistent, worst)


def require_provenance(float_runner: Runner, quant_runner: Runner, quantized: object, force: bool = False) -> Provenance:
    """`check_provenance`, refusing the pair unless `force` when the weights say it was made from another float model.

    Raises:
        ModelLoadError: a mismatch without `force` (the message names the `quantized` file and the way out).
    """
    from quantdoctor.errors import ModelLoadError

    provenance = check_provenance(float_runner, quant_runner)
    if provenance.mismatch and not force:
        raise ModelLoadError(
            f"the quantized model {quantized} does not come from this float model: {provenance.reason()}; "
            "give the quantized version of this model (or --force to diagnose it anyway)"
        )
    return provenance


def _share_within_step(float_runner, fg, f_op, quant_runner, qg, q_op) -> float | None:
    """Share of the op's weight elements within a step of the float weights; None when they cannot be compared."""
    try:
        f_read = read_weights(float_runner.constant, fg, f_op)
        q_read = read_weights(quant_runner.constant, qg, q_op)
    except Exception:  # noqa: BLE001 - a weight we cannot read is not evidence either way
        return None
    if f_read is None or q_read is None or f_read.actual.shape != q_read.actual.shape or not f_read.actual.size:
        return None
    w = f_read.actual
    step = 0.0
    t = q_read.tensor
    if q_read.stored is not None and t.quant is not None:
        step = dequantize(np.ones(w.shape), np.array(t.quant.scales), q_read.axis)
    tolerance = step + FLOAT_TOLERANCE * float(np.max(np.abs(w)))
    return float(np.mean(np.abs(q_read.actual - w) <= tolerance))


def mismatch_finding(provenance: Provenance):
    """The critical finding a forced run of a mismatched pair leads with (no op of the model is to blame)."""
    from quantdoctor.diagnose.results import Finding, Severity

    return Finding(
        mechanism="foreign_quantized_model",
        severity=Severity.CRITICAL,
        positions=(),
        layers=(),
        op_types=(),
        evidence={**provenance.to_dict(), "reason": provenance.reason()},
        fix="quantize this float model (--scheme) or give the quantized file made from it; every other number in "
            "this report compares two different models",
        score=float("nan"),
        role="cause",
    )
