"""Benchmark: repair EfficientNet-Lite0 under dynamic-per-tensor to within 1 point of float agreement.

Compares the repair's quantized evaluations and wall time with (a) one diagnosis of the same model and data and (b) the
AIMET-style one-op-at-a-time sweep, run for real with the same builder and evaluator: for every quantized op, one
evaluation with only that op quantized and one with only that op kept float (two per op); then ops are kept float in
order of sensitivity until the budget is met. Run: `.venv/bin/python benchmarks/repair.py [--max-samples N]`.

Quantized evaluations are real builds run whole by the interpreter (a diagnosis inside the repair counts as one); the
spliced counterfactual passes of the diagnoses' verification (cut models, no build) are reported beside them.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-samples", type=int, default=None)
    parser.add_argument("--max-drop", type=float, default=1.0)
    parser.add_argument("--skip-sweep", action="store_true")
    args = parser.parse_args()

    from quantdoctor.data import Dataset
    from quantdoctor.demo.efficientnet_lite0 import demo_model_path
    from quantdoctor.demo.photos import demo_images
    from quantdoctor.diagnose.pipeline import diagnose
    from quantdoctor.repair import repair

    model = demo_model_path()
    images = demo_images()
    data = Dataset.from_images(list(images.paths), list(images.labels), (224, 224, 3), preprocess="efficientnet-lite")
    scheme = "dynamic-per-tensor"

    t = time.perf_counter()
    diag = diagnose(model, data, scheme=scheme, preprocess="efficientnet-lite", max_samples=args.max_samples)
    diag_s = time.perf_counter() - t
    diag_splices = 0 if diag.verification is None else diag.verification.evaluations
    print(f"diagnosis: {diag_s:.1f} s, 1 quantized pass (+{diag_splices} spliced), top-1 agreement "
          f"{diag.model.top1_agreement:.4f}", flush=True)

    t = time.perf_counter()
    result = repair(model, data, scheme=scheme, max_drop=args.max_drop, max_samples=args.max_samples,
                    preprocess="efficientnet-lite")
    repair_s = time.perf_counter() - t
    print(result.summary(), flush=True)

    sweep = None if args.skip_sweep else run_sweep(model, data, scheme, args)
    kept_float = sum(len(a.targets()) for a in result.actions if a.kind == "keep_float")
    print("\n| run | quantized evaluations (+ spliced passes) | wall time (s) | × one diagnosis | changed ops | "
          "ops kept float | agreement |")
    print("|---|---|---|---|---|---|---|")
    print(f"| one diagnosis | 1 (+{diag_splices}) | {diag_s:.1f} | 1.00 | - | - | {diag.model.top1_agreement:.4f} |")
    print(f"| repair | {result.evaluations} (+{result.splice_evaluations}) | {repair_s:.1f} | {repair_s / diag_s:.2f} | "
          f"{result.changed_ops} | {kept_float} | {result.final_metric:.4f} |")
    if sweep:
        print(f"| one-op-at-a-time sweep | {sweep['evaluations']} | {sweep['seconds']:.1f} | {sweep['seconds'] / diag_s:.2f} | "
              f"{sweep['changed']} | {sweep['changed']} | {sweep['metric']:.4f} |")
    print(f"\nrepair: {repair_s / diag_s:.2f}x the time of one diagnosis (target <= 2x)")
    if sweep:
        print(f"repair: {sweep['evaluations'] / max(result.evaluations, 1):.1f}x fewer quantized evaluations than the "
              f"sweep ({result.evaluations} vs {sweep['evaluations']}; target >= 10x)")
    return 0


def run_sweep(model, data, scheme, args) -> dict:
    """AIMET-style per-layer sweep with the same builder and evaluator (same data, same kernels)."""
    import numpy as np

    from quantdoctor.backends.keras.loader import load_keras_model
    from quantdoctor.repair.actions import KeepFloat
    from quantdoctor.repair.build import Builder
    from quantdoctor.repair.evaluate import Evaluator
    from quantdoctor.repair.search import _int8_weight_ops

    t = time.perf_counter()
    eval_ds = data if args.max_samples is None else data.subset(np.arange(min(args.max_samples, len(data))))
    builder = Builder.prepare(load_keras_model(model), scheme)
    evaluator = Evaluator(builder.float_model, eval_ds, "agreement", rank_size=len(eval_ds))
    ops = [name for _, name in _int8_weight_ops(builder.build([]))]
    sensitivity = []
    for i, op in enumerate(ops):
        only_this = evaluator.evaluate(builder.build([KeepFloat(ops=tuple(o for o in ops if o != op))]))
        all_but_this = evaluator.evaluate(builder.build([KeepFloat(ops=(op,))]))
        sensitivity.append((only_this.value, -all_but_this.value, op))
        print(f"sweep {i + 1}/{len(ops)}: {op.split(';')[0]}: only quantized {only_this.value:.3f}, "
              f"kept float {all_but_this.value:.3f}", flush=True)
    sensitivity.sort()  # most sensitive first: lowest agreement when quantized alone
    kept: list[str] = []
    metric = evaluator.evaluate(builder.build([])).value
    for _, _, op in sensitivity:
        if 100 * (1 - metric) <= args.max_drop:
            break
        kept.append(op)
        metric = evaluator.evaluate(builder.build([KeepFloat(ops=tuple(kept))])).value
    return {"evaluations": evaluator.count, "seconds": time.perf_counter() - t, "changed": len(kept), "metric": metric}


if __name__ == "__main__":
    sys.exit(main())
