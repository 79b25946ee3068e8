"""Figures of a `RepairResult` as inline SVG, each next to the function that computes its caption.

Same rules as `plots.py`: matplotlib's object API only, imported inside the functions; glyphs as paths, stable ids, no
comments or DTD in the SVG. The y axis of the trade-off plot is the *drop* in points below the float model, not the
metric itself: the budget is defined on the drop, and the ranking subset and the full set have different float scores
(for top1/topk), so only the drop is comparable across steps.
"""

from __future__ import annotations

import math

from quantdoctor.repair.result import RepairResult, TrajectoryRow
from quantdoctor.report.plots import _RC, _to_svg

LABEL_PX = 14.0
"""Steps drawn closer than this many pixels share one label ("3-15"), so labels never pile up."""
SYMLOG_SPAN = 10.0
"""The drop axis turns symmetric-log when the largest drop is this many times the budget (0 to budget stays linear)."""

MAX_STEP_TICKS = 30
"""The latency plot labels at most this many steps on its x axis."""

_BLUE, _RED, _GREY, _GREEN = "#2b6cb0", "#c53030", "#718096", "#2f855a"


def step_ranges(steps: list[int]) -> str:
    """Step numbers as short text: [2, 3, 4, 7] -> "2-4, 7"."""
    steps = sorted(set(steps))
    parts, start = [], None
    for i, s in enumerate(steps):
        start = s if start is None else start
        if i + 1 == len(steps) or steps[i + 1] != s + 1:
            parts.append(str(s) if s == start else f"{start}-{s}")
            start = None
    return ", ".join(parts)


def fmt_size(n: int) -> str:
    """Bytes in MB above one MB, else kB (a tiny model's 0.036 MB vs 0.037 MB would hide the change)."""
    return f"{n / 1e6:.3f} MB" if n >= 1e6 else f"{n / 1e3:.1f} kB"


def _size_unit(rows: list[TrajectoryRow]) -> tuple[float, str]:
    return (1e6, "MB") if max(row.size_bytes for row in rows) >= 1e6 else (1e3, "kB")


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (lower is better on each), sorted by x."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def _final(r: RepairResult) -> TrajectoryRow:
    return r.trajectory[-1]


def first_within(r: RepairResult) -> TrajectoryRow | None:
    """The first step whose model was within the budget (on the set that step was measured on)."""
    return next((row for row in r.trajectory if row.drop <= r.max_drop + 1e-9), None)


# -- drop against model size and against float ops --------------------------------------------------------------------


def tradeoff_svg(r: RepairResult) -> str:
    """Two panels sharing the y axis: drop (points below float) against model size and against ops left in float.

    Every step is a point labelled with its step number (nearby points share a label), the final model is a red star,
    the budget a dashed line, and the Pareto front of each panel (no step both smaller and better) a grey staircase.
    Hollow points were measured on the ranking subset, filled ones on the full evaluation set.
    """
    from matplotlib import rc_context
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    rows = list(r.trajectory)
    with rc_context(_RC):
        fig = Figure(figsize=(9.0, 3.8))
        axes = fig.subplots(1, 2, sharey=True)
        ys = [row.drop for row in rows]
        scale, unit = _size_unit(rows)
        sizes = [row.size_bytes / scale for row in rows]
        for ax, name, xs, label in (
            (axes[0], "size", sizes, f"model size ({unit})"),
            (axes[1], "ops", [float(row.float_ops) for row in rows], "ops computed in float"),
        ):
            _panel(ax, name, rows, xs, ys, r.max_drop)
            ax.set_xlabel(label)
        counts = sorted({row.float_ops for row in rows})
        if len(counts) <= 8:  # a few whole numbers: tick exactly those, never 13.9
            axes[1].set_xticks(counts)
        else:
            axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[0].set_ylabel("drop below float (points), lower is better")
        _y_axis(axes[0], ys, r.max_drop)
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="upper center", ncol=len(labels), frameon=False, fontsize=8)
        fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.92))  # the legend above the panels: never on the data
        for ax, xs in ((axes[0], sizes), (axes[1], [row.float_ops for row in rows])):
            _labels(ax, rows, xs, ys)
        return _to_svg(fig)


