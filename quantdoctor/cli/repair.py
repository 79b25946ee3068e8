"""`quantdoctor repair` and `quantdoctor apply`: arguments and what they run.

Exit codes (besides main's 0/1/2): 3 = the repair could not meet the budget; the best model found is still written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXIT_BUDGET_NOT_MET = 3


METRIC_CHOICES = ("agreement", "top1", "topk", "f1", "recall", "precision", "miou", "pixel_agreement", "miou_labels",
                  "fidelity")


def add_parsers(sub) -> None:
    """Add the `repair` and `apply` subcommands to main's subparsers."""
    from quantdoctor.cli.checks import finite, whole

    r = sub.add_parser("repair", help="find the smallest change that brings the quantized model within a budget")
    r.add_argument("model", help="float model: .keras, .h5, SavedModel directory, float .tflite or float .onnx")
    r.add_argument("--data", required=True, help=".npz (x, optional y), .npy, or an image folder")
    q = r.add_mutually_exclusive_group(required=True)
    q.add_argument("--scheme", help="quantization scheme to repair (see `quantdoctor schemes`)")
    q.add_argument("--quantized", metavar="FILE",
                   help="a quantized .tflite or .onnx made elsewhere (its scheme is read from it)")
    r.add_argument("--max-drop", type=finite(0.0, 100.0), default=1.0,
                   help="allowed drop in points of --metric, 0 to 100 (default: 1.0)")
    r.add_argument("--metric", default=None, choices=METRIC_CHOICES,
                   help="the budget metric (default: the task's headline): classify: agreement (top-1 agreement with "
                        "float), top1/topk (accuracy on labels); detect: f1, recall, precision (against the float "
                        "detections); segment: miou, pixel_agreement, miou_labels; regress: fidelity")
    r.add_argument("--out", metavar="DIR",
                   help="write repaired.tflite (.onnx), recipe.json, repair.json and repair.html here")
    r.add_argument("--rank-size", type=whole(1), default=32, help="samples the search ranks candidates on (default: 32)")
    from quantdoctor.cli.main import add_data_options, add_executor_options

    add_executor_options(r, "each round's candidates are evaluated", "Ray actors")
    add_data_options(r)
    r.add_argument("--json", action="store_true", help="print the result as JSON instead of the summary")
    from quantdoctor.cli.model_options import add_model_options

    add_model_options(r)
    from quantdoctor.cli.task_options import add_task_options

    add_task_options(r)

    a = sub.add_parser("apply", help="re-apply a repair recipe to the float model it was made from")
    a.add_argument("recipe", help="recipe.json written by `quantdoctor repair --out`")
    a.add_argument("model", help="the float model the recipe was made from")
    a.add_argument("--out", metavar="FILE", default=None,
                   help="where to write the repaired model (default: repaired.tflite, or repaired.onnx for an ONNX recipe)")


def run_repair(args: argparse.Namespace) -> int:
    from quantdoctor.cli.model_options import model_source
    from quantdoctor.cli.task_options import task_options
    from quantdoctor.repair import repair

    task, options = task_options(args)
    if args.out:
        from quantdoctor.cli.checks import check_output_dir, input_paths
        from quantdoctor.repair.api import HTML_NAME, RECIPE_NAME, RESULT_NAME, model_name

        runtime = "onnx" if str(args.model).lower().endswith(".onnx") else "tflite"
        check_output_dir(args.out, "--out", input_paths(args), (model_name(runtime), RECIPE_NAME, RESULT_NAME, HTML_NAME))
    result = repair(
        model_source(args, args.model), args.data, scheme=args.scheme, quantized=args.quantized, max_drop=args.max_drop,
        metric=args.metric, out=args.out, preprocess=args.preprocess, resize=args.resize, calib=args.calib,
        calib_count=args.calib_count, batch_size=args.batch_size, top_k=args.top_k, max_samples=args.max_samples,
        rank_size=args.rank_size, cache=not args.no_cache, executor=args.executor, workers=args.workers,
        ray_address=args.ray_address, task=task, task_options=options,
    )
    print(result.to_json() if args.json else result.summary())
    if args.out:
        from quantdoctor.repair.api import model_name

        name = model_name("onnx" if str(args.model).lower().endswith(".onnx") else "tflite")
        print(f"wrote {Path(args.out) / name}, recipe.json, repair.json and repair.html", file=sys.stderr)
    if not result.budget_met:
        print(f"quantdoctor: {result.message}", file=sys.stderr)
        return EXIT_BUDGET_NOT_MET
    return 0


def run_apply(args: argparse.Namespace) -> int:
    from quantdoctor.cli.checks import check_output_file, input_paths
    from quantdoctor.files import atomic_write_bytes
    from quantdoctor.repair.actions import Backend
    from quantdoctor.repair.recipe import Recipe, apply_recipe, sha256

    recipe = Recipe.load(args.recipe)
    suffix = ".onnx" if Backend(recipe.backend) == Backend.ORT else ".tflite"
    out = check_output_file(args.out or f"repaired{suffix}", "--out", input_paths(args), suffix)
    model = apply_recipe(recipe, args.model)
    atomic_write_bytes(out, model)
    same = "same bytes as the repair run" if sha256(model) == recipe.model_sha256 else "bytes differ from the repair run"
    print(f"wrote {out} ({len(model)} bytes, {len(recipe.actions)} action(s); {same})", file=sys.stderr)
    return 0
