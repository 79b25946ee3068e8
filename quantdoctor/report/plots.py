"""Figures of a `Diagnosis` as inline SVG text, one function per figure.

matplotlib is imported inside each function and only its object API is used (no pyplot): no global backend is switched,
no window can open, and `import quantdoctor` stays fast.
"""

from __future__ import annotations

import io
import math
import re

from quantdoctor.diagnose.findings import EXCESS_DB  # the excess the kernel-defect finding flags is marked
from quantdoctor.diagnose.results import Diagnosis
from quantdoctor.report.sentences import fmt_db

WORST_TICKS = 5
"""How many of the worst layers get a labelled x tick (more would overlap)."""

_RC = {
    "svg.fonttype": "path",  # glyphs as paths: the SVG needs no font
    "svg.hashsalt": "quantdoctor",  # stable element ids, so the same diagnosis gives the same file
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_LINE = "#2b6cb0"
_ONSET = "#c53030"
_ISOLATED = "#dd6b20"
_EXPECTED = "#718096"


def error_by_depth_svg(diagnosis: Diagnosis, worst_ticks: int = WORST_TICKS) -> str:
    """SQNR (dB) of every matched tensor against its position, with the onset and the worst layers marked.

    Three series where measured: accumulated (the quantized model against the float model at this tensor), isolated
    (the quantized op alone on the float model's input: its own error) and expected (what its quantization parameters
    predict); an isolated SQNR `EXCESS_DB` below expected is marked with a red cross.

    Infinite SQNR (an exact tensor) cannot be drawn: it is clipped to the top of the plot and marked with a triangle.
    """
    from matplotlib import rc_context
    from matplotlib.figure import Figure

    layers = sorted((l for l in diagnosis.layers if not math.isnan(l.accumulated.sqnr_db)), key=lambda l: l.position)
    with rc_context(_RC):
        fig = Figure(figsize=(9.0, 3.6))
        ax = fig.add_subplot()
        if not layers:
            ax.text(0.5, 0.5, "no matched tensor to plot", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            return _to_svg(fig)
        xs = [l.position for l in layers]
        ys = [l.accumulated.sqnr_db for l in layers]
        own = [l for l in layers if l.isolated is not None and not math.isnan(l.isolated.sqnr_db)]
        exp = [l for l in layers if l.expected is not None and not math.isnan(l.expected.sqnr_db)]
        bottom, top = _y_range(ys + [l.isolated.sqnr_db for l in own] + [l.expected.sqnr_db for l in exp])
        clipped = [min(max(y, bottom), top) for y in ys]
        ax.plot(xs, clipped, color=_LINE, marker="o", markersize=3.5, linewidth=1.4, label="accumulated SQNR")
        marked = _mark(ax, xs, ys, clipped, math.inf, "^", "exact (inf dB), drawn at the top")
        marked |= _mark(ax, xs, ys, clipped, -math.inf, "v", "-inf dB, drawn at the bottom")
        marked |= _own_error(ax, own, exp, bottom, top)
        ax.set_ylim(bottom, top + 0.04 * (top - bottom))
        ax.set_ylabel("SQNR (dB), higher is better")
        ax.set_xlabel(f"position in the quantized graph (labelled: the {worst_ticks} worst layers)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_xticks(xs, minor=True)
        worst = sorted(diagnosis.worst_layers(worst_ticks), key=lambda l: l.position)
        ax.set_xticks([l.position for l in worst], [_plain(l.label) for l in worst], rotation=30, ha="right")
        if diagnosis.onset is not None:
            ax.axvline(diagnosis.onset.position, color=_ONSET, linestyle="--", linewidth=1.2)
            ax.annotate(f"onset: {_plain(diagnosis.onset.label)}", xy=(diagnosis.onset.position, top),
                        xytext=(4, -2), textcoords="offset points", color=_ONSET, va="top")
        if marked:  # a legend for the single line alone would only repeat the y label
            # above the axes: never on the data
            ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=3, frameon=False, fontsize=8)
        fig.tight_layout()
        return _to_svg(fig)


def excess_caption(d: Diagnosis) -> str:
    """What the isolated and expected series of the error-by-depth plot show: the ops the runtime gets wrong."""
    own = [l for l in d.layers if l.isolated is not None and l.expected is not None]
    if not own:
        return ""
    bad = sorted((l for l in own if l.excess_db is not None and l.excess_db >= EXCESS_DB), key=lambda l: -l.excess_db)
    if not bad:
        worst = max(own, key=lambda l: l.excess_db if l.excess_db is not None and not math.isnan(l.excess_db) else -1e9)
        return (
            f"Each of the {len(own)} ops measured alone is within {EXCESS_DB:.0f} dB of the SQNR its quantization "
            f"parameters predict (largest gap {fmt_db(worst.excess_db)} dB at {worst.label})."
        )
    w = bad[0]
    others = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
    return (
        f"Marked: {w.label}{others}, where the op alone gives {fmt_db(w.isolated.sqnr_db)} dB although its parameters "
        f"predict {fmt_db(w.expected.sqnr_db)} dB ({fmt_db(w.excess_db)} dB worse than expected)."
    )


def _own_error(ax, own, exp, bottom: float, top: float) -> bool:
    """The op's own error next to the accumulated one: isolated (observed) and expected SQNR, and the ops whose
    isolated SQNR is `EXCESS_DB` or more below expected (the runtime does not compute what its parameters say)."""
    def clip(v: float) -> float:
        return min(max(v, bottom), top)

    if exp:
        ax.plot([l.position for l in exp], [clip(l.expected.sqnr_db) for l in exp], color=_EXPECTED, linestyle=":",
                marker=".", markersize=4, linewidth=1.2, label="expected (from its parameters)", gid="depth-expected")
    if own:
        ax.plot([l.position for l in own], [clip(l.isolated.sqnr_db) for l in own], color=_ISOLATED, linestyle="--",
                marker="s", markersize=3, linewidth=1.1, label="isolated (the op alone)", gid="depth-isolated")
    bad = [l for l in own if l.excess_db is not None and l.excess_db >= EXCESS_DB]
    if bad:
        ax.plot([l.position for l in bad], [clip(l.isolated.sqnr_db) for l in bad], linestyle="none", marker="X",
                markersize=9, color=_ONSET, label=f"isolated ≥ {EXCESS_DB:.0f} dB below expected", gid="depth-excess")
    return bool(own or exp)


def _y_range(ys: list[float]) -> tuple[float, float]:
    """Axis limits from the finite values, keeping 0 dB in view so a collapse reads as one."""
    finite = [y for y in ys if math.isfinite(y)]
    if not finite:
        return 0.0, 40.0
    lo, hi = min(finite), max(finite)
    bottom = min(0.0, lo - 2.0)
    top = max(hi + 0.1 * (hi - bottom), bottom + 10.0)
    return bottom, top


def _mark(ax, xs, ys, clipped, value: float, marker: str, label: str) -> bool:
    """Draw a distinct marker on the points clipped from `value`; True if there were any."""
    hit = [(x, c) for x, y, c in zip(xs, ys, clipped) if y == value]
    if hit:
        ax.plot(*zip(*hit), linestyle="none", marker=marker, markersize=7, color=_LINE, label=label)
    return bool(hit)


def _plain(text: str) -> str:
    # matplotlib reads $...$ as math; a layer name is never math.
    return text.replace("$", r"\$")


def _to_svg(fig) -> str:
    """The figure as an inline <svg> element: no XML prolog, no DOCTYPE (it names an external DTD), no comments."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    return re.sub(r"<!--.*?-->\s*", "", svg, flags=re.DOTALL)
