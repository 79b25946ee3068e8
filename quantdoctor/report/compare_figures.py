"""Figures of a `Comparison` as inline SVG, each next to the function that computes its caption.

Same rules as `plots.py`: matplotlib's object API only, imported inside the functions; glyphs as paths, stable ids, no
comments or DTD in the SVG. A is always blue and B orange, in both figures and in the page's table.
"""

from __future__ import annotations

import math

import numpy as np

from quantdoctor.diagnose.compare import PART_DB, Comparison, LayerPair
from quantdoctor.report.plots import _RC, _plain, _to_svg, _y_range
from quantdoctor.report.sentences import fmt_db, fmt_num

MAX_TICKS = 24
"""Above this many aligned layers only every n-th one (and the parting layer) gets a labelled x tick."""

_A, _B, _PART, _GREY = "#2b6cb0", "#dd6b20", "#c53030", "#718096"


def ordered_layers(c: Comparison) -> list[LayerPair]:
    """The aligned layers in A's order; layers that are not measured on either side (NaN) are left out."""
    pairs = sorted(c.layers, key=lambda p: (p.position_a, p.position_b))
    return [p for p in pairs if not (math.isnan(p.sqnr_a_db) and math.isnan(p.sqnr_b_db))]


# -- accumulated SQNR per aligned layer, A and B --------------------------------------------------------------------


def sqnr_svg(c: Comparison) -> str:
    """Accumulated SQNR of A and of B at every aligned layer (x: the layer's rank in A's order), the parting layer
    marked with a red line. Infinite SQNR (an exact tensor) is drawn at the top with a triangle."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    pairs = ordered_layers(c)
    with rc_context(_RC):
        fig = Figure(figsize=(9.0, 3.6))
        ax = fig.add_subplot()
        if not pairs:
            ax.text(0.5, 0.5, "no aligned layer to plot", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            return _to_svg(fig)
        xs = list(range(len(pairs)))
        ya = [p.sqnr_a_db for p in pairs]
        yb = [p.sqnr_b_db for p in pairs]
        bottom, top = _y_range(ya + yb)
        for ys, colour, side, name in ((ya, _A, "A", c.name_a), (yb, _B, "B", c.name_b)):
            clipped = [min(max(y, bottom), top) if not math.isnan(y) else math.nan for y in ys]
            ax.plot(xs, clipped, color=colour, marker="o", markersize=3.5, linewidth=1.4,
                    label=f"{side}: {_plain(_short(name))}")
            exact = [(x, top) for x, y in zip(xs, ys) if y == math.inf]
            if exact:
                ax.plot(*zip(*exact), linestyle="none", marker="^", markersize=7, color=colour)
        ticks = _tick_indices(pairs, c.parting)
        if c.parting is not None and c.parting in pairs:
            i = pairs.index(c.parting)
            ax.axvline(i, color=_PART, linestyle="--", linewidth=1.2,
                       label=f"they part (≥ {PART_DB:g} dB): {_plain(c.parting.label_a)}")
        ax.set_ylim(bottom, top)
        ax.set_xticks(ticks, [_plain(pairs[i].label_a) for i in ticks], rotation=30, ha="right")
        ax.set_xlabel("aligned layer, in A's order (triangles: exact, inf dB)")
        ax.set_ylabel("accumulated SQNR (dB)")
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, frameon=False, fontsize=8)
        fig.tight_layout()
        return _to_svg(fig)


def _tick_indices(pairs: list[LayerPair], parting: LayerPair | None) -> list[int]:
    step = max(1, math.ceil(len(pairs) / MAX_TICKS))
    ticks = set(range(0, len(pairs), step)) | {len(pairs) - 1}
    if parting is not None and parting in pairs:
        ticks.add(pairs.index(parting))
    return sorted(ticks)


def sqnr_caption(c: Comparison) -> str:
    """Where the two curves end, where they part (or that they never do), from the aligned layers' numbers."""
    pairs = ordered_layers(c)
    if not pairs:
        return "No aligned layer has an SQNR on either side."
    head = pairs[-1]
    text = (
        f"Accumulated SQNR at {len(pairs)} aligned layers. At the last one ({head.label_a}) A has "
        f"{fmt_db(head.sqnr_a_db)} dB and B {fmt_db(head.sqnr_b_db)} dB (B − A {_signed_db(head.delta_db)} dB). "
    )
    p = c.parting
    if p is not None:
        worse = "B" if p.delta_db < 0 else "A"
        text += (
            f"They part at {p.label_a} ({p.op_type}, red line): {worse} is {fmt_db(abs(p.delta_db))} dB lower there "
            f"(A {fmt_db(p.sqnr_a_db)} dB, B {fmt_db(p.sqnr_b_db)} dB; threshold {fmt_db(PART_DB)} dB)."
        )
    else:
        finite = [q for q in pairs if math.isfinite(q.delta_db)]
        if finite:
            most = max(finite, key=lambda q: abs(q.delta_db))
            text += (
                f"The worse side is never {fmt_db(PART_DB)} dB below the other; the largest difference is "
                f"{_signed_db(most.delta_db)} dB (B − A) at {most.label_a}."
            )
        else:
            text += f"The worse side is never {fmt_db(PART_DB)} dB below the other."
    return text


