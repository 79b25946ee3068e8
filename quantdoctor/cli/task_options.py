"""Command-line options saying how a model's outputs are judged: `--task` and what a task cannot guess."""

from __future__ import annotations

import argparse

from quantdoctor.cli.checks import finite, whole


def channel_slice(text: str) -> tuple[int, int]:
    """`START:STOP` channels of the last axis (STOP exclusive), e.g. `0:4`."""
    parts = text.split(":")
    try:
        start, stop = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a channel range; write START:STOP, e.g. 0:4") from None
    if start < 0 or stop <= start:
        raise argparse.ArgumentTypeError(f"channel range '{text}' is empty or negative; write START:STOP with 0 <= START < STOP")
    return start, stop


def add_task_options(parser: argparse.ArgumentParser) -> None:
    from quantdoctor.tasks import TASKS

    names = [n for n in TASKS.names() if n != "custom"]  # a user metric is a Python function: the API takes it
    g = parser.add_argument_group("task (how the outputs are judged)")
    g.add_argument("--task", default="auto", choices=["auto", *names],
                   help="classify, regress, segment or detect; auto (default) decides from the outputs")
    g.add_argument("--class-output", type=whole(0), default=None, metavar="N",
                   help="classify: which output holds the class scores (default: the first vector of scores)")
    g.add_argument("--layout", choices=("raw", "postprocessed"), default=None,
                   help="detect: raw (rows of box values + class scores, YOLO style) or postprocessed (boxes, "
                        "classes, scores, count: TFLite's detection post-process); default: from the outputs")
    g.add_argument("--box-slice", type=channel_slice, default=None, metavar="START:STOP",
                   help="detect, raw layout: the channels holding the box (default 0:4)")
    g.add_argument("--score-slice", type=channel_slice, default=None, metavar="START:STOP",
                   help="detect, raw layout: the channels holding the class scores (default: after the box)")
    g.add_argument("--box-format", choices=("cxcywh", "xyxy", "yxyx"), default=None,
                   help="detect: how the 4 box values are ordered (default cxcywh for raw heads)")
    g.add_argument("--score-threshold", type=finite(0.0, 1.0), default=0.25,
                   help="detect: a detection counts from this score (default 0.25)")
    g.add_argument("--iou-threshold", type=finite(0.0, 1.0), default=0.5,
                   help="detect: a quantized detection matches a float one of the same class from this IoU "
                        "(default 0.5)")


def task_options(args: argparse.Namespace):
    """(task name, `TaskOptions`) from the parsed options."""
    from quantdoctor.tasks.base import TaskOptions

    options = TaskOptions(
        class_output=args.class_output, layout=args.layout, box_slice=args.box_slice, score_slice=args.score_slice,
        box_format=args.box_format, score_threshold=args.score_threshold, iou_threshold=args.iou_threshold,
        top_k=getattr(args, "top_k", 3),
    )
    return args.task, options
