"""The explain figures of a `Diagnosis` as inline SVG, each next to the function that computes its caption.

Same rules as `plots.py`: matplotlib's object API only, imported inside the functions; glyphs as paths, stable ids, no
comments or DTD in the SVG. `report_figures` picks which figures a diagnosis has data for; `html.py` only lays them out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from quantdoctor.diagnose.results import Diagnosis, LayerResult
from quantdoctor.report.plots import _RC, _plain, _to_svg
from quantdoctor.report.sentences import fmt_db, fmt_num

SUSPECT_FINDINGS = 3
"""Grid histograms are drawn for the layers of this many top-ranked findings..."""
MAX_SUSPECTS = 4
"""...and at most this many of them (one per finding first)."""
MAX_WEIGHT_FIGURES = 3
FEW_STEPS = 8
"""Weight channels whose max|w| is at most this many per-tensor steps keep ≤ 2·8 + 1 = 17 of the 255 levels."""
VALUE_SHARE = 0.95
"""The grid caption counts the fewest levels that hold this share of all values."""

_BLUE, _ORANGE, _RED, _GREY = "#2b6cb0", "#dd6b20", "#c53030", "#718096"


@dataclass(frozen=True)
class Figure:
    """One figure of the report: an anchor id, a title, the inline SVG and its computed caption."""

    id: str
    title: str
    svg: str
    caption: str


def report_figures(d: Diagnosis) -> list[Figure]:
    """The explain figures this diagnosis has data for, in reading order (error by depth is `plots.py`'s)."""
    out = []
    if any(l.output_error_share is not None or l.isolated is not None for l in d.layers):
        title = "Per-layer SQNR and share of the output error"
        out.append(Figure("layer-sqnr", title, layer_sqnr_svg(d), layer_sqnr_caption(d)))
    for l in suspect_layers(d):
        title = f"Activation on its quantization grid: {l.label}"
        out.append(Figure(f"grid-{l.position}", title, grid_svg(l), grid_caption(l)))
    for l in weight_layers(d):
        title = f"Weight ranges per output channel: {l.label}"
        out.append(Figure(f"weights-{l.position}", title, weights_svg(l), weights_caption(l)))
    m = d.margins
    if m is not None and m.num_samples and sum(m.top1_counts):
        title = "Output margins against the quantization noise"
        out.append(Figure("margins", title, margins_svg(d), margins_caption(d)))
    return out


# -- per-layer SQNR coloured by share of the output error -----------------------------------------------------------


def _own_sqnr(d: Diagnosis) -> tuple[list[LayerResult], str]:
    """The layers to plot and which SQNR: the op's own (isolated) where measured, else the accumulated one."""
    layers = sorted(d.layers, key=lambda l: l.position)
    if any(l.isolated is not None for l in layers):
        return [l for l in layers if l.isolated is not None and not math.isnan(l.isolated.sqnr_db)], "isolated"
    return [l for l in layers if not math.isnan(l.accumulated.sqnr_db)], "accumulated"


def _sqnr(l: LayerResult, kind: str) -> float:
    return (l.isolated if kind == "isolated" else l.accumulated).sqnr_db


def _share(l: LayerResult) -> float:
    s = l.output_error_share
    return 0.0 if s is None or math.isnan(s) else s


def layer_sqnr_svg(d: Diagnosis) -> str:
    """One bar per op: its own SQNR (isolated; accumulated if not measured), coloured by its share of the output error.

    Infinite SQNR (an op that is exact alone) is drawn at the top with a triangle.
    """
    from matplotlib import colormaps, rc_context
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure as MplFigure

    layers, kind = _own_sqnr(d)
    with rc_context(_RC):
        fig = MplFigure(figsize=(9.0, 3.4))
        ax = fig.add_subplot()
        if not layers:
            return _empty(fig, ax, "no op SQNR to plot")
        ys = [_sqnr(l, kind) for l in layers]
        finite = [y for y in ys if math.isfinite(y)] or [0.0]
        bottom, top = min(0.0, min(finite) - 2.0), max(max(finite) * 1.1, 10.0)
        shares = [_share(l) for l in layers]
        norm = Normalize(0.0, max(max(shares), 1e-9))
        cmap = colormaps["YlOrRd"]
        xs = [l.position for l in layers]
        clipped = [min(max(y, bottom), top) for y in ys]
        ax.bar(xs, clipped, width=0.8, color=[cmap(0.15 + 0.85 * norm(s)) for s in shares], edgecolor="#4a5568",
               linewidth=0.3)
        exact = [(x, top) for x, y in zip(xs, ys) if y == math.inf]
        if exact:
            ax.plot(*zip(*exact), linestyle="none", marker="^", color=_GREY, markersize=6, label="exact alone (inf dB)")
            ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), frameon=False, fontsize=8)
        ax.set_ylim(bottom, top)
        ax.set_ylabel(f"{kind} SQNR (dB)")
        top_share = sorted(layers, key=lambda l: -_share(l))[:5]
        ax.set_xticks(xs, minor=True)
        ticks = sorted((l for l in top_share if _share(l) > 0), key=lambda l: l.position)
        ax.set_xticks([l.position for l in ticks], [_plain(l.label) for l in ticks], rotation=30, ha="right")
        ax.set_xlabel("position in the quantized graph (labelled: the ops with the largest share of the output error)")
        ax.grid(axis="y", alpha=0.3)
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=ax, pad=0.01, fraction=0.04)
        bar.set_label("share of the output error")
        fig.tight_layout()
        return _to_svg(fig)


