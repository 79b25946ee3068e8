"""What each CLI command does once its arguments are parsed (heavy imports happen here, not in main)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from quantdoctor.cli.checks import check_output_dir, input_paths

DEMO_SCHEMES = ("dynamic-per-tensor", "dynamic")
ONNX_DEMO_SCHEMES = ("ort-qdq-int8-per-tensor", "ort-qdq-int8")
ONNX_DEMO_CALIB = 40  # photos that calibrate the static ORT schemes (excluded from evaluation)
DEMO_MAX_DROP = 1.0  # points of top-1 agreement the demo repair may leave


def _console(width: int | None):
    from rich.console import Console

    return Console(width=width) if width else Console()


def _config(args: argparse.Namespace, **over):
    from quantdoctor.diagnose.config import DiagnoseConfig

    fields = dict(
        scheme=getattr(args, "scheme", None),
        quantized=getattr(args, "quantized", None),
        preprocess=args.preprocess,
        resize=args.resize,
        calib=args.calib,
        calib_count=args.calib_count,
        batch_size=args.batch_size,
        top_k=args.top_k,
        max_samples=args.max_samples,
        explain=not getattr(args, "no_explain", False),
        explain_samples=getattr(args, "explain_samples", 16),
        verify=not getattr(args, "no_verify", False),
        verify_samples=getattr(args, "verify_samples", 256),
        force=getattr(args, "force", False),
        cache=not getattr(args, "no_cache", False),
        executor=getattr(args, "executor", "local"),
        workers=getattr(args, "workers", None),
        ray_address=getattr(args, "ray_address", None),
    )
    if hasattr(args, "task"):
        from quantdoctor.cli.task_options import task_options

        fields["task"], fields["task_options"] = task_options(args)
    fields.update(over)
    return DiagnoseConfig(**fields)


def run_diagnose(args: argparse.Namespace) -> int:
    from quantdoctor.diagnose.pipeline import diagnose
    from quantdoctor.report.terminal import render
    from quantdoctor.report.write import write_outputs

    inputs = input_paths(args)
    if args.out:
        check_output_dir(args.out, "--out", inputs, ("report.json", "report.html"))
    if getattr(args, "model_explorer", None):
        from quantdoctor.report.model_explorer import METRICS

        writes = (*(m.file for m in METRICS.values()), "README.txt")
        check_output_dir(args.model_explorer, "--model-explorer", inputs, writes)
    diag = diagnose(args.model, args.data, config=_config(args), progress=not args.no_progress and not args.json)
    if getattr(args, "verify_fixes", False) and diag.findings:
        from quantdoctor.repair.fixes import verify_fixes

        diag = verify_fixes(diag, args.model, args.data, scheme=args.scheme, quantized=args.quantized,
                            samples=args.verify_samples, batch_size=args.batch_size, top_k=args.top_k,
                            preprocess=args.preprocess, resize=args.resize, calib=args.calib,
                            calib_count=args.calib_count, max_samples=args.max_samples)
    if args.json:
        sys.stdout.write(diag.to_json() + "\n")
    else:
        render(diag, _console(args.width))
    if args.out:
        paths = write_outputs(diag, Path(args.out))
        print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    if getattr(args, "model_explorer", None):
        from quantdoctor.report.model_explorer import write_model_explorer

        paths = write_model_explorer(diag, Path(args.model_explorer), model=getattr(args, "quantized", None))
        print(f"wrote {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0


def run_schemes(args: argparse.Namespace) -> int:
    from quantdoctor.quantize.onnxrt import ORT_SCHEMES, ort_scheme_table_markdown
    from quantdoctor.quantize.schemes import SCHEMES, scheme_table_markdown

    if args.markdown:
        print(scheme_table_markdown())
        print(ort_scheme_table_markdown())
        return 0
    from rich.table import Table

    table = Table(title="quantization schemes: TFLite converter (Keras, SavedModel, .tflite models)")
    for col in ("scheme", "weights", "activations", "I/O", "converter settings"):
        table.add_column(col)
    for name, s in SCHEMES.items():
        table.add_row(name, s.weights, s.activations, s.io, s.converter_settings)
    _console(None).print(table)
    ort = Table(title="quantization schemes: ONNX Runtime quantizer (.onnx models)")
    for col in ("scheme", "what it is", "mode", "activations", "weights"):
        ort.add_column(col)
    for name, s in ORT_SCHEMES.items():
        ort.add_row(name, s.summary, s.mode, s.activation_type, f"{s.weight_type} {'per-channel' if s.per_channel else 'per-tensor'}")
    _console(None).print(ort)
    return 0


def run_demo(args: argparse.Namespace) -> int:
    from quantdoctor.data import Dataset
    from quantdoctor.demo.efficientnet_lite0 import demo_model_path
    from quantdoctor.demo.photos import demo_images
    from quantdoctor.diagnose.pipeline import diagnose
    from quantdoctor.repair import repair
    from quantdoctor.report.terminal import render
    from quantdoctor.report.write import write_outputs

    out = check_output_dir(args.out, "--out", (), ("report.json", "report.html"))
    if getattr(args, "runtime", "tflite") == "onnx":
        return _run_onnx_demo(args, out)
    console = _console(args.width)
    console.print("[bold]quantdoctor demo[/bold]: EfficientNet-Lite0 (ImageNet, 1000 classes) on 120 real photos")
    model = demo_model_path()
    images = demo_images()
    data = Dataset.from_images(
        list(images.paths), list(images.labels), (224, 224, 3), preprocess="efficientnet-lite", description=images.source
    )
    results = {}
    for scheme in DEMO_SCHEMES:
        console.rule(f"scheme {scheme}")
        diag = diagnose(
            model, data, scheme=scheme, preprocess="efficientnet-lite", max_samples=args.max_samples,
            progress=not args.no_progress,
        )
        if diag.findings:  # the top findings' fixes, built with the real quantizer and measured
            from quantdoctor.repair.fixes import verify_fixes

            diag = verify_fixes(diag, model, data, scheme=scheme, preprocess="efficientnet-lite",
                                max_samples=args.max_samples)
        render(diag, console)
        write_outputs(diag, out / scheme)
        results[scheme] = diag
    broken = min(results, key=lambda k: results[k].model.top1_agreement)
    console.rule(f"repair {broken} to within {DEMO_MAX_DROP:g} point of float agreement")
    fixed = repair(
        model, data, scheme=broken, max_drop=DEMO_MAX_DROP, preprocess="efficientnet-lite",
        max_samples=args.max_samples, out=out / "repair",
    )
    console.print(fixed.summary(), markup=False, highlight=False, soft_wrap=True)  # tables: no re-wrapping
    console.rule("demo summary")
    for scheme, diag in results.items():
        onset = f"error onset at {diag.onset.label} ({diag.onset.sqnr_db:.1f} dB)" if diag.onset else "no error onset"
        top = diag.findings[0] if diag.findings else None
        finding = f"top finding: {top.severity.value} {top.mechanism} in {len(top.positions)} op(s)" if top else "no finding"
        console.print(
            f"{scheme:>20}: top-1 agreement with float {diag.model.top1_agreement:.2f}, "
            f"top-{diag.model.k} {diag.model.topk_agreement:.2f}; {onset}; {finding}"
        )
    changes = "; ".join(a.describe() for a in fixed.actions) or "none"
    console.print(
        f"{'repaired ' + broken:>20}: top-1 agreement {fixed.baseline_metric:.2f} -> {fixed.final_metric:.2f} "
        f"({'within' if fixed.budget_met else 'NOT within'} {DEMO_MAX_DROP:g} point); changes: {changes}"
    )
    console.print(
        f"reports written to {out}/<scheme>/report.html and report.json; repaired model, recipe and trajectory in "
        f"{out}/repair/"
    )
    return 0


def _run_onnx_demo(args: argparse.Namespace, out: Path) -> int:
    """The same network and photos through PyTorch → ONNX → ONNX Runtime's quantizer, per-tensor and per-channel."""
    from quantdoctor.data import Dataset
    from quantdoctor.demo.efficientnet_lite0_torch import efficientnet_lite0_torch
    from quantdoctor.demo.photos import demo_images
    from quantdoctor.diagnose.pipeline import diagnose
    from quantdoctor.report.terminal import render
    from quantdoctor.report.write import write_outputs

    console = _console(args.width)
    console.print("[bold]quantdoctor demo, ONNX Runtime[/bold]: EfficientNet-Lite0 in PyTorch (the same weights), "
                  "exported to ONNX, quantized with ONNX Runtime on 120 real photos")
    model = efficientnet_lite0_torch()
    images = demo_images()
    data = Dataset.from_images(
        list(images.paths), list(images.labels), (224, 224, 3), preprocess="efficientnet-lite", description=images.source
    ).channels_first_view()
    results = {}
    for scheme in ONNX_DEMO_SCHEMES:
        console.rule(f"scheme {scheme}")
        diag = diagnose(model, data, scheme=scheme, preprocess="efficientnet-lite", calib_count=ONNX_DEMO_CALIB,
                        max_samples=args.max_samples, progress=not args.no_progress)
        render(diag, console)
        write_outputs(diag, out / scheme)
        results[scheme] = diag
    console.rule("demo summary (ONNX Runtime)")
    for scheme, diag in results.items():
        top = diag.findings[0] if diag.findings else None
        finding = (f"top finding: {top.severity.value} {top.mechanism} in {len(top.positions)} op(s)"
                   f"{' (verified)' if top.verified else ''}") if top else "no finding"
        console.print(f"{scheme:>24}: top-1 agreement with float {diag.model.top1_agreement:.2f}, "
                      f"top-{diag.model.k} {diag.model.topk_agreement:.2f}; {finding}")
    console.print(f"reports written to {out}/<scheme>/report.html and report.json")
    return 0