def _panel(ax, name: str, rows: list[TrajectoryRow], xs: list[float], ys: list[float], max_drop: float) -> None:
    """One panel; `name` ("size" or "ops") makes the SVG ids of its parts unique in the page."""
    front = pareto_front(list(zip(xs, ys)))
    if len(front) > 1:
        ax.step([xs[i] for i in front], [ys[i] for i in front], where="post", color=_GREY, alpha=0.6, linewidth=1.0,
                label="Pareto front", gid=f"pareto-front-{name}")
    ax.plot(xs, ys, color=_BLUE, alpha=0.25, linewidth=0.8)  # the path the search took, faint: the points carry it
    sub = [i for i, row in enumerate(rows[:-1]) if not row.full]
    full = [i for i, row in enumerate(rows[:-1]) if row.full]
    if sub:
        ax.plot([xs[i] for i in sub], [ys[i] for i in sub], linestyle="none", marker="o", markersize=5,
                markerfacecolor="white", color=_BLUE, label="step (ranking subset)", gid=f"steps-subset-{name}")
    if full:
        ax.plot([xs[i] for i in full], [ys[i] for i in full], linestyle="none", marker="o", markersize=5,
                color=_BLUE, label="step (full set)", gid=f"steps-full-{name}")
    ax.plot([xs[-1]], [ys[-1]], linestyle="none", marker="*", markersize=13, color=_RED, label="final model",
            gid=f"final-model-{name}")
    ax.axhline(max_drop, color=_RED, linestyle="--", linewidth=1.1, gid=f"budget-line-{name}")
    ax.annotate(f"budget: {max_drop:g} point{'s' if max_drop != 1 else ''}", xy=(1.0, max_drop),
                xycoords=("axes fraction", "data"), xytext=(-2, 3), textcoords="offset points", ha="right",
                va="bottom", color=_RED, fontsize=8)
    ax.grid(alpha=0.3)
    lo, hi = min(xs), max(xs)
    pad = 0.08 * (hi - lo) if hi > lo else max(abs(hi) * 0.02, 0.5)
    ax.set_xlim(lo - pad, hi + pad)


def _y_axis(ax, ys: list[float], max_drop: float) -> None:
    """Linear when the drops are of the budget's size; symmetric-log (linear up to the budget) when one is far above."""
    finite = [y for y in ys if math.isfinite(y)] or [0.0]
    lin = max(max_drop, 0.5)
    top, bottom = max(max(finite), max_drop), min(min(finite), 0.0)
    if top > SYMLOG_SPAN * lin:
        ax.set_yscale("symlog", linthresh=lin, linscale=1.0)
        ax.set_ylim(bottom - 0.1 * lin, top * 1.6)
    else:
        span = top - bottom or 1.0
        ax.set_ylim(bottom - 0.08 * span, top + 0.15 * span)


def _labels(ax, rows: list[TrajectoryRow], xs: list[float], ys: list[float]) -> None:
    """Step numbers next to the points; points chained within LABEL_PX of each other on screen share one label."""
    pix = ax.transData.transform(list(zip(xs, ys)))
    groups: list[list[int]] = []
    for i in range(len(rows)):
        near = [g for g in groups if any(math.dist(pix[j], pix[i]) < LABEL_PX for j in g)]
        merged = [i] + [j for g in near for j in g]
        groups = [g for g in groups if g not in near] + [merged]
    for g in groups:
        left = min(g, key=lambda i: (pix[i][0], -pix[i][1]))
        final = len(rows) - 1 in g
        ax.annotate(step_ranges([rows[i].step for i in g]), xy=(xs[left], ys[left]), xytext=(5, 5),
                    textcoords="offset points", fontsize=8, color=_RED if final else "#1a202c",
                    fontweight="bold" if final else "normal")


