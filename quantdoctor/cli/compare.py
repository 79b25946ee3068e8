"""`quantdoctor compare A B --data D`: arguments and what they run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

COMPARE_JSON = "compare.json"
COMPARE_HTML = "compare.html"


def add_parser(sub) -> None:
    """Add the `compare` subcommand to main's subparsers."""
    from quantdoctor.cli.main import add_data_options, add_explain_options

    c = sub.add_parser("compare", help="two models, each against its quantized version: what explains the gap")
    c.add_argument("model_a", help="float model A: .keras, .h5, SavedModel directory, float .tflite, .onnx or .pt2")
    c.add_argument("model_b", help="float model B (e.g. the same architecture with more classes)")
    c.add_argument("--data", required=True, help="evaluation data of A (and of B unless --data-b is given)")
    c.add_argument("--data-b", metavar="DATA", help="evaluation data of B, if it differs (e.g. other classes)")
    q = c.add_mutually_exclusive_group(required=True)
    q.add_argument("--scheme", help="quantize both with this scheme (see `quantdoctor schemes`)")
    q.add_argument("--quantized-a", metavar="FILE", help="A's quantized .tflite (give --quantized-b too)")
    c.add_argument("--quantized-b", metavar="FILE", help="B's quantized .tflite or .onnx")
    c.add_argument("--scheme-b", metavar="NAME",
                   help="quantize B with this scheme instead of --scheme (B of another runtime, e.g. ort-qdq-int8)")
    add_data_options(c)
    add_explain_options(c)
    c.add_argument("--out", metavar="DIR",
                   help="write compare.json, compare.html, and each side's report.json in DIR/a and DIR/b")
    c.add_argument("--json", action="store_true", help="print compare.json to stdout instead of the summary")
    c.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    c.add_argument("--width", type=int, default=None, help="terminal width for the summary")
    from quantdoctor.cli.model_options import add_model_options

    add_model_options(c)  # the options go to whichever of A and B they fit


def run_compare(args: argparse.Namespace) -> int:
    from quantdoctor.diagnose.compare import compare
    from quantdoctor.errors import UserInputError

    if args.quantized_b is not None and args.scheme is not None:
        raise UserInputError("--quantized-b goes with --quantized-a, not with --scheme; give one way of quantizing")
    if args.scheme_b is not None and args.scheme is None:
        raise UserInputError("--scheme-b goes with --scheme (A's scheme); give both")
    out = None
    if args.out:
        from quantdoctor.cli.checks import check_output_dir, input_paths

        writes = (COMPARE_JSON, COMPARE_HTML, "a/report.json", "b/report.json")
        out = check_output_dir(args.out, "--out", input_paths(args), writes)
    from quantdoctor.cli.model_options import model_sources

    model_a, model_b = model_sources(args, args.model_a, args.model_b)
    result = compare(
        model_a, model_b, args.data, data_b=args.data_b, scheme=args.scheme,
        quantized_a=args.quantized_a, quantized_b=args.quantized_b, scheme_b=args.scheme_b,
        progress=not args.no_progress and not args.json,
        preprocess=args.preprocess, resize=args.resize, calib=args.calib, calib_count=args.calib_count,
        batch_size=args.batch_size, top_k=args.top_k, max_samples=args.max_samples,
        explain=not args.no_explain, explain_samples=args.explain_samples,
        verify=not args.no_verify, verify_samples=args.verify_samples, cache=not args.no_cache,
    )
    if args.json:
        sys.stdout.write(result.to_json() + "\n")
    else:
        sys.stdout.write(result.summary(width=args.width or 100))
    if out is not None:
        paths = write_comparison(result, out)
        print(f"wrote {', '.join(str(p) for p in paths)}", file=sys.stderr)
    return 0


def write_comparison(result, out: Path) -> list[Path]:
    """compare.json and compare.html in `out`, each side's report.json in out/a and out/b; each replaced atomically.

    All four documents are rendered before the first is written, so a failure leaves no half-written set.
    """
    from quantdoctor.files import atomic_write_text as _write_atomic

    documents = {
        out / COMPARE_JSON: result.to_json() + "\n",
        out / COMPARE_HTML: result.to_html(),
        out / "a" / "report.json": result.a.to_json() + "\n",
        out / "b" / "report.json": result.b.to_json() + "\n",
    }
    for path, text in documents.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(path, text)
    return list(documents)
