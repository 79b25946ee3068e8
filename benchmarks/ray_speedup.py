"""Benchmark: diagnose (data-parallel passes and counterfactuals) and one batch of repair candidate evaluations on Ray
with 1 worker vs 2 workers.

Diagnose (`--part diagnose`): the demo EfficientNet-Lite0 under `dynamic-per-tensor` on the demo photos, diagnosed
with `--no-explain` (the passes only) and with explain (passes, probes, counterfactual verification), in process and
with `--executor ray --workers 1` and `2` (each run starts its own local cluster with as many CPUs as workers). Prints
each run's wall time, the ratio 1 worker / 2 workers of the parallel part (passes + verify) and of the wall time, and a
profile line: actor start-up, object-store transfer, the shards' passes, the counterfactuals' maps, the merge.

The candidates are those of the repair benchmark's model (EfficientNet-Lite0 under `dynamic-per-tensor`, the demo
photos): one op with int8 weights kept float each, as the one-op-at-a-time sweep and the search's rounds evaluate them;
each is a real build and one quantized pass over the ranking subset, run by `repair.search.CandidateWorker` on Ray
actors exactly as `quantdoctor repair --executor ray` does. Each run starts its own local cluster with as many CPUs as
workers. Prints the wall time of each run, the speed-up of the batch (map) time, and where the time went. Runners in
a Ray worker use one thread (`executors.base.worker_threads`; LiteRT would start one per core in every worker).
Run: `.venv/bin/python benchmarks/ray_speedup.py [--part all|diagnose|repair] [--photos 120] [--candidates 12]
[--samples 32]`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--candidates", type=int, default=12)
    parser.add_argument("--samples", type=int, default=32, help="the ranking subset each candidate is evaluated on")
    parser.add_argument("--part", choices=("all", "diagnose", "repair"), default="all")
    parser.add_argument("--photos", type=int, default=120, help="demo photos diagnosed")
    args = parser.parse_args()
    if args.part in ("all", "diagnose"):
        bench_diagnose(args.photos)
    if args.part in ("all", "repair"):
        bench_repair(args)
    return 0


def bench_diagnose(photos: int) -> None:
    import numpy as np

    import quantdoctor.executors as executors
    from quantdoctor.data import Dataset
    from quantdoctor.demo.efficientnet_lite0 import demo_model_path
    from quantdoctor.demo.photos import demo_images
    from quantdoctor.diagnose.pipeline import diagnose

    images = demo_images()
    data = Dataset.from_images(list(images.paths), list(images.labels), (224, 224, 3), preprocess="efficientnet-lite")
    data = data.subset(np.arange(min(photos, len(data))))
    model = demo_model_path()
    pools = []
    real = executors.make_executor

    def keep(*a, **k):  # the pipeline's executor, for its profile
        pools.append(real(*a, **k))
        return pools[-1]

    executors.make_executor = keep
    options = dict(scheme="dynamic-per-tensor", preprocess="efficientnet-lite")
    diagnose(model, data, explain=False, **options)  # warm-up: conversion cached, imports done
    for explain in (False, True):
        what = "explain + verify" if explain else "--no-explain"
        runs = {}
        for executor, workers in (("local", None), ("ray", 1), ("ray", 2)):
            t = time.perf_counter()
            d = diagnose(model, data, explain=explain, executor=executor, workers=workers, **options)
            wall = time.perf_counter() - t
            sec, prof = d.run.seconds, pools[-1].profile
            parallel = sec.get("passes", 0.0) + sec.get("verify", 0.0)
            runs[(executor, workers)] = (wall, parallel, d)
            ev = d.verification.evaluations if d.verification is not None else 0
            print(f"{what}, {executor} {workers or ''} (load average {os.getloadavg()[0]:.1f}): wall {wall:.1f} s; passes {sec.get('passes', 0):.1f} s, verify "
                  f"{sec.get('verify', 0):.1f} s ({ev} evaluations); top-1 agreement {d.model.top1_agreement:.4f}",
                  flush=True)
            if executor == "ray":
                x = prof.extra
                print(f"  profile: actor start-up {prof.startup:.2f} s, object store {prof.transfer:.2f} s, passes "
                      f"(shards) {x.get('run', 0):.2f} s, counterfactuals {x.get('measure', 0):.2f} s, merge "
                      f"{x.get('merge', 0):.3f} s", flush=True)
        (w1, p1, d1), (w2, p2, d2) = runs[("ray", 1)], runs[("ray", 2)]
        same = (d1.model.top1_agreement, d1.model.topk_agreement) == (d2.model.top1_agreement, d2.model.topk_agreement) \
            and [(f.mechanism, f.positions) for f in d1.findings] == [(f.mechanism, f.positions) for f in d2.findings]
        print(f"{what} on {len(data)} photos: 1 worker {p1:.1f} s, 2 workers {p2:.1f} s (passes + verify) -> "
              f"{p1 / p2:.2f}x; wall incl. start-up {w1:.1f} s vs {w2:.1f} s -> {w1 / w2:.2f}x; in process "
              f"{runs[('local', None)][1]:.1f} s (wall {runs[('local', None)][0]:.1f} s); same metrics and findings on "
              f"1 and 2 workers: {same}\n", flush=True)
    executors.make_executor = real


def bench_repair(args) -> None:
    import numpy as np

    from quantdoctor.backends.keras.loader import load_keras_model
    from quantdoctor.data import Dataset
    from quantdoctor.demo.efficientnet_lite0 import demo_model_path
    from quantdoctor.demo.photos import demo_images
    from quantdoctor.executors import RayExecutor, WorkerMethod
    from quantdoctor.repair.actions import KeepFloat
    from quantdoctor.repair.build import Builder
    from quantdoctor.repair.evaluate import Evaluator
    from quantdoctor.repair.search import CandidateWorker, _int8_weight_ops

    t = time.perf_counter()
    images = demo_images()
    data = Dataset.from_images(list(images.paths), list(images.labels), (224, 224, 3), preprocess="efficientnet-lite")
    data = data.subset(np.arange(min(args.samples, len(data))))
    builder = Builder.prepare(load_keras_model(demo_model_path()), "dynamic-per-tensor")
    evaluator = Evaluator(builder.float_model, data, "agreement", rank_size=len(data))
    ops = [name for _, name in _int8_weight_ops(builder.build([]))][: args.candidates]
    jobs = [((KeepFloat(ops=(op,)),), evaluator.rank_size) for op in ops]
    print(f"set-up (model, float outputs of {len(data)} photos, base build): {time.perf_counter() - t:.1f} s; "
          f"{len(jobs)} candidates", flush=True)

    runs = {}
    for workers in (1, 2):
        t = time.perf_counter()
        with RayExecutor(workers=workers) as ex:
            outcomes = ex.map(WorkerMethod(CandidateWorker, (builder, evaluator), "evaluate"), jobs)
            profile = ex.profile
        wall = time.perf_counter() - t
        failed = [o.error for o in outcomes if o.evaluation is None]
        if failed:
            print(f"{len(failed)} candidate(s) failed: {failed[0]}", file=sys.stderr)
        evaluation_s = sum(o.evaluation.seconds for o in outcomes if o.evaluation is not None)
        runs[workers] = (wall, profile.mapping, [None if o.evaluation is None else o.evaluation.value for o in outcomes])
        print(f"{workers} worker(s): wall {wall:.1f} s = start-up {profile.startup:.1f} s (cluster, actors, each "
              f"worker's builder/evaluator) + object store put {profile.transfer:.2f} s + batch {profile.mapping:.1f} s "
              f"(quantized passes {evaluation_s:.1f} s summed over workers; the rest builds and results)", flush=True)
    (w1, m1, v1), (w2, m2, v2) = runs[1], runs[2]
    print(f"\nsame metric values on 1 and 2 workers: {v1 == v2}")
    print(f"| workers | batch of {len(jobs)} candidates (s) | wall incl. start-up (s) |\n|---|---|---|\n"
          f"| 1 | {m1:.1f} | {w1:.1f} |\n| 2 | {m2:.1f} | {w2:.1f} |")
    print(f"speed-up of the batch: {m1 / m2:.2f}x (wall incl. start-up: {w1 / w2:.2f}x)")


if __name__ == "__main__":
    sys.exit(main())