def layer_sqnr_caption(d: Diagnosis) -> str:
    layers, kind = _own_sqnr(d)
    if not layers:
        return "No op has an SQNR to plot."
    low = min(layers, key=lambda l: (_sqnr(l, kind), l.position))
    what = "Each op alone on the float model's input" if kind == "isolated" else "Accumulated SQNR per op"
    text = f"{what}: lowest {fmt_db(_sqnr(low, kind))} dB at {low.label}"
    ranked = sorted((l for l in d.layers if _share(l) > 0), key=lambda l: -_share(l))
    if ranked:
        lead = ", ".join(f"{l.label} {_pct(_share(l))}" for l in ranked[:3])
        total, n = 0.0, 0
        for l in ranked:
            total, n = total + _share(l), n + 1
            if total >= 0.9:
                break
        verb = "makes" if n == 1 else "make"
        text += f". The output's error builds up mostly at {lead}; {n} of {len(d.layers)} ops {verb} up {_pct(total)}"
        text += " of it"
    return text + "."


# -- one activation on its quantization grid ------------------------------------------------------------------------


def suspect_layers(
    d: Diagnosis, findings: int = SUSPECT_FINDINGS, limit: int = MAX_SUSPECTS
) -> list[LayerResult]:
    """Layers of the top findings whose grid coverage was measured: each finding's first such layer, then the rest."""
    by_pos = {l.position: l for l in d.layers}
    groups = [[by_pos[p] for p in f.positions if p in by_pos and _has_grid(by_pos[p])] for f in d.findings[:findings]]
    picked: list[LayerResult] = []
    for rank in range(max((len(g) for g in groups), default=0)):
        for g in groups:
            if rank < len(g) and g[rank] not in picked and len(picked) < limit:
                picked.append(g[rank])
    return picked


def _has_grid(l: LayerResult) -> bool:
    return l.grid is not None and bool(l.grid.num_samples) and sum(l.grid.occupancy) > 0


def _grid_axis(l: LayerResult) -> tuple[np.ndarray, float, str]:
    """Float value of each occupancy bin's middle (static grids), or the level itself (dynamic: every sample has its
    own scale); the bin's width in those units; the axis label."""
    g = l.grid
    levels = g.bin_centers()
    q = l.quant
    if l.grid_mode == "static" and q is not None and q.scales:
        scale, zp = q.scales[0], q.zero_points[0] if q.zero_points else 0
        what = "each vertical line is one level of the grid"
        if g.bin_width > 1:
            what = f"each bar sums {g.bin_width} levels"
        return scale * (levels - zp), scale * g.bin_width, f"activation value ({what})"
    return levels.astype(float), float(g.bin_width), "int8 level (each sample is quantized with its own scale)"


def _levels_holding(counts: np.ndarray, share: float) -> int:
    """The fewest levels that together hold `share` of the values."""
    c = np.sort(counts[counts > 0])[::-1]
    if not c.size:
        return 0
    return int(np.searchsorted(np.cumsum(c), share * c.sum() - 1e-9) + 1)


