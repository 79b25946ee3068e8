"""Benchmark: quantdoctor diagnose vs its floor vs tf.lite.experimental.QuantizationDebugger.

EfficientNet-Lite0 (the demo model), the 100 ai-benchmark photos, scheme int8; the first 50 photos calibrate, all 100 are
evaluated. Each contender runs in its own fresh process (so peak RSS is its own); the time counted starts after the
common set-up (imports, loading the Keras model, decoding the photos), which every contender needs alike.

  (a) floor     one int8 conversion + one float Keras pass + one quantized LiteRT pass (XNNPACK, nothing captured)
  (b) diagnose  quantdoctor.diagnose(..., scheme="int8"): conversion(s), both passes with every tensor captured, metrics,
                and the explain probes (statistics, grid coverage, isolated/expected error per op, weights, findings);
                "diagnose --no-explain" is the same without the probes
  (c) debugger  QuantizationDebugger(converter, debug_dataset).run() + layer_statistics_dump

Wall time and CPU time (user + system, all threads) are both reported: on a machine shared with other jobs the wall
time of one process depends on what else runs, its CPU time much less.

A fifth process runs the default diagnosis again under cProfile, one profiler per step (`Progress.step`), and prints
the top costs of each step; its times are not in the table (cProfile slows Python-level code). The conversion cache is
off in every process (`QUANTDOCTOR_CACHE=0`), so diagnose converts like the floor does.

Run:  .venv/bin/python benchmarks/diagnose_vs_debugger.py [--no-profile]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["QUANTDOCTOR_CACHE"] = "0"  # a cached conversion would skip the step the floor pays for
CALIB, EVAL = 50, 100
TOP = 6  # functions listed per step in the profile


def _setup():
    import keras

    from quantdoctor.data import Dataset
    from quantdoctor.demo.efficientnet_lite0 import demo_model_path
    from quantdoctor.demo.photos import demo_images

    images = demo_images()
    paths = list(images.paths[:EVAL])
    data = Dataset.from_images(paths, [-1] * len(paths), (224, 224, 3), preprocess="efficientnet-lite",
                               description="100 ai-benchmark photos")
    x = np.concatenate([b for b, _ in data.batches(25)])
    model_path = demo_model_path()
    model = keras.models.load_model(model_path, compile=False)
    return model_path, model, data, x


def _int8_converter(model, x):
    """The int8 converter every contender uses: the first CALIB photos calibrate."""
    import tensorflow as tf

    def representative():
        for i in range(CALIB):
            yield [x[i : i + 1]]

    conv = tf.lite.TFLiteConverter.from_keras_model(model)
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = representative
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return conv


def part_floor(model_path, model, data, x) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    t0 = time.perf_counter()
    tfl = _int8_converter(model, x).convert()
    t1 = time.perf_counter()
    float_out = model.predict(x, batch_size=16, verbose=0)
    t2 = time.perf_counter()
    interp = Interpreter(model_content=tfl, num_threads=os.cpu_count())
    inp = interp.get_input_details()[0]
    interp.resize_tensor_input(inp["index"], [16, 224, 224, 3])
    interp.allocate_tensors()
    outs = []
    for i in range(0, len(x), 16):
        b = x[i : i + 16]
        if len(b) < 16:
            b = np.concatenate([b, np.zeros((16 - len(b),) + b.shape[1:], b.dtype)])
        interp.set_tensor(inp["index"], b)
        interp.invoke()
        outs.append(interp.get_tensor(interp.get_output_details()[0]["index"]).copy())
    q = np.concatenate(outs)[: len(x)]
    t3 = time.perf_counter()
    agree = float((q.argmax(1) == float_out.argmax(1)).mean())
    return {"seconds": t3 - t0, "convert": t1 - t0, "float_pass": t2 - t1, "quant_pass": t3 - t2, "agreement": agree}


def part_diagnose(model_path, model, data, x, explain: bool = True) -> dict:
    from quantdoctor import diagnose

    calib = data.subset(np.arange(CALIB))
    t0 = time.perf_counter()
    d = diagnose(model_path, data, scheme="int8", calib=calib, batch_size=16, explain=explain)
    t1 = time.perf_counter()
    return {"seconds": t1 - t0, "steps": d.run.seconds, "agreement": d.model.top1_agreement,
            "tensors_compared": len(d.layers)}


def part_debugger(model_path, model, data, x) -> dict:
    import io

    import tensorflow as tf

    t0 = time.perf_counter()
    conv = _int8_converter(model, x)

    def debug_dataset():
        for i in range(EVAL):
            yield [x[i : i + 1]]

    debugger = tf.lite.experimental.QuantizationDebugger(converter=conv, debug_dataset=debug_dataset)
    debugger.run()
    buf = io.StringIO()
    debugger.layer_statistics_dump(buf)
    t1 = time.perf_counter()
    return {"seconds": t1 - t0, "tensors_compared": len(buf.getvalue().splitlines()) - 1}


def part_diagnose_where(model_path, model, data, x) -> dict:
    return part_diagnose(model_path, model, data, x, explain=False)


def part_profile(model_path, model, data, x) -> dict:
    """The default diagnosis with one cProfile profiler per step: the top functions of each by own time."""
    import contextlib
    import cProfile
    import io
    import pstats

    from quantdoctor import progress

    profiles: dict[str, cProfile.Profile] = {}
    timed = progress.Progress.step

    @contextlib.contextmanager
    def step(self, name, description, total=None):
        prof = profiles.setdefault(name, cProfile.Profile())
        with timed(self, name, description, total) as s:
            prof.enable()
            try:
                yield s
            finally:
                prof.disable()

    progress.Progress.step = step
    result = part_diagnose(model_path, model, data, x)
    tops = {}
    for name, prof in profiles.items():
        stats = pstats.Stats(prof, stream=io.StringIO())
        rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:TOP]  # by own (total internal) time
        tops[name] = [(f"{pstats.func_std_string(fn)}", round(row[2], 2), row[1]) for fn, row in rows]
    result["profile"] = tops
    return result


PARTS = {
    "floor": part_floor,
    "diagnose": part_diagnose,  # where + explain + verify (the default)
    "diagnose --no-explain": part_diagnose_where,
    "debugger": part_debugger,
}
EXTRA = {"profile": part_profile}


def _cpu() -> float:
    """User + system CPU seconds of this process, all threads: on a shared machine, what wall time cannot show."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _child(name: str) -> None:
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    setup = _setup()
    cpu = _cpu()
    result = {**PARTS, **EXTRA}[name](*setup)
    result["cpu_seconds"] = _cpu() - cpu
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(result))


