"""Benchmark: report.json and report.html sizes against the number of samples and the activation dtype.

A small conv net (random weights, fixed seed) is diagnosed under int8 and int16x8 on N random images for each N, the
report is written, and the two files' sizes are printed with the seconds each run took. The model is calibrated on 50
of the images scaled by 0.2, so the evaluated activations clip: the calibration-clipping finding makes the report draw
its grid histograms, the figures whose size depended on the activation dtype.

Run: `.venv/bin/python benchmarks/report_size.py [--samples 500 3000] [--schemes int8 int16x8] [--verify]`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

SHAPE = (16, 16, 3)


def small_model(path: Path) -> Path:
    """Conv-BN-ReLU, depthwise-BN-ReLU, a 1x1 projection, global pooling and a dense head, saved as .keras."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inp = keras.Input(SHAPE, name="image")
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(inp)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = layers.BatchNormalization(name="dw_bn")(x)
    x = layers.ReLU(6.0, name="dw_relu")(x)
    x = layers.Conv2D(32, 1, name="proj")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    out = layers.Dense(10, name="logits")(x)
    keras.Model(inp, out, name="small").save(path)
    return path


def random_data(folder: Path, n: int, seed: int = 1) -> tuple[Path, Path]:
    """`n` smooth random images in [-1, 1] with random labels as folder/data_n.npz (x, y), and calibration images
    (the first 50, scaled by 0.2) as folder/calib_n.npz."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, SHAPE[0] // 4, SHAPE[1] // 4, SHAPE[2])).astype(np.float32)
    x = np.tanh(np.repeat(np.repeat(base, 4, axis=1), 4, axis=2) + 0.3 * rng.normal(size=(n, *SHAPE)))
    x = x.astype(np.float32)
    np.savez(folder / f"data_{n}.npz", x=x, y=rng.integers(0, 10, size=n))
    np.savez(folder / f"calib_{n}.npz", x=0.2 * x[:50])
    return folder / f"data_{n}.npz", folder / f"calib_{n}.npz"


def report_sizes(model: Path, data: Path, calib: Path, scheme: str, out: Path, verify: bool = False) -> tuple[int, int]:
    """Diagnose, write the report into `out`, return the sizes in bytes of (report.json, report.html)."""
    from quantdoctor.diagnose.pipeline import diagnose
    from quantdoctor.report.write import write_outputs

    written = write_outputs(diagnose(model, data, scheme=scheme, verify=verify, calib=str(calib)), out)
    return written["json"].stat().st_size, written["html"].stat().st_size


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, nargs="+", default=[500, 3000])
    parser.add_argument("--schemes", nargs="+", default=["int8", "int16x8"])
    parser.add_argument("--verify", action="store_true", help="also run the counterfactual verification")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = small_model(root / "small.keras")
        for n in args.samples:
            data, calib = random_data(root, n)
            for scheme in args.schemes:
                t = time.perf_counter()
                j, h = report_sizes(model, data, calib, scheme, root / f"{scheme}_{n}", args.verify)
                print(f"{scheme:8s} {n:5d} samples: report.json {j / 1e6:7.3f} MB, report.html {h / 1e6:7.3f} MB "
                      f"({time.perf_counter() - t:.1f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
