"""Benchmark: quantdoctor diagnose on ONNX Runtime (--quantized given) vs its floor vs ORT's qdq_loss_debug.

EfficientNet-Lite0 in PyTorch (the demo's weights) exported to ONNX, quantized by ONNX Runtime with `ort-qdq-int8`
(static QDQ, MinMax) on the first `--calib` demo photos (default 20); the next `--samples` photos (default 100; the last
ones when fewer remain after the calibration photos, which then overlap them) are evaluated. The common set-up runs once,
in its own process, before anything is timed: export, quantization, decoding and preprocessing the photos into an .npz
(x NCHW float32, y ImageNet label or -1), all in a temporary folder.

Each contender runs in its own fresh process (so peak RSS is its own); its time starts after its imports and after
reading the .npz, and includes building its ONNX Runtime sessions from the two .onnx files, which every contender does.

  (a) floor                 two plain ONNX Runtime passes (default SessionOptions, CPU EP, batches of 16): the float
                            model's and the quantized model's outputs, nothing captured
  (b) diagnose              quantdoctor.diagnose(float.onnx, data.npz, quantized=quant.onnx): both passes with every
                            tensor captured and streamed into the metrics, explain probes and verification (the default)
  (c) diagnose --no-explain the same with explain=False (so no verification either)
  (d) qdq_loss_debug        onnxruntime.quantization.qdq_loss_debug: modify_model_output_intermediate_tensors on both
                            models, collect_activations over the same photos (batches of 16), create_activation_matching,
                            compute_activation_error. It keeps every captured tensor of every sample in memory, so it
                            runs under an address-space cap (RLIMIT_AS, --rss-cap-gb) and is reported as failed at the
                            cap instead of taking the machine down.

"tensors compared": quantdoctor's matched float/quantized pairs (`len(d.layers)`); qdq_loss_debug's keys of
compute_activation_error (activations that have a Q/DQ pair in the quantized model).

Run:  .venv/bin/python benchmarks/onnx_vs_qdq_loss_debug.py [--samples 100] [--calib 20] [--skip-debugger]
                                                              [--rss-cap-gb 16]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
BATCH = 16
SHAPE_HWC = (224, 224, 3)
FLOAT, QUANT, DATA = "float.onnx", "quant.onnx", "data.npz"


# --- common set-up (its own process: torch stays out of the parent and of every contender) -----------------------


def _prepare(workdir: Path, samples: int, calib: int) -> dict:
    from quantdoctor.backends.torch.export import export_onnx
    from quantdoctor.data import Dataset
    from quantdoctor.demo.efficientnet_lite0_torch import efficientnet_lite0_torch
    from quantdoctor.demo.photos import demo_images
    from quantdoctor.quantize.onnxrt import quantize_onnx

    images = demo_images()
    total = len(images.paths)
    if calib < 1 or samples < 1 or calib > total or samples > total:
        raise SystemExit(f"--calib and --samples must be within 1..{total} (the demo has {total} photos)")
    start = calib if calib + samples <= total else total - samples
    t0 = time.perf_counter()

    def photos(lo: int, hi: int):
        ds = Dataset.from_images(list(images.paths[lo:hi]), list(images.labels[lo:hi]), SHAPE_HWC,
                                 preprocess="efficientnet-lite").channels_first_view()
        return np.concatenate([b for b, _ in ds.batches(BATCH)]), np.asarray(images.labels[lo:hi], np.int64)

    float_bytes, _labels = export_onnx(efficientnet_lite0_torch(), np.zeros((1, 3, 224, 224), np.float32))
    (workdir / FLOAT).write_bytes(float_bytes)
    t1 = time.perf_counter()
    x_cal, _ = photos(0, calib)
    quant_bytes = quantize_onnx(float_bytes, "ort-qdq-int8", lambda: (x_cal[i : i + 1] for i in range(len(x_cal))))
    (workdir / QUANT).write_bytes(quant_bytes)
    t2 = time.perf_counter()
    x, y = photos(start, start + samples)
    np.savez(workdir / DATA, x=x, y=y)
    t3 = time.perf_counter()
    return {"export": t1 - t0, "quantize": t2 - t1, "photos": t3 - t2, "calib": [0, calib],
            "eval": [start, start + samples], "overlap": start < calib, "labelled": int((y >= 0).sum()),
            "x_mb": x.nbytes / 2**20, "float_mb": len(float_bytes) / 2**20, "quant_mb": len(quant_bytes) / 2**20}


# --- contenders -------------------------------------------------------------------------------------------------


def part_floor(workdir: Path, x: np.ndarray) -> dict:
    import onnxruntime as ort

    t0 = time.perf_counter()
    sessions = [ort.InferenceSession(str(workdir / name), ort.SessionOptions(), providers=["CPUExecutionProvider"])
                for name in (FLOAT, QUANT)]
    t1 = time.perf_counter()
    outs, steps = [], []
    for sess in sessions:
        name = sess.get_inputs()[0].name
        ts = time.perf_counter()
        outs.append(np.concatenate([sess.run(None, {name: x[i : i + BATCH]})[0] for i in range(0, len(x), BATCH)]))
        steps.append(time.perf_counter() - ts)
    t2 = time.perf_counter()
    agree = float((outs[0].argmax(1) == outs[1].argmax(1)).mean())
    return {"seconds": t2 - t0, "sessions": t1 - t0, "float_pass": steps[0], "quant_pass": steps[1],
            "agreement": agree}


def part_diagnose(workdir: Path, x: np.ndarray, explain: bool = True) -> dict:
    from quantdoctor import diagnose

    t0 = time.perf_counter()
    d = diagnose(str(workdir / FLOAT), str(workdir / DATA), quantized=str(workdir / QUANT), batch_size=BATCH,
                 explain=explain)
    t1 = time.perf_counter()
    return {"seconds": t1 - t0, "steps": d.run.seconds, "agreement": d.model.top1_agreement,
            "tensors_compared": len(d.layers), "findings": [f.mechanism for f in d.findings],
            "verify_evaluations": None if d.verification is None else d.verification.evaluations}


def part_diagnose_where(workdir: Path, x: np.ndarray) -> dict:
    return part_diagnose(workdir, x, explain=False)


def part_debugger(workdir: Path, x: np.ndarray) -> dict:
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationDataReader
    from onnxruntime.quantization import qdq_loss_debug as qld

    input_name = ort.InferenceSession(str(workdir / FLOAT), providers=["CPUExecutionProvider"]).get_inputs()[0].name

    class Photos(CalibrationDataReader):
        """The evaluated photos, BATCH at a time (the same batches as the other contenders)."""

        def __init__(self) -> None:
            self._it = iter(range(0, len(x), BATCH))

        def get_next(self):
            i = next(self._it, None)
            return None if i is None else {input_name: x[i : i + BATCH]}

    steps: dict[str, float] = {}
    t0 = time.perf_counter()
    mark = t0
    stage = "modify"
    try:
        with tempfile.TemporaryDirectory(prefix="qdq-loss-debug-", dir=workdir) as tmp:
            aug_f, aug_q = Path(tmp) / "float_aug.onnx", Path(tmp) / "quant_aug.onnx"
            qld.modify_model_output_intermediate_tensors(str(workdir / FLOAT), str(aug_f))
            qld.modify_model_output_intermediate_tensors(str(workdir / QUANT), str(aug_q))
            steps[stage], mark, stage = time.perf_counter() - mark, time.perf_counter(), "collect_float"
            float_acts = qld.collect_activations(str(aug_f), Photos())
            steps[stage], mark, stage = time.perf_counter() - mark, time.perf_counter(), "collect_quant"
            qdq_acts = qld.collect_activations(str(aug_q), Photos())
            steps[stage], mark, stage = time.perf_counter() - mark, time.perf_counter(), "match_and_error"
            match = qld.create_activation_matching(qdq_acts, float_acts)
            errors = qld.compute_activation_error(match)
            steps[stage] = time.perf_counter() - mark
            t1 = time.perf_counter()
    except MemoryError:
        return {"failed": f"MemoryError in {stage}", "seconds": time.perf_counter() - t0, "steps": steps}
    except Exception as exc:  # ORT's allocator failures surface as its pybind exceptions (RuntimeException, Fail...)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        return {"failed": f"{type(exc).__name__} in {stage}: {first}", "seconds": time.perf_counter() - t0,
                "steps": steps}
    held = sum(a.nbytes for acts in (float_acts, qdq_acts) for values in acts.values() for a in values)
    return {"seconds": t1 - t0, "steps": steps, "tensors_compared": len(errors),
            "with_float": sum("xmodel_err" in e for e in errors.values()),
            "captured_float": len(float_acts), "captured_quant": len(qdq_acts), "held_mb": held / 2**20}


PARTS = {
    "floor": part_floor,
    "diagnose": part_diagnose,  # explain + verify (the default)
    "diagnose --no-explain": part_diagnose_where,
    "qdq_loss_debug": part_debugger,
}
CAPPED = {"qdq_loss_debug"}


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _child(name: str, workdir: Path, cap_gb: float | None) -> None:
    import logging

    logging.getLogger().setLevel(logging.ERROR)
    if cap_gb:
        cap = int(cap_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import onnx  # noqa: F401  (imports are set-up, like reading the data)
    import onnxruntime  # noqa: F401

    if name.startswith("diagnose"):
        import quantdoctor  # noqa: F401
    elif name == "qdq_loss_debug":
        import onnxruntime.quantization.qdq_loss_debug  # noqa: F401
    with np.load(workdir / DATA) as archive:
        x = archive["x"]
    result = PARTS[name](workdir, x)
    result["peak_rss_mb"] = _peak_rss_mb()
    print("RESULT " + json.dumps(result), flush=True)


def _run_child(args: list[str], workdir: Path, label: str) -> tuple[dict | None, int, float, str]:
    """Run this file with `args` in a fresh process: (its RESULT or None, exit status, its peak RSS in MB, stderr)."""
    with open(workdir / f"{label}.out", "w+") as out, open(workdir / f"{label}.err", "w+") as err:
        proc = subprocess.Popen([sys.executable, __file__, *args], stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own rusage, also when it was killed
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        lines = [l for l in out.read().splitlines() if l.startswith("RESULT ")]
        return (json.loads(lines[-1][7:]) if lines else None), proc.returncode, usage.ru_maxrss / 1024, err.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=100, help="evaluated photos (default 100)")
    parser.add_argument("--calib", type=int, default=20, help="calibration photos, the first ones (default 20)")
    parser.add_argument("--skip-debugger", action="store_true", help="do not run qdq_loss_debug")
    parser.add_argument("--rss-cap-gb", type=float, default=16.0,
                        help="address-space cap (RLIMIT_AS) for qdq_loss_debug's process, GB (default 16; 0 = none)")
    args = parser.parse_args()

    import onnxruntime

    with tempfile.TemporaryDirectory(prefix="qd-bench-onnx-") as tmp:
        workdir = Path(tmp)
        setup, code, _, err = _run_child(["--prepare", str(workdir), str(args.samples), str(args.calib)], workdir,
                                         "prepare")
        if setup is None:
            print(err[-3000:], file=sys.stderr)
            raise SystemExit(f"set-up failed (exit {code})")
        print(f"set-up: {setup}", file=sys.stderr)
        results: dict[str, dict] = {}
        for name in PARTS:
            if name == "qdq_loss_debug" and args.skip_debugger:
                continue
            cap = args.rss_cap_gb if name in CAPPED and args.rss_cap_gb > 0 else None
            child_args = ["--part", name, str(workdir)] + ([str(cap)] if cap else [])
            t0 = time.perf_counter()
            result, code, rss, err = _run_child(child_args, workdir, name.replace(" ", "_"))
            if result is None:
                if name not in CAPPED:
                    print(err[-3000:], file=sys.stderr)
                    raise SystemExit(f"part {name} failed (exit {code})")
                last = (err.strip().splitlines() or [""])[-1][:200]
                result = {"failed": f"process ended with exit {code} ({last})", "process_seconds":
                          time.perf_counter() - t0, "peak_rss_mb": rss}
            if cap:
                result["cap_gb"] = cap
            results[name] = result
            print(f"{name}: {result}", file=sys.stderr)

    floor = results["floor"]["seconds"]
    print(f"EfficientNet-Lite0 (PyTorch -> ONNX, ort-qdq-int8), {args.samples} evaluated photos "
          f"(demo photos {setup['eval'][0]}..{setup['eval'][1] - 1}, {setup['labelled']} labelled), calibration on "
          f"photos {setup['calib'][0]}..{setup['calib'][1] - 1}"
          f"{' (overlapping the evaluated ones)' if setup['overlap'] else ''}; onnxruntime {onnxruntime.__version__}, "
          f"{os.cpu_count()} CPUs\n")
    print("| run | wall (s) | × floor | peak RSS (MB) | tensors compared |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        if "failed" in r:
            cap = f"killed/failed at {r['cap_gb']:g} GB" if "cap_gb" in r else "failed"
            wall = r.get("seconds", r.get("process_seconds"))
            print(f"| {name} | {cap} after {wall:.1f} s | - | {r['peak_rss_mb']:.0f} | - |")
            continue
        print(f"| {name} | {r['seconds']:.1f} | {r['seconds'] / floor:.2f} | {r['peak_rss_mb']:.0f} | "
              f"{r.get('tensors_compared', '-')} |")
    f = results["floor"]
    print(f"\nfloor: sessions {f['sessions']:.2f} s, float pass {f['float_pass']:.2f} s, quantized pass "
          f"{f['quant_pass']:.2f} s; top-1 agreement {f['agreement']:.2f}")
    for name in ("diagnose", "diagnose --no-explain"):
        r = results[name]
        print(f"{name}: steps {r['steps']}; top-1 agreement {r['agreement']:.2f}; findings {r['findings']}"
              + (f"; verification evaluations {r['verify_evaluations']}" if r["verify_evaluations"] is not None else ""))
    r = results.get("qdq_loss_debug")
    if r is not None:
        if "failed" in r:
            print(f"qdq_loss_debug: {r['failed']}; steps done {r.get('steps', {})}")
        else:
            print(f"qdq_loss_debug: steps { {k: round(v, 2) for k, v in r['steps'].items()} }; activations held "
                  f"{r['held_mb']:.0f} MB ({r['captured_float']} float + {r['captured_quant']} quantized-model "
                  f"tensors × {args.samples} samples); {r['with_float']} of {r['tensors_compared']} compared "
                  f"with the float model")


import numpy as np  # noqa: E402  (after the env var above)

if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--part":
        _child(sys.argv[2], Path(sys.argv[3]), float(sys.argv[4]) if len(sys.argv) > 4 else None)
    elif len(sys.argv) == 5 and sys.argv[1] == "--prepare":
        info = _prepare(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        print("RESULT " + json.dumps(info), flush=True)
    else:
        main()