def grid_svg(l: LayerResult) -> str:
    """Share of values on each level: all samples (bars) and the first sample (line), grid levels as vertical lines.

    Zoomed to the levels that hold all but 0.05 % of the values (and all of the sample's), so the lines stay apart.
    On a binned (16-bit) grid each bar is one bin of `bin_width` levels and there are no level lines: at most
    `MAX_BINS` bars, so the figure's size does not depend on the grid.
    """
    from matplotlib import rc_context
    from matplotlib.figure import Figure as MplFigure

    g = l.grid
    whole = np.asarray(g.occupancy, dtype=np.float64)
    one = np.asarray(g.first_sample_occupancy or np.zeros_like(whole), dtype=np.float64)
    x, step, xlabel = _grid_axis(l)
    lo, hi = _zoom(whole, one)
    with rc_context(_RC):
        fig = MplFigure(figsize=(9.0, 3.2))
        ax = fig.add_subplot()
        sel = slice(lo, hi + 1)
        if g.bin_width == 1:
            ax.vlines(x[sel], 0, 1, transform=ax.get_xaxis_transform(), colors=_GREY, alpha=0.35,
                      linewidth=0.6 if hi - lo < 80 else 0.3)
        ax.bar(x[sel], whole[sel] / whole.sum(), width=0.8 * step, color=_BLUE, alpha=0.55, label="all values")
        peak = max(whole[sel].max() / whole.sum(), one[sel].max() / one.sum() if one.sum() else 0)
        # a spike (e.g. the zeros of a ReLU) would flatten the rest on a linear axis
        log = peak > 20 * float(np.median(whole[whole > 0] / whole.sum()))
        if one.sum():
            share = one[sel] / one.sum()
            if log:  # empty levels would plunge to -inf: leave gaps instead
                share = np.where(share > 0, share, np.nan)
            ax.step(x[sel], share, where="mid", color=_ORANGE, linewidth=1.4, label="one sample")
        if log:
            ax.set_yscale("log")
        ax.set_xlim(x[lo] - step, x[hi] + step)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("share of values per level" if g.bin_width == 1 else f"share per {g.bin_width} levels")
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False, fontsize=8)
        fig.tight_layout()
        return _to_svg(fig)


def _zoom(whole: np.ndarray, one: np.ndarray, tail: float = 5e-4) -> tuple[int, int]:
    cum = np.cumsum(whole) / whole.sum()
    lo = int(np.searchsorted(cum, tail / 2, side="right"))
    hi = int(np.searchsorted(cum, 1 - tail / 2, side="left"))
    seen = np.flatnonzero(one)
    if seen.size:
        lo, hi = min(lo, int(seen[0])), max(hi, int(seen[-1]))
    return max(lo - 1, 0), min(hi + 1, len(whole) - 1)


def grid_caption(l: LayerResult) -> str:
    g = l.grid
    whole = np.asarray(g.occupancy)
    one = np.asarray(g.first_sample_occupancy or ())
    held = _levels_holding(whole, VALUE_SHARE)
    text = ""
    if one.size and one.sum():
        text = f"One sample occupies {g.first_sample_levels} of {g.grid_size} levels; "
    where = f"on {held} level{'s' if held != 1 else ''}"
    if g.bin_width > 1:  # the report keeps bins of a 16-bit grid, not its levels
        where = f"in {held} bin{'s' if held != 1 else ''} of {g.bin_width} levels"
    text += (
        f"{VALUE_SHARE * 100:.0f}% of all values sit {where}. Over "
        f"{g.num_samples} samples, a sample occupies a median of {fmt_num(g.median_levels)} levels "
        f"(5th percentile {fmt_num(g.p5_levels)})"
    )
    if l.grid_mode == "static" and l.quant is not None:
        text += f"; grid step {fmt_num(l.quant.scales[0])}, zero point {l.quant.zero_points[0]}"
    elif l.grid_mode == "dynamic":
        text += "; the hybrid kernel quantizes each sample's values on the fly with its own int8 scale"
    return text + "."


# -- weight ranges per output channel --------------------------------------------------------------------------------


def weight_layers(d: Diagnosis, limit: int = MAX_WEIGHT_FIGURES) -> list[LayerResult]:
    """Layers of weight-range and kernel-defect findings whose per-channel weight ranges are known (worst first)."""
    by_pos = {l.position: l for l in d.layers}
    picked: list[LayerResult] = []
    for f in d.findings:
        if f.mechanism not in ("weight_range_disparity", "kernel_defect"):
            continue
        worst = f.evidence.get("worst_layer")
        order = sorted(f.positions, key=lambda p: by_pos[p].label != worst if p in by_pos else True)
        for p in order:
            l = by_pos.get(p)
            if l is not None and l.weight_report is not None and l.weight_report.channel_max_abs and l not in picked:
                picked.append(l)
    return picked[:limit]


def _steps(l: LayerResult) -> tuple[np.ndarray, float, bool]:
    """Channel ranges, the per-tensor step (the stored one, else the one per-tensor int8 would use), whether stored."""
    r = l.weight_report
    cm = np.asarray(r.channel_max_abs, dtype=np.float64)
    stored = not math.isnan(r.step)
    return cm, (r.step if stored else float(cm.max()) / 127.0), stored


