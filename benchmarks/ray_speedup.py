"""Benchmark: one batch of repair candidate evaluations on Ray with 1 worker vs 2 workers.

The candidates are those of the repair benchmark's model (EfficientNet-Lite0 under `dynamic-per-tensor`, the demo
photos): one op with int8 weights kept float each, as the one-op-at-a-time sweep and the search's rounds evaluate them;
each is a real build and one quantized pass over the ranking subset, run by `repair.search.CandidateWorker` on Ray
actors exactly as `quantdoctor repair --executor ray` does. Each run starts its own local cluster with as many CPUs as
workers. Prints the wall time of each run, the speed-up of the batch (map) time, and where the time went.
`--one-thread` runs each worker's interpreter on one thread (the evaluator's LiteRT interpreter uses every core by
default, so one worker already keeps ~1.5 of 2 cores busy). Run:
`.venv/bin/python benchmarks/ray_speedup.py [--candidates 12] [--samples 32] [--one-thread]`.
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
    parser.add_argument("--one-thread", action="store_true", help="one interpreter thread per worker")
    args = parser.parse_args()

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
            factory = one_thread_worker if args.one_thread else CandidateWorker
            outcomes = ex.map(WorkerMethod(factory, (builder, evaluator), "evaluate"), jobs)
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
    return 0


def one_thread_worker(builder, evaluator):
    """A `CandidateWorker` whose LiteRT interpreters use one thread (the loader's default is every core)."""
    import functools

    from quantdoctor.backends.tflite import loader
    from quantdoctor.repair.search import CandidateWorker

    loader.load_interpreter = functools.partial(loader.load_interpreter, num_threads=1)
    return CandidateWorker(builder, evaluator)


if __name__ == "__main__":
    sys.exit(main())