def tradeoff_caption(r: RepairResult) -> str:
    """What the trade-off plot shows, in numbers: what the final model costs and when the budget was met."""
    rows = list(r.trajectory)
    base, final = rows[0], _final(r)
    extra = final.float_ops - base.float_ops
    growth = 100.0 * (final.size_bytes - base.size_bytes) / base.size_bytes if base.size_bytes else 0.0
    size = ("the same size as the baseline" if final.size_bytes == base.size_bytes else
            f"{abs(growth):.1f} % {'larger' if growth > 0 else 'smaller'} than the baseline "
            f"({fmt_size(final.size_bytes)} vs {fmt_size(base.size_bytes)})")
    where = "on the full evaluation set" if final.full else "on the ranking subset"
    if r.budget_met:
        outcome = (f"meets the {r.max_drop:g}-point budget at step {final.step} "
                   f"(drop {final.drop:.2f} points {where})")
    else:
        best = min(rows, key=lambda row: row.drop)
        outcome = (f"does NOT meet the {r.max_drop:g}-point budget (drop {final.drop:.2f} points {where}; the lowest "
                   f"drop on the way was {best.drop:.2f} points at step {best.step})")
    ops = (f"keeps {extra} extra op{'s' if extra != 1 else ''} in float" if extra >= 0 else
           f"computes {-extra} op{'s' if extra != -1 else ''} fewer in float")
    text = (f"The final model (step {final.step}) {ops} ({final.float_ops} in all, baseline {base.float_ops}), is "
            f"{size} and {outcome}; the baseline's drop was {base.drop:.2f} points.")
    first = first_within(r)
    if first is not None and first is not final:
        text += f" The search first came within the budget at step {first.step}."
    fronts = [len(pareto_front([(row.size_bytes, row.drop) for row in rows])),
              len(pareto_front([(row.float_ops, row.drop) for row in rows]))]
    text += (f" {fronts[0]} of the {len(rows)} steps are on the Pareto front of drop against size, {fronts[1]} on that "
             "of drop against float ops.")
    if any(not row.full for row in rows):
        text += " Hollow points were measured on the ranking subset only" + (
            ", filled ones on the full evaluation set." if any(row.full for row in rows[:-1]) else ".")
    return text


# -- measured latency per step ----------------------------------------------------------------------------------------


def latency_svg(r: RepairResult) -> str:
    """Measured wall time per sample of each step's model as bars; the final model's bar red, the baseline's a line."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    rows = list(r.trajectory)
    with rc_context(_RC):
        fig = Figure(figsize=(9.0, 2.8))
        ax = fig.add_subplot()
        steps = list(range(len(rows)))
        colors = [_RED if i == len(rows) - 1 else _GREY if i == 0 else _BLUE for i in steps]
        ax.bar(steps, [row.latency_ms for row in rows], color=colors, width=0.7, gid="latency-bars")
        ax.axhline(rows[0].latency_ms, color=_GREY, linestyle="--", linewidth=1.0, gid="latency-baseline")
        every = max(1, math.ceil(len(rows) / MAX_STEP_TICKS))
        ax.set_xticks(steps[::every], [str(row.step) for row in rows][::every])
        ax.set_xlabel("step (grey: baseline, red: final model)")
        ax.set_ylabel("ms per sample")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        return _to_svg(fig)


def latency_caption(r: RepairResult) -> str:
    rows = list(r.trajectory)
    base, final = rows[0], _final(r)
    lat = [row.latency_ms for row in rows]
    change = 100.0 * (final.latency_ms - base.latency_ms) / base.latency_ms if base.latency_ms else math.nan
    slow, fast = max(rows, key=lambda row: row.latency_ms), min(rows, key=lambda row: row.latency_ms)
    return (f"Wall time per sample of each step's model (LiteRT builtin kernels, one timed pass per step): baseline "
            f"{base.latency_ms:.1f} ms, final model {final.latency_ms:.1f} ms ({change:+.0f} %). Across the steps it "
            f"ranges from {min(lat):.1f} ms (step {fast.step}) to {max(lat):.1f} ms (step {slow.step}). Each bar is "
            "a single timed pass, so it carries the machine's timing noise: compare bars only where they differ by "
            "much more than steps whose models barely differ.")
