"""The task's figures as inline SVG: one sample's detections or masks, float against quantized, and SQNR per channel
group of an output that packs several quantities.

Same rules as `plots.py`: matplotlib's object API only, imported inside the functions; each figure next to the function
that computes its caption from the numbers it draws. The example comes from `TaskResult.details["example"]`:

- detect: {"sample": int, "float": [[x1, y1, x2, y2, cls, score], ...], "quant": [...], "box_format": "xyxy",
  optional "image" (the input sample as a base64 PNG), optional "size" ([height, width] of the canvas)}
- segment: {"sample": int, "float_mask": 2-D list, "quant_mask": 2-D list, optional "image"}
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from quantdoctor.diagnose.results import Diagnosis
from quantdoctor.report import outputs_text as ot
from quantdoctor.report.figures import Figure
from quantdoctor.report.plots import _RC, _plain, _to_svg
from quantdoctor.report.sentences import fmt_db

_FLOAT, _QUANT, _KEEP, _LOST = "#2b6cb0", "#dd6b20", "#2f855a", "#c53030"
IOU_THRESHOLD = 0.5
"""A quantized detection matches a float one with the same class and at least this IoU (unless the task says)."""


def task_figures(d: Diagnosis) -> list[Figure]:
    """The task figures this diagnosis has data for: the example sample, then one channel-group chart per output."""
    task = d.task
    if task is None:
        return []
    out = []
    example = task.details.get("example") if isinstance(task.details, dict) else None
    if isinstance(example, dict) and "float" in example and "quant" in example:
        iou = float(task.details.get("iou_threshold", IOU_THRESHOLD))
        title = f"Detections on sample {example.get('sample', '?')}: float against quantized"
        out.append(Figure("task-example", title, detections_svg(example), detections_caption(example, iou)))
    elif isinstance(example, dict) and "float_mask" in example and "quant_mask" in example:
        title = f"Masks of sample {example.get('sample', '?')}: float against quantized"
        out.append(Figure("task-example", title, masks_svg(example), masks_caption(example)))
    for o in task.outputs:
        if len(o.groups) >= 2:
            title = f"SQNR per channel group: output '{o.name}'"
            out.append(Figure(f"groups-{o.index}", title, groups_svg(o), groups_caption(o)))
    return out


# -- detections --------------------------------------------------------------------------------------------------------


def _boxes(rows: list, fmt: str) -> np.ndarray:
    """Rows [a, b, c, d, cls, score] as an (n, 6) array with the box in xyxy."""
    a = np.asarray(rows, dtype=np.float64).reshape(-1, 6) if len(rows) else np.zeros((0, 6))
    b = a.copy()
    if fmt == "yxyx":
        b[:, 0:4] = a[:, [1, 0, 3, 2]]
    elif fmt == "cxcywh":
        b[:, 0], b[:, 1] = a[:, 0] - a[:, 2] / 2, a[:, 1] - a[:, 3] / 2
        b[:, 2], b[:, 3] = a[:, 0] + a[:, 2] / 2, a[:, 1] + a[:, 3] / 2
    return b


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def matched(f: np.ndarray, q: np.ndarray, iou: float = IOU_THRESHOLD) -> int:
    """Quantized detections matched one-to-one to a float detection of the same class, greedily by score."""
    free = list(range(len(f)))
    hits = 0
    for j in np.argsort(-q[:, 5], kind="stable"):
        best = max(free, key=lambda i: _iou(f[i], q[j]) if f[i, 4] == q[j, 4] else -1.0, default=None)
        if best is not None and f[best, 4] == q[j, 4] and _iou(f[best], q[j]) >= iou:
            free.remove(best)
            hits += 1
    return hits


def _image(example: dict[str, Any]) -> np.ndarray | None:
    """The input sample decoded from its base64 PNG, or None (absent or unreadable: the figure draws a canvas)."""
    data = example.get("image")
    if not data:
        return None
    import base64
    import binascii
    import io

    from matplotlib.image import imread

    try:
        return imread(io.BytesIO(base64.b64decode(data)), format="png")
    except (binascii.Error, ValueError, OSError, SyntaxError):  # Pillow raises SyntaxError for "not a PNG file"
        return None


def _canvas(example: dict[str, Any], boxes: np.ndarray, image: np.ndarray | None) -> tuple[float, float]:
    """(height, width) of what the boxes are drawn on, in box units; the image is stretched over it.

    The example's "size" when it has one; else 1 x 1 when every coordinate is normalized; else the image's size, scaled
    up as far as the boxes reach (the report keeps a thumbnail of a larger input); else the boxes' extent and a tenth.
    """
    if example.get("size"):
        h, w = example["size"][:2]
        return float(h), float(w)
    reach_x = float(boxes[:, 2].max()) if len(boxes) else 0.0
    reach_y = float(boxes[:, 3].max()) if len(boxes) else 0.0
    if len(boxes) and max(reach_x, reach_y) <= 1.0:
        return 1.0, 1.0
    if image is not None:
        h, w = float(image.shape[0]), float(image.shape[1])
        k = max(1.0, reach_x / w, reach_y / h)
        return h * k, w * k
    if not len(boxes):
        return 1.0, 1.0
    return float(math.ceil(1.1 * reach_y)), float(math.ceil(1.1 * reach_x))


def detections_svg(example: dict[str, Any]) -> str:
    """The float detections (solid) and the quantized ones (dashed) on the input sample, each labelled class:score."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure as MplFigure
    from matplotlib.patches import Rectangle

    fmt = example.get("box_format", "xyxy")
    f, q = _boxes(example["float"], fmt), _boxes(example["quant"], fmt)
    image = _image(example)
    h, w = _canvas(example, np.concatenate([f, q]), image)
    with rc_context(_RC):
        fig = MplFigure(figsize=(5.0, 5.0 * min(max(h / w, 0.4), 2.0)))
        ax = fig.add_subplot()
        if image is not None:
            ax.imshow(image, cmap="gray", extent=(0, w, h, 0), interpolation="nearest")
        else:
            ax.add_patch(Rectangle((0, 0), w, h, facecolor="#f7fafc", edgecolor="#cbd5e0"))
        for rows, color, style, label in ((f, _FLOAT, "-", "float"), (q, _QUANT, "--", "quantized")):
            for i, (x1, y1, x2, y2, cls, score) in enumerate(rows):
                ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=color, linestyle=style,
                                       linewidth=1.6, label=f"{label} ({len(rows)})" if i == 0 else None))
                ax.text(x1, y1 if style == "-" else y2, f"{int(cls)}:{score:.2f}", color=color, fontsize=7,
                        va="bottom" if style == "-" else "top")
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)  # image rows grow downwards
        ax.set_aspect("equal")
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, frameon=False, fontsize=8)
        fig.tight_layout()
        return _to_svg(fig)


