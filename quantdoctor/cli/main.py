"""The `quantdoctor` command line. Exit codes: 0 done, 1 user error (one line, no traceback; a bad command line too),
2 internal error, 3 `repair` could not meet the budget (the best model found is still written), 130 interrupted
(Ctrl-C; no partial output)."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Sequence

from quantdoctor.cli.checks import MAX_BATCH, ArgumentParser, whole

EXIT_OK, EXIT_USER, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 130


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="quantdoctor",
        description="Find where and why a quantized TFLite model departs from its float model.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("diagnose", help="compare a float model with its quantized version, layer by layer")
    d.add_argument("model", help="float model: .keras, .h5, SavedModel directory, TF 1 frozen graph .pb (with "
                   "--input-arrays/--output-arrays), float .tflite, float .onnx or torch.export .pt2")
    d.add_argument("--data", required=True, help=".npz (x, optional y), .npy, or an image folder (sub-folder per class)")
    q = d.add_mutually_exclusive_group(required=True)
    q.add_argument("--scheme", help="quantize with this scheme (see `quantdoctor schemes`)")
    q.add_argument("--quantized", metavar="FILE", help="a quantized .tflite made elsewhere from the same model")
    d.add_argument("--force", action="store_true",
                   help="diagnose a --quantized model even if its weights say it comes from another float model")
    add_data_options(d)
    add_explain_options(d)
    add_executor_options(d)
    add_output_options(d)
    from quantdoctor.cli.model_options import add_model_options
    from quantdoctor.cli.task_options import add_task_options

    add_model_options(d)
    add_task_options(d)

    s = sub.add_parser("schemes", help="list the quantization schemes and the converter settings behind each")
    s.add_argument("--markdown", action="store_true", help="print the table as Markdown")

    m = sub.add_parser("demo", help="diagnose the real EfficientNet-Lite0 on real photos under two schemes")
    m.add_argument("--out", default="demo-report", help="folder for the reports (default: demo-report)")
    m.add_argument("--max-samples", type=whole(1), default=None, help="evaluate at most this many photos")
    m.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    m.add_argument("--width", type=whole(40, 1000), default=None, help="terminal width for the summary")
    m.add_argument("--runtime", choices=("tflite", "onnx"), default="tflite",
                   help="tflite: the Keras port under LiteRT, with a repair (default); onnx: the PyTorch model exported "
                        "to ONNX under ONNX Runtime's quantizer (needs the torch extra)")
    from quantdoctor.cli.repair import add_parsers

    add_parsers(sub)
    from quantdoctor.cli.compare import add_parser as add_compare_parser

    add_compare_parser(sub)
    return parser


def add_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preprocess", default="none", help="preset applied to the data (see README; default: none)")
    p.add_argument("--resize", default="crop", choices=("crop", "stretch"), help="how images reach the input size")
    p.add_argument("--calib", metavar="DATA", help="calibration data (default: part of --data, excluded from evaluation)")
    p.add_argument("--calib-count", type=whole(1), default=100, help="samples of --data used to calibrate (default: 100)")
    p.add_argument("--batch-size", type=whole(1, MAX_BATCH), default=16,
                   help=f"samples per interpreter call, 1 to {MAX_BATCH} (default: 16)")
    p.add_argument("--top-k", type=whole(1), default=3, help="k of the top-k metrics (default: 3)")
    p.add_argument("--max-samples", type=whole(1), default=None, help="evaluate at most this many samples")
    p.add_argument("--no-cache", action="store_true",
                   help="do not read or write converted models in the cache (see README: what is cached, where)")


def add_explain_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-explain", action="store_true",
                   help="only where the models part (skip statistics, per-op isolated/expected error, findings): faster")
    p.add_argument("--explain-samples", type=whole(1), default=16,
                   help="samples each op is run on alone for its isolated and expected error (default: 16)")
    p.add_argument("--no-verify", action="store_true",
                   help="do not prove findings with counterfactuals at the output (ops made exact, group testing)")
    p.add_argument("--verify-samples", type=whole(1), default=256,
                   help="samples the counterfactuals are evaluated on (the first ones; default: 256)")
    p.add_argument("--verify-fixes", action="store_true",
                   help="also build the top findings' fixes with the real quantizer and measure them (diagnose only)")


def add_executor_options(p: argparse.ArgumentParser, what: str = "the passes and the counterfactuals run",
                         how: str = "the data split among Ray actors") -> None:
    p.add_argument("--executor", default="local", choices=("local", "ray"),
                   help=f"where {what}: local (this process, the default) or ray ({how}; pip install "
                        "'quantdoctor[ray]'); the results are the same")
    p.add_argument("--workers", type=whole(1), default=None, metavar="N",
                   help="Ray actors (default: one per CPU); only with --executor ray")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join a Ray cluster: auto (the one on this machine) or ray://host:port (default: start one "
                        "with --workers CPUs, shut down at the end); image folders must be readable by its workers")


def add_output_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", metavar="DIR", help="write report.json and report.html here")
    p.add_argument("--json", action="store_true", help="print the JSON report to stdout instead of the summary")
    p.add_argument("--model-explorer", metavar="DIR",
                   help="write per-op node data (SQNR, isolated SQNR, finding severity) for Model Explorer here")
    p.add_argument("--no-progress", action="store_true", help="do not show progress bars")
    p.add_argument("--width", type=whole(40, 1000), default=None, help="terminal width for the summary")


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from quantdoctor.errors import QuantDoctorError

    with _Interrupts() as interrupts:
        try:
            args = build_parser().parse_args(argv)
            from quantdoctor.cache import use_cache

            with use_cache(not getattr(args, "no_cache", False)):  # every conversion of the command, fixes included
                return _run(args)
        except BaseException as exc:  # noqa: BLE001 - sorted below; SystemExit (--help) passes through
            if isinstance(exc, SystemExit):
                raise
            if interrupts.seen or isinstance(exc, KeyboardInterrupt):
                # Ctrl-C inside TensorFlow can surface as any exception (once: "'NoneType' object is not callable").
                print("quantdoctor: interrupted", file=sys.stderr)
                return EXIT_INTERRUPTED
            if isinstance(exc, QuantDoctorError):
                print(f"quantdoctor: error: {_one_line(exc)}", file=sys.stderr)
                return EXIT_USER
            if os.environ.get("QUANTDOCTOR_DEBUG") or not isinstance(exc, Exception):
                raise
            print(
                f"quantdoctor: internal error: {type(exc).__name__}: {_one_line(exc)} "
                "(set QUANTDOCTOR_DEBUG=1 for the traceback and report it)",
                file=sys.stderr,
            )
            return EXIT_INTERNAL


def _run(args: argparse.Namespace) -> int:
    if args.command == "diagnose":
        from quantdoctor.cli.commands import run_diagnose
        from quantdoctor.cli.model_options import model_source

        args.model = model_source(args, args.model)  # a frozen graph's arrays travel with its path
        return run_diagnose(args)
    if args.command == "schemes":
        from quantdoctor.cli.commands import run_schemes

        return run_schemes(args)
    if args.command == "compare":
        from quantdoctor.cli.compare import run_compare

        return run_compare(args)
    if args.command in ("repair", "apply"):
        from quantdoctor.cli.repair import run_apply, run_repair

        return run_repair(args) if args.command == "repair" else run_apply(args)
    if args.command == "demo":
        from quantdoctor.cli.commands import run_demo

        return run_demo(args)
    return EXIT_INTERNAL


class _Interrupts:
    """Remember a Ctrl-C (SIGINT) while a command runs, then raise KeyboardInterrupt as Python's own handler does.

    TensorFlow's converter can catch the KeyboardInterrupt and fail with an unrelated error; the flag still says what
    happened. Outside the main thread (no signal handlers there) it only watches for KeyboardInterrupt.
    """

    def __init__(self) -> None:
        self.seen = False
        self._previous = None

    def __enter__(self) -> "_Interrupts":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        import signal

        self.seen = True
        signal.default_int_handler(signum, frame)

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            import signal

            signal.signal(signal.SIGINT, self._previous)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


if __name__ == "__main__":
    sys.exit(main())
