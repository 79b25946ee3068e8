"""Benchmark: what proving the causes costs on the demo collapse, against one diagnosis and an AIMET-style sweep.

EfficientNet-Lite0 under dynamic-per-tensor on the 120 demo photos, all in one process and one run:

- one diagnosis without verification (`verify=False`) and one with it (the default): the verify step's evaluations and
  seconds, and the ratio of the two wall times;
- the per-op sweep AIMET and Hailo run, done with the same splice machinery: for every candidate op, one evaluation with
  only that op exact and one with only that op quantized (two per op), i.e. what a sensitivity table of every op costs.

Run: `.venv/bin/python benchmarks/verify.py [--max-samples N] [--skip-sweep]`.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--skip-sweep", action="store_true")
    args = parser.parse_args()

    from quantdoctor.data import Dataset
    from quantdoctor.demo.efficientnet_lite0 import demo_model_path
    from quantdoctor.demo.photos import demo_images
    from quantdoctor.diagnose.pipeline import diagnose

    model = demo_model_path()
    images = demo_images()
    data = Dataset.from_images(list(images.paths), list(images.labels), (224, 224, 3), preprocess="efficientnet-lite")
    opts = dict(scheme="dynamic-per-tensor", preprocess="efficientnet-lite", max_samples=args.max_samples)

    t = time.perf_counter()
    plain = diagnose(model, data, verify=False, **opts)
    plain_s = time.perf_counter() - t
    t = time.perf_counter()
    proved = diagnose(model, data, **opts)
    proved_s = time.perf_counter() - t
    v = proved.verification
    top = proved.findings[0]
    print(f"without verify: {plain_s:.1f} s; with verify: {proved_s:.1f} s ({proved_s / plain_s:.2f}x), verify step "
          f"{v.seconds:.1f} s in {v.evaluations} evaluations on {v.samples} samples", flush=True)
    print(f"first finding: {top.mechanism} in {len(top.positions)} op(s), verified={top.verified}, "
          f"{v.baseline.top1_agreement:.3f} -> {top.check.top1_agreement if top.check else float('nan'):.3f}; "
          f"located causes: {', '.join(v.cause_labels)}", flush=True)

    rows = [("diagnose --no-verify", 0, plain_s, "-")]
    rows.append(("diagnose (verify on)", v.evaluations, proved_s, f"{len(v.causes)} ops, verified"))
    if not args.skip_sweep:
        rows.append(sweep(model, data, opts))
    print("\n| run | counterfactual evaluations | wall time (s) | × diagnose --no-verify | causes |")
    print("|---|---|---|---|---|")
    for name, evals, seconds, causes in rows:
        print(f"| {name} | {evals} | {seconds:.1f} | {seconds / plain_s:.2f} | {causes} |")
    return 0


def sweep(model, data, opts) -> tuple:
    """Every candidate op exact alone and quantized alone (two evaluations per op), with the same splices."""
    from dataclasses import replace

    from quantdoctor.backends.keras.loader import load_keras_model
    from quantdoctor.backends.tflite.runner import TfliteRunner
    from quantdoctor.diagnose.counterfactuals import Counterfactuals
    from quantdoctor.matching.match import match_graphs
    from quantdoctor.quantize.converter import convert

    start = time.perf_counter()
    keras_model = load_keras_model(model)
    fr = TfliteRunner(convert(keras_model, None), 16)
    qr = TfliteRunner(convert(keras_model, opts["scheme"]), 16)
    ds = data if opts["max_samples"] is None else data.subset(list(range(opts["max_samples"])))
    cf = Counterfactuals(fr, qr, match_graphs(fr.graph, qr.graph), ds, len(ds))
    singles = {op: (cf.op_exact([op]), cf.alone_quantized([op])) for op in cf.candidates}
    recovering = [op for op, (exact, _) in singles.items() if exact.recovery >= 0.5]
    seconds = time.perf_counter() - start
    print(f"sweep: {len(cf.candidates)} ops, {cf.count} evaluations, {seconds:.1f} s; ops whose exactness alone "
          f"recovers half the loss: {len(recovering)}; ops that alone lose > 50 % of the decisions: "
          f"{sum(1 for _, alone in singles.values() if 1 - alone.top1_agreement > 0.5)}", flush=True)
    return ("per-op sweep (exact + alone, 2 per op)", cf.count, seconds,
            f"{len(recovering)} single ops recover half the loss")


if __name__ == "__main__":
    raise SystemExit(main())
