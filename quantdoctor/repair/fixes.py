"""The fix a finding suggests, built with the real quantizer and measured at the output: the third counterfactual.

`diagnose` proves a cause by making its ops exact (spliced float twins, no rebuild). This step goes one further for the
top findings: it takes the repair action the finding proposes (`repair/candidates.py`: keep the ops in float,
per-channel weights, the kernel workaround, a calibration range, ...), builds that model with the converter or
quantizer that made the original, and evaluates it on the same first samples — what a user would deploy.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from quantdoctor.diagnose.verification import FixCheck, Outcome, recovery

NOT_FIXABLE = ("accumulated_drift", "float_ops")  # no single action fixes them


def verify_fixes(diagnosis: Any, model: Any, data: Any, *, scheme: str | None = None, quantized: Any = None,
                 samples: int = 256, max_findings: int = 3, batch_size: int = 16, top_k: int = 3,
                 **data_options: Any) -> Any:
    """`diagnosis` with a `FixCheck` on each of its first `max_findings` findings whose fix the builder can express.

    Args:
        diagnosis: the diagnosis of `model` (its findings choose the fixes).
        model, data, scheme, quantized, data_options: as given to `diagnose` (the same calibration split is made).
        samples: the first evaluated samples each fix is measured on.

    Raises:
        UserInputError: as `quantdoctor.repair` (a PyTorch program, a scheme of another runtime, ...).
    """
    from quantdoctor.repair.api import prepare
    from quantdoctor.repair.candidates import rank_candidates
    from quantdoctor.repair.evaluate import Evaluator

    p = prepare(model, data, scheme, quantized, **data_options)
    subset = p.eval_ds if len(p.eval_ds) <= samples else p.eval_ds.subset(np.arange(samples))
    task = diagnosis.task.task if diagnosis.task is not None else "classify"
    metric = diagnosis.task.headline if diagnosis.task is not None else "agreement"
    evaluator = Evaluator(p.builder.float_model, subset, metric, batch_size=batch_size, top_k=top_k,
                          rank_size=len(subset), runtime=p.runtime, task=task)
    before = evaluator.evaluate(p.given if p.given is not None else p.builder.build([]), full=True).value
    names = {name for _, name in p.builder.ops}
    ranked = rank_candidates(diagnosis, p.scheme, names)
    findings = list(diagnosis.findings)
    for i, f in enumerate(findings[:max_findings]):
        if f.mechanism in NOT_FIXABLE or not f.positions or f.role == "context":
            continue  # a symptom shown with its cause is not what to fix
        if not f.verified and getattr(f.severity, "value", f.severity) == "info":
            continue
        cand = next((c for c in ranked if c.reason.startswith(f"finding {f.mechanism}")
                     and _targets(c.action, diagnosis, f, names) and p.builder.unsupported(c.action) is None), None)
        if cand is None:
            continue
        ev = evaluator.evaluate(p.builder.build([cand.action]), full=True)
        m = ev.metrics
        if m is not None:
            outcome = Outcome("fix_applied", tuple(f.positions), m.top1_agreement, m.topk_agreement,
                              m.quant_top1 if m.num_labelled else None, m.logit_sqnr_db, recovery(before, ev.value))
        else:  # another task: its headline stands where a classifier's agreement would
            sqnr = min((o.sqnr_db for o in ev.task.outputs), default=float("nan"))
            outcome = Outcome("fix_applied", tuple(f.positions), ev.value, ev.value, None, sqnr,
                              recovery(before, ev.value), metric=metric)
        findings[i] = replace(f, fix_check=FixCheck(cand.action.describe(), before, outcome, len(subset)))
    return replace(diagnosis, findings=tuple(findings))


def _targets(action: Any, diagnosis: Any, finding: Any, names: set[str]) -> bool:
    """Whether `action` changes the finding's ops (an op-type action counts when the finding's ops are of that type)."""
    ops = set()
    for pos in finding.positions:
        layer = diagnosis.layer_at(pos)
        if layer is not None:
            ops.add(layer.float_tensor if layer.float_tensor in names else layer.quant_tensor)
    targets = set(action.targets())
    if not targets:
        return getattr(action, "op_type", None) in set(finding.op_types)
    return targets <= ops
