"""The written report's size is bounded: it does not grow with the number of samples nor with the activation dtype.

Before the 16-bit grid histograms were binned, int16x8 wrote every one of the 65,536 levels of each tensor into
report.json (15 MB here) and drew each level as an SVG bar in report.html (76 MB at 500 samples, minutes to render).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from quantdoctor.stats.grid import MAX_BINS

JSON_CAP = 1_000_000
HTML_CAP = 3_000_000
GROWTH = 1.05  # 500 -> 3000 samples: only numbers' digits may grow
SHAPE = (16, 16, 3)
SCHEMA = Path(__file__).resolve().parents[2] / "docs" / "report.schema.json"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A small conv net (random weights, seed 0) saved as small.keras."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    inp = keras.Input(SHAPE, name="image")
    x = layers.Conv2D(16, 3, strides=2, padding="same", use_bias=False, name="stem")(inp)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="dw")(x)
    x = layers.ReLU(6.0, name="dw_relu")(x)
    x = layers.Conv2D(32, 1, name="proj")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    out = layers.Dense(10, name="logits")(x)
    path = tmp_path_factory.mktemp("size")
    keras.Model(inp, out, name="small").save(path / "small.keras")
    return path


def _report(folder, n: int, scheme: str = "int16x8") -> tuple[int, int, dict, str]:
    """Diagnose on `n` random images, calibrated on 50 of them scaled by 0.2 (the evaluated activations clip, so the
    report draws grid histograms); the sizes of report.json and report.html, and their contents."""
    from quantdoctor.diagnose.pipeline import diagnose
    from quantdoctor.report.write import write_outputs

    rng = np.random.default_rng(1)
    base = rng.normal(size=(n, 4, 4, 3)).astype(np.float32)
    x = np.tanh(np.repeat(np.repeat(base, 4, axis=1), 4, axis=2)).astype(np.float32)
    np.savez(folder / f"data_{n}.npz", x=x, y=rng.integers(0, 10, size=n))
    np.savez(folder / f"calib_{n}.npz", x=0.2 * x[:50])
    d = diagnose(folder / "small.keras", folder / f"data_{n}.npz", scheme=scheme, calib=str(folder / f"calib_{n}.npz"),
                 verify=False)
    paths = write_outputs(d, folder / f"out_{scheme}_{n}")
    text = paths["json"].read_text()
    return paths["json"].stat().st_size, paths["html"].stat().st_size, json.loads(text), paths["html"].read_text()


def test_int16_report_is_bounded_and_does_not_grow_with_the_samples(folder):
    small_json, small_html, _, _ = _report(folder, 500)
    big_json, big_html, doc, html = _report(folder, 3000)
    assert big_json < JSON_CAP and big_html < HTML_CAP
    assert big_json < GROWTH * small_json and big_html < GROWTH * small_html
    assert 'id="grid-' in html  # the grid histograms, the figures that grew with the grid, are drawn
    grids = [l["grid"] for l in doc["layers"] if l["grid"]]
    assert grids and all(g["grid_size"] == 1 << 16 and g["num_samples"] == 3000 for g in grids)
    for g in grids:
        assert max(len(g["occupancy"]), len(g["levels_histogram"]), len(g["first_sample_occupancy"])) <= MAX_BINS
        assert sum(g["occupancy"]) == 3000 * sum(g["first_sample_occupancy"])  # binned, not cut: every value kept
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.validate(doc, json.loads(SCHEMA.read_text()))  # which bounds the histograms' lengths