def _run_part(name: str) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--part", name], capture_output=True, text=True)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode != 0 or not line:
        print(proc.stderr[-3000:], file=sys.stderr)
        raise SystemExit(f"part {name} failed")
    result = json.loads(line[0][7:])
    print(f"{name}: {result}", file=sys.stderr)
    return result


def _print_profile(result: dict) -> None:
    print(f"\nprofile of the default diagnosis (cProfile, one profiler per step; {result['seconds']:.1f} s profiled):")
    for name, seconds in result["steps"].items():
        print(f"  {name}: {seconds:.1f} s")
        for fn, own, calls in result["profile"].get(name, []):
            print(f"      {own:7.2f} s own  {calls:7d} calls  {fn}")


def main() -> None:
    results = {name: _run_part(name) for name in PARTS}
    floor = results["floor"]["seconds"]
    floor_cpu = results["floor"]["cpu_seconds"]
    print("| run | wall time (s) | × floor | CPU time (s) | × floor | peak RSS (MB) | × floor | tensors compared |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['seconds']:.1f} | {r['seconds'] / floor:.2f} | {r['cpu_seconds']:.1f} | "
              f"{r['cpu_seconds'] / floor_cpu:.2f} | {r['peak_rss_mb']:.0f} | "
              f"{r['peak_rss_mb'] / results['floor']['peak_rss_mb']:.2f} | {r.get('tensors_compared', '-')} |")
    print(f"\nfloor steps: convert {results['floor']['convert']:.1f} s, float pass {results['floor']['float_pass']:.1f} s, "
          f"quantized pass {results['floor']['quant_pass']:.1f} s; diagnose steps: {results['diagnose']['steps']}")
    print(f"top-1 agreement int8 vs float: floor {results['floor']['agreement']:.2f}, "
          f"diagnose {results['diagnose']['agreement']:.2f}")
    if "--no-profile" not in sys.argv:
        _print_profile(_run_part("profile"))


import numpy as np  # noqa: E402  (after the env var above)

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--part":
        _child(sys.argv[2])
    else:
        main()