def detections_caption(example: dict[str, Any], iou: float = IOU_THRESHOLD) -> str:
    """e.g. "Sample 17: the float model finds 3 objects (scores 0.91-0.98); the quantized model finds 0."."""
    fmt = example.get("box_format", "xyxy")
    f, q = _boxes(example["float"], fmt), _boxes(example["quant"], fmt)
    text = (f"Sample {example.get('sample', '?')}: the float model finds {_objects(len(f))}{_scores(f)}; "
            f"the quantized model finds {len(q)}{_scores(q)}")
    if len(q) and len(f):
        hits = matched(f, q, iou)
        text += f", {hits} of them matching a float detection (same class, IoU ≥ {iou:.2f})"
    if example.get("image") and _image(example) is None:
        text += ". The input image could not be decoded; the boxes are drawn on an empty canvas"
    return text + "."


def _objects(n: int) -> str:
    return f"{n} object{'' if n == 1 else 's'}"


def _scores(rows: np.ndarray) -> str:
    if not len(rows):
        return ""
    lo, hi = rows[:, 5].min(), rows[:, 5].max()
    return f" (score {hi:.2f})" if len(rows) == 1 else f" (scores {lo:.2f}-{hi:.2f})"


# -- masks -------------------------------------------------------------------------------------------------------------


