"""Benchmark: does diagnose's peak memory stay flat as the data grows? The same diagnosis on 100 and on 1,000 samples.

EfficientNet-Lite0 (the demo model), scheme int8, the first 50 demo photos calibrate. The evaluated samples are the 100
ai-benchmark photos repeated, each copy shifted by a seeded random offset of up to 16 pixels (edges repeated), so no two
samples are equal; they are made batch by batch, never all held. Each size runs in its own fresh process and reports its
peak RSS (`ru_maxrss`). Verification runs on the first 100 samples in both (`verify_samples=100`): its counterfactuals
keep their samples by design, while everything else streams. The conversion cache is off.

Run:  .venv/bin/python benchmarks/memory_flat.py [--sizes 100 1000]
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["QUANTDOCTOR_CACHE"] = "0"
CALIB, PHOTOS, SHIFT = 50, 100, 16


class ShiftedPhotos:
    """`count` samples: photo i % 100, shifted by a random (dy, dx) in [-SHIFT, SHIFT] seeded by i (a data `Source`)."""

    def __init__(self, base, count: int) -> None:
        self.base, self.count = base, count
        self.description = f"{count} shifted copies of the {PHOTOS} ai-benchmark photos"
        self.labels = None

    def __len__(self) -> int:
        return self.count

    def read(self, indices):
        import numpy as np

        out = []
        for i in indices:
            image = self.base.read(np.array([int(i) % PHOTOS]))[0]
            dy, dx = np.random.default_rng(int(i)).integers(-SHIFT, SHIFT + 1, size=2)
            if i >= PHOTOS:
                h, w = image.shape[:2]
                padded = np.pad(image, ((SHIFT, SHIFT), (SHIFT, SHIFT), (0, 0)), mode="edge")
                image = padded[SHIFT + dy : SHIFT + dy + h, SHIFT + dx : SHIFT + dx + w]
            out.append(image)
        return np.stack(out).astype(np.float32)


def _child(count: int) -> None:
    import logging

    import numpy as np

    from quantdoctor import diagnose
    from quantdoctor.data import Dataset
    from quantdoctor.data.images import ImageFilesSource
    from quantdoctor.demo.efficientnet_lite0 import demo_model_path
    from quantdoctor.demo.photos import demo_images

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    shape = (224, 224, 3)
    base = ImageFilesSource(list(demo_images().paths[:PHOTOS]), None, shape)
    data = Dataset(ShiftedPhotos(base, count), shape, "efficientnet-lite")
    calib = Dataset(base, shape, "efficientnet-lite").subset(np.arange(CALIB))
    t0 = time.perf_counter()
    d = diagnose(demo_model_path(), data, scheme="int8", calib=calib, batch_size=16, verify_samples=100)
    result = {"samples": count, "seconds": time.perf_counter() - t0, "steps": d.run.seconds,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "agreement": d.model.top1_agreement, "findings": [f.mechanism for f in d.findings]}
    print("RESULT " + json.dumps(result))


def main() -> None:
    sizes = [int(s) for s in sys.argv[sys.argv.index("--sizes") + 1 :]] if "--sizes" in sys.argv else [100, 1000]
    results = []
    for count in sizes:
        proc = subprocess.run([sys.executable, __file__, "--child", str(count)], capture_output=True, text=True)
        line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
        if proc.returncode != 0 or not line:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"{count} samples failed")
        results.append(json.loads(line[0][7:]))
        print(results[-1], file=sys.stderr)
    print("| samples | wall time (s) | peak RSS (MB) |")
    print("|---|---|---|")
    for r in results:
        print(f"| {r['samples']} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} |")
    first, last = results[0]["peak_rss_mb"], results[-1]["peak_rss_mb"]
    print(f"\npeak RSS {results[-1]['samples']} / {results[0]['samples']} samples: {last / first:.3f} "
          f"({(last - first) / first:+.1%}; target within ±10 %)")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        _child(int(sys.argv[2]))
    else:
        main()