def _signed_db(v: float) -> str:
    return "nan" if math.isnan(v) else f"{v:+.1f}"


def _short(name: str, limit: int = 40) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


# -- top-1 margins of both models against each one's noise ----------------------------------------------------------


def has_margins(m) -> bool:
    return m is not None and bool(m.num_samples) and sum(m.top1_counts) > 0


def _shares(m) -> tuple[np.ndarray, np.ndarray]:
    """Edges without the [0, 1e-6) bucket (no place on a log axis; folded into the first non-empty bucket) and the
    share of samples per bucket (the two models may have different sample counts)."""
    edges = np.asarray(m.bin_edges, dtype=np.float64)
    counts = np.asarray(m.top1_counts, dtype=np.float64)
    zero = counts[0]
    edges, counts = edges[1:], counts[1:].copy()
    nz = np.flatnonzero(counts)
    counts[int(nz[0]) if nz.size else 0] += zero
    return edges, counts / counts.sum()


def margins_svg(c: Comparison) -> str:
    """Both models' float top-1 − top-2 margin histograms (share of samples, log x), each one's noise std on that
    difference as a dashed line of its colour."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    sides = [(s, m, col) for s, m, col in (("A", c.margins_a, _A), ("B", c.margins_b, _B)) if has_margins(m)]
    with rc_context(_RC):
        fig = Figure(figsize=(9.0, 3.2))
        ax = fig.add_subplot()
        if not sides:
            ax.text(0.5, 0.5, "no output margins measured", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            return _to_svg(fig)
        left, right = math.inf, 0.0
        for side, m, colour in sides:
            edges, shares = _shares(m)
            nz = np.flatnonzero(shares)
            lo, hi = int(nz[0]), int(nz[-1])
            sel = slice(lo, hi + 1)
            ax.bar(edges[:-1][sel], shares[sel], width=np.diff(edges)[sel], align="edge", color=colour, alpha=0.45,
                   label=f"{side}: {m.num_classes} classes")
            left, right = min(left, edges[lo]), max(right, edges[hi + 1])
            sigma = m.pair_noise_std
            if math.isfinite(sigma) and sigma > 0:
                ax.axvline(sigma, color=colour, linestyle="--", linewidth=1.4,
                           label=f"{side} noise σ = {fmt_num(sigma)}")
                left, right = min(left, sigma / 2), max(right, sigma * 2)
        ax.set_xscale("log")
        ax.set_xlim(left / 1.3, right * 1.3)  # a bar or σ line at the very edge would merge with the frame
        ax.set_xlabel("top-1 − top-2 logit margin of the float model (log scale)")
        ax.set_ylabel("share of samples")
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=4, frameon=False, fontsize=8)
        fig.tight_layout()
        return _to_svg(fig)


def margins_caption(c: Comparison) -> str:
    """Each side's margins against its own noise, and the flip rates the margin model predicts and were observed."""
    parts = []
    for side, m in (("A", c.margins_a), ("B", c.margins_b)):
        if not has_margins(m):
            parts.append(f"{side}: no output margins measured.")
            continue
        parts.append(
            f"{side}: {m.num_samples - m.num_nonfinite} samples over {m.num_classes} classes, median margin "
            f"{fmt_num(m.top1_margin_median)} against noise σ = {fmt_num(m.pair_noise_std)}; "
            f"{_pct(m.share_below_noise)} of margins are below σ, the margin model predicts "
            f"{_pct(m.predicted_flip_rate)} flips and {_pct(m.observed_flip_rate)} were observed."
        )
    return " ".join(parts)


def _pct(v: float | None) -> str:
    return "n/a" if v is None or math.isnan(v) else f"{100.0 * v:.1f}%"
