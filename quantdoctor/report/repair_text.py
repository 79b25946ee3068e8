"""The terminal view of a `RepairResult`: outcome, changes, what the backend could not express, the trajectory."""

from __future__ import annotations

CHANGE_WIDTH = 58


def render_text(result) -> str:
    """The repair summary as plain text."""
    lines = [result.message, ""]
    if result.actions:
        lines.append(f"changes ({result.changed_ops} ops):")
        lines += [f"  - {a.describe()}" for a in result.actions]
    else:
        lines.append("changes: none")
    if result.skipped:
        lines.append("not expressible with this backend:")
        lines += [f"  - {s}" for s in result.skipped]
    lines.append("")
    header = (f"{'step':>4}  {'change':<{CHANGE_WIDTH}} {result.metric:>9} {'drop':>7} {'size MB':>8} {'float ops':>9} "
              f"{'ms/sample':>9} {'evals':>5}")
    lines += [header, "-" * len(header)]
    for r in result.trajectory:
        change = r.change if len(r.change) <= CHANGE_WIDTH else r.change[:CHANGE_WIDTH - 3] + "..."
        lines.append(
            f"{r.step:>4}  {change:<{CHANGE_WIDTH}} {r.metric:>9.4f} {r.drop:>7.2f} {r.size_bytes / 1e6:>8.3f} "
            f"{r.float_ops:>9d} {r.latency_ms:>9.2f} {r.evaluations:>5d}" + ("  (full set)" if r.full else "")
        )
    lines.append(f"\n{result.evaluations} quantized evaluations (+{result.splice_evaluations} spliced counterfactual "
                 f"passes in the diagnoses), {result.seconds:.1f} s")
    return "\n".join(lines)
