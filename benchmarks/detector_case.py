"""The detection case of the README: a YOLO-style digit detector whose one output concatenates box coordinates in
pixels of a 640-px frame with sigmoid class scores, quantized to int8, diagnosed and repaired.

    .venv/bin/python benchmarks/detector_case.py [--out DIR]

Trains the detector on scikit-learn's digits (`quantdoctor.demo.digit_models`, ~25 s on 2 cores), then runs
`diagnose --task detect` and `repair --metric f1 --max-drop 1` on 200 held-out canvases and prints the numbers the
README quotes.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="folder for the model, data, report and repair (default: a temp dir)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="quantdoctor-detector-"))
    out.mkdir(parents=True, exist_ok=True)

    from quantdoctor.demo.digit_models import train_detector
    from quantdoctor.demo.digits import digit_canvases
    from quantdoctor.diagnose.pipeline import diagnose
    from quantdoctor.repair.api import repair

    start = time.perf_counter()
    model = train_detector(digit_canvases(3000, seed=0, split="train"), epochs=8, seed=0, box_scale=10)
    model.save(out / "detector_640.keras")
    np.savez(out / "canvases.npz", x=digit_canvases(300, seed=1, split="test").images)
    trained = time.perf_counter() - start

    start = time.perf_counter()
    d = diagnose(out / "detector_640.keras", out / "canvases.npz", scheme="int8", task="detect")
    diagnosed = time.perf_counter() - start
    (out / "report.html").write_text(d.to_html())
    t = d.task
    print(f"trained in {trained:.0f} s; diagnose {diagnosed:.0f} s on {t.num_samples} canvases")
    print(f"detection F1 vs float {t.metrics['f1']:.3f} (precision {t.metrics['precision']:.3f}, "
          f"recall {t.metrics['recall']:.3f}); detections per canvas: float "
          f"{t.metrics['float_detections_per_sample']:.2f}, int8 {t.metrics['quant_detections_per_sample']:.2f}")
    for g in t.outputs[0].groups:
        print(f"  group {g.name}: float range {g.float_min:.3g}..{g.float_max:.3g}, {g.levels:.3g} levels, "
              f"SQNR {g.sqnr_db:.1f} dB")
    f = d.findings[0]
    e = f.evidence
    print(f"first finding: {f.mechanism} at {e['op_type']} '{e['op']}' (scale {e['shared_scale']:.3g}; "
          f"small part {e['small_part']} spans {e['small_levels']:.2f} steps), verified={f.verified}, "
          f"recovery {f.check.recovery:.2f} ({f.check.metric} {d.verification.baseline.top1_agreement:.2f} -> "
          f"{f.check.top1_agreement:.2f})")

    start = time.perf_counter()
    r = repair(out / "detector_640.keras", out / "canvases.npz", scheme="int8", task="detect", metric="f1",
               max_drop=1.0, out=out / "repair")
    print(f"repair: {r.message}; {r.evaluations} evaluations, {time.perf_counter() - start:.0f} s")
    for a in r.actions:
        print(f"  {a.describe()}")
    print(f"files in {out}")


if __name__ == "__main__":
    main()