def weights_svg(l: LayerResult) -> str:
    """max|w| per output channel, widest first (log scale), with one per-tensor step and `FEW_STEPS` steps marked."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure as MplFigure

    cm, step, stored = _steps(l)
    order = np.sort(cm)[::-1]
    with rc_context(_RC):
        fig = MplFigure(figsize=(9.0, 3.0))
        ax = fig.add_subplot()
        colors = [_RED if v <= FEW_STEPS * step else _BLUE for v in order]
        ax.bar(np.arange(order.size), np.maximum(order, step * 1e-3), width=0.85, color=colors)
        name = "per-tensor step" if stored else "step per-tensor int8 would use"
        ax.axhline(step, color=_RED, linestyle="--", linewidth=1.1, label=f"{name} ({fmt_num(step)})")
        ax.axhline(FEW_STEPS * step, color=_ORANGE, linestyle=":", linewidth=1.1, label=f"{FEW_STEPS} steps")
        if order.max() > 0:
            ax.set_yscale("log")
        ax.set_xlabel(f"output channel, widest first ({order.size} channels)")
        ax.set_ylabel("max |w| of the channel")
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False, fontsize=8)
        fig.tight_layout()
        return _to_svg(fig)


def weights_caption(l: LayerResult) -> str:
    r = l.weight_report
    cm, step, stored = _steps(l)
    few = int(np.count_nonzero(cm <= FEW_STEPS * step))
    ratio = "unbounded" if math.isinf(r.channel_range_ratio) else f"×{fmt_num(r.channel_range_ratio)}"
    text = f"The widest of {cm.size} channels is {ratio} the median one. "
    if stored:
        text += (
            f"With one step of {fmt_num(step)} for the whole tensor, {few} channel{'s' if few != 1 else ''} reach at "
            f"most {FEW_STEPS} steps (≤ {2 * FEW_STEPS + 1} of the 255 levels, red) and {r.collapsed_channels} "
            f"collapse to ≤ 2 levels; weight SQNR {fmt_db(r.sqnr_db_actual)} dB, per-channel would give "
            f"{fmt_db(r.sqnr_db_per_channel)} dB."
        )
    else:
        text += (
            f"Stored as {r.granularity}: every channel has its own step. One per-tensor step ({fmt_num(step)}) would "
            f"leave {few} channel{'s' if few != 1 else ''} at most {FEW_STEPS} steps (red)."
        )
    return text


# -- output margins against the noise -------------------------------------------------------------------------------


def margins_svg(d: Diagnosis) -> str:
    """Histogram of the float model's top-1 − top-2 logit margins (log x) with the noise std on that difference."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure as MplFigure

    m = d.margins
    edges = np.asarray(m.bin_edges, dtype=np.float64)
    counts = np.asarray(m.top1_counts, dtype=np.float64)
    zero = counts[0]  # the [0, 1e-6) bucket has no place on a log axis; it is folded into the first bar drawn
    edges, counts = edges[1:], counts[1:].copy()
    nz = np.flatnonzero(counts)
    lo, hi = (int(nz[0]), int(nz[-1])) if nz.size else (0, len(counts) - 1)
    counts[lo] += zero
    with rc_context(_RC):
        fig = MplFigure(figsize=(9.0, 3.0))
        ax = fig.add_subplot()
        sel = slice(lo, hi + 1)
        ax.bar(edges[:-1][sel], counts[sel], width=np.diff(edges)[sel], align="edge", color=_BLUE, alpha=0.7,
               label="samples (float top-1 − top-2 margin)")
        ax.set_xscale("log")
        left, right = edges[lo], edges[hi + 1]
        sigma = m.pair_noise_std
        if math.isfinite(sigma) and sigma > 0:
            ax.axvline(sigma, color=_RED, linestyle="--", linewidth=1.3, label=f"noise std σ = {fmt_num(sigma)}")
            left, right = min(left, sigma / 2), max(right, sigma * 2)
        ax.set_xlim(left, right)
        ax.set_xlabel("top-1 margin of the float model (logit units, log scale)")
        ax.set_ylabel("samples")
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False, fontsize=8)
        fig.tight_layout()
        return _to_svg(fig)


def margins_caption(d: Diagnosis) -> str:
    m = d.margins
    n = m.num_samples - m.num_nonfinite
    return (
        f"{n} samples over {m.num_classes} classes: {_pct(m.share_below_noise)} have a top-1 margin below the noise "
        f"std σ = {fmt_num(m.pair_noise_std)} on the top-1 − top-2 difference (median margin "
        f"{fmt_num(m.top1_margin_median)}). A Gaussian noise model predicts {_pct(m.predicted_flip_rate)} of the top-1 "
        f"predictions to flip; {_pct(m.observed_flip_rate)} did."
    )


def _pct(v: float) -> str:
    if v is None or math.isnan(v):
        return "n/a"
    if 0 < v < 0.001:
        return "<0.1%"
    return f"{100 * v:.1f}%" if 0 < v < 0.1 else f"{100 * v:.0f}%"


def _empty(fig, ax, text: str) -> str:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_axis_off()
    return _to_svg(fig)