def masks_svg(example: dict[str, Any]) -> str:
    """Float mask and quantized mask side by side (same colours per class), over the input sample when there is one."""
    from matplotlib import colormaps, rc_context
    from matplotlib.figure import Figure as MplFigure

    f, q = np.asarray(example["float_mask"]), np.asarray(example["quant_mask"])
    image = _image(example)
    top = max(int(f.max(initial=0)), int(q.max(initial=0)), 1)
    with rc_context(_RC):
        fig = MplFigure(figsize=(8.0, 4.0))
        for k, (mask, title) in enumerate(((f, "float"), (q, "quantized"))):
            ax = fig.add_subplot(1, 2, k + 1)
            if image is not None:
                ax.imshow(image, cmap="gray", extent=(0, mask.shape[1], mask.shape[0], 0), interpolation="nearest")
            ax.imshow(mask, cmap=colormaps["tab10"], vmin=0, vmax=max(top, 9), interpolation="nearest",
                      alpha=0.55 if image is not None else 1.0, extent=(0, mask.shape[1], mask.shape[0], 0))
            ax.set_title(f"{title} mask", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        return _to_svg(fig)


def masks_caption(example: dict[str, Any]) -> str:
    """The sample's pixel agreement, and the class that loses most pixels (or, if none loses, gains most)."""
    f, q = np.asarray(example["float_mask"]), np.asarray(example["quant_mask"])
    sample = example.get("sample", "?")
    if f.shape != q.shape or not f.size:
        return f"Sample {sample}: the float mask {f.shape} and the quantized mask {q.shape} cannot be compared."
    same = int(np.count_nonzero(f == q))
    text = (f"Sample {sample}: the quantized mask agrees with the float mask on {100.0 * same / f.size:.1f}% of "
            f"pixels ({same} of {f.size})")
    classes = np.union1d(np.unique(f), np.unique(q))
    moves = [(int(np.count_nonzero(f == c)), int(np.count_nonzero(q == c)), c) for c in classes]
    fc, qc, c = max(moves, key=lambda m: (m[0] - m[1], -m[2]))
    if fc <= qc:
        fc, qc, c = max(moves, key=lambda m: (m[1] - m[0], -m[2]))
    if fc != qc:
        text += f"; class {c} covers {fc} pixels in the float mask and {qc} in the quantized one"
    return text + "."


# -- SQNR per channel group ----------------------------------------------------------------------------------------


def groups_svg(o) -> str:
    """One bar per channel group of an output: its SQNR, coloured by whether it keeps its signal, levels on top."""
    from matplotlib import rc_context
    from matplotlib.figure import Figure as MplFigure

    names = [_plain(ot.group_label(g)) for g in o.groups]
    ys = [g.sqnr_db for g in o.groups]
    finite = [y for y in ys if math.isfinite(y)] or [0.0]
    top = max(max(finite) * 1.15, ot.KEEP_DB * 1.2)
    bottom = min(0.0, min(finite) - 2.0)
    with rc_context(_RC):
        fig = MplFigure(figsize=(6.0, 2.8))
        ax = fig.add_subplot()
        drawn = [top if y == math.inf else (bottom if math.isnan(y) else min(max(y, bottom), top)) for y in ys]
        colors = [_KEEP if y >= ot.KEEP_DB else _LOST if y < ot.COLLAPSE_DB else _QUANT for y in ys]
        ax.bar(range(len(ys)), drawn, color=colors, width=0.6)
        for i, g in enumerate(o.groups):
            if g.levels is not None:
                ax.text(i, drawn[i], f"{ot.fmt_levels(g.levels)} levels", ha="center", va="bottom", fontsize=8)
        ax.axhline(ot.COLLAPSE_DB, color=_LOST, linestyle=":", linewidth=1.0,
                   label=f"below {ot.COLLAPSE_DB:.0f} dB: collapsed")
        ax.legend(loc="upper right", frameon=False, fontsize=8)
        ax.set_xticks(range(len(ys)), names)
        ax.set_ylim(bottom, top)
        ax.set_ylabel("SQNR (dB)")
        ax.grid(axis="y", alpha=0.3)
        fig.tight_layout()
        return _to_svg(fig)


def groups_caption(o) -> str:
    """Each group's SQNR, then the keep-and-collapse sentence when it applies."""
    each = ", ".join(f"{ot.group_label(g)} {fmt_db(g.sqnr_db)} dB" for g in o.groups)
    text = f"Output '{o.name}' ({o.role}), SQNR per channel group: {each}."
    sentence = ot.group_sentence(o)
    if sentence:
        text += " " + sentence[0].upper() + sentence[1:]
    return text
