"""Session-scoped fixtures writing real-but-tiny non-classifier models and their data to disk.

Use them from a test module (or a folder's conftest.py) with `from tests.task_models import *`; each yields a
`TaskFiles` (paths). Every model is trained on `quantdoctor.demo.digits` scenes from fixed seeds; timings on 2 cores:

- `detector_files`: detector.keras from `train_detector` (3000 "train" canvases x 8 epochs, ~22 s, held-out F1 ~0.91);
  detector_640.keras, the same weights with boxes in pixels of a 640x640 frame (`box_scale=10`); detector.onnx, the
  torch port of the same weights (`detector_torch`, NCHW input "image", output "detections"). detector.npz: `x`
  (300 held-out "test" canvases, seed 1, NHWC), `x_nchw`, `calibration` (64 "train" canvases, seed 2), `masks`, and
  `boxes` as (k, 6) int32 rows [image, class, x1, y1, x2, y2] in canvas pixels (`digits.load_npz` rebuilds the
  scenes; multiply boxes by 10 for detector_640).
- `segmenter_files`: segmenter.keras from `train_segmenter` (1500 canvases x 5 epochs, ~20 s, pixel accuracy ~0.97);
  segmenter.npz: `x` (300 held-out canvases), `y` (their masks, 0 = background, 1 + digit).
- `two_input_files`: two_input.keras (`two_input_model`, ~6 s, accuracy ~0.84) and two_input.npz keyed by the input
  names, `image` (N, 16, 16, 1) and `features` (N, 8), plus `labels`; two_input.onnx from the seeded, untrained
  `two_input_torch` with inputs `image` (N, 1, 16, 16) and `features`, and two_input_onnx.npz keyed by those.
- `multi_head_files`: multi_head.keras (`multi_head_model`, ~12 s; box/landmark error ~2 px, weak class head ~0.3),
  multi_head.npz: `x` (N, 48, 48, 1), `labels`, `boxes`, `landmarks`; multi_head.onnx from the untrained
  `multi_head_torch` (outputs class_logits, box, landmarks) with multi_head_onnx.npz: `x` (N, 1, 48, 48).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

__all__ = ["TaskFiles", "detector_files", "segmenter_files", "two_input_files", "multi_head_files"]

DETECTOR_BOX_SCALE_640 = 10.0


@dataclass(frozen=True)
class TaskFiles:
    """Paths of one task model: the Keras file, its data, and (where built) an ONNX file with its own data."""

    keras: Path
    data: Path
    onnx: Path | None = None
    onnx_data: Path | None = None
    extra: tuple[Path, ...] = ()


@functools.lru_cache(maxsize=1)
def detector_weights() -> tuple[np.ndarray, ...]:
    """The trained detector's weights (trained once per session)."""
    from quantdoctor.demo.digit_models import train_detector
    from quantdoctor.demo.digits import digit_canvases

    return tuple(train_detector(digit_canvases(3000, seed=0, split="train"), epochs=8, seed=0).get_weights())


def trained_detector(box_scale: float = 1.0):
    """The trained detector as a Keras model, boxes in pixels of a frame `box_scale` times the canvas."""
    from quantdoctor.demo.digit_models import detector_architecture

    model = detector_architecture(0, box_scale)
    model.set_weights(list(detector_weights()))
    return model


def held_out_scenes(n: int = 300):
    from quantdoctor.demo.digits import digit_canvases

    return digit_canvases(n, seed=1, split="test")


def _export(module, example, path: Path, input_names, output_names) -> Path:
    from quantdoctor.backends.torch.export import export_onnx

    proto, _ = export_onnx(module, example, input_names=input_names, output_names=output_names)
    path.write_bytes(proto)
    return path


@pytest.fixture(scope="session")
def detector_files(tmp_path_factory) -> TaskFiles:
    from quantdoctor.demo.digit_models import detector_torch
    from quantdoctor.demo.digits import digit_canvases

    folder = tmp_path_factory.mktemp("detector")
    scenes, calibration = held_out_scenes(), digit_canvases(64, seed=2, split="train")
    model = trained_detector()
    model.save(folder / "detector.keras")
    trained_detector(DETECTOR_BOX_SCALE_640).save(folder / "detector_640.keras")
    nchw = scenes.images.transpose(0, 3, 1, 2)
    np.savez_compressed(folder / "detector.npz", x=scenes.images, x_nchw=nchw, calibration=calibration.images,
                        masks=scenes.masks, boxes=scenes.flat_boxes())
    onnx = _export(detector_torch(model), nchw[:2], folder / "detector.onnx", ["image"], ["detections"])
    return TaskFiles(folder / "detector.keras", folder / "detector.npz", onnx, folder / "detector.npz",
                     (folder / "detector_640.keras",))


@functools.lru_cache(maxsize=1)
def segmenter_weights() -> tuple[np.ndarray, ...]:
    from quantdoctor.demo.digit_models import train_segmenter
    from quantdoctor.demo.digits import digit_canvases

    return tuple(train_segmenter(digit_canvases(1500, seed=0, split="train"), epochs=5, seed=0).get_weights())


def trained_segmenter():
    from quantdoctor.demo.digit_models import segmenter_architecture

    model = segmenter_architecture(0)
    model.set_weights(list(segmenter_weights()))
    return model


@pytest.fixture(scope="session")
def segmenter_files(tmp_path_factory) -> TaskFiles:
    folder = tmp_path_factory.mktemp("segmenter")
    scenes = held_out_scenes()
    trained_segmenter().save(folder / "segmenter.keras")
    np.savez_compressed(folder / "segmenter.npz", x=scenes.images, y=scenes.masks)
    return TaskFiles(folder / "segmenter.keras", folder / "segmenter.npz")


@pytest.fixture(scope="session")
def two_input_files(tmp_path_factory) -> TaskFiles:
    from quantdoctor.demo.digit_models import single_digits, two_input_model, two_input_torch

    folder = tmp_path_factory.mktemp("two_input")
    images, features, labels = single_digits("test")
    model = two_input_model(0)
    model.save(folder / "two_input.keras")
    names = [t.name for t in model.inputs]
    np.savez_compressed(folder / "two_input.npz", **dict(zip(names, (images, features))), labels=labels)
    nchw = images.transpose(0, 3, 1, 2)
    onnx = _export(two_input_torch(0), (nchw[:2], features[:2]), folder / "two_input.onnx",
                   ["image", "features"], ["logits"])
    np.savez_compressed(folder / "two_input_onnx.npz", image=nchw, features=features)
    return TaskFiles(folder / "two_input.keras", folder / "two_input.npz", onnx, folder / "two_input_onnx.npz")


@pytest.fixture(scope="session")
def multi_head_files(tmp_path_factory) -> TaskFiles:
    from quantdoctor.demo.digit_models import MULTI_HEAD_OUTPUTS, crops, multi_head_model, multi_head_torch

    folder = tmp_path_factory.mktemp("multi_head")
    images, labels, boxes, landmarks = crops(200, seed=5, split="test")
    multi_head_model(0).save(folder / "multi_head.keras")
    np.savez_compressed(folder / "multi_head.npz", x=images, labels=labels, boxes=boxes, landmarks=landmarks)
    nchw = images.transpose(0, 3, 1, 2)
    onnx = _export(multi_head_torch(0), nchw[:2], folder / "multi_head.onnx", ["image"], list(MULTI_HEAD_OUTPUTS))
    np.savez_compressed(folder / "multi_head_onnx.npz", x=nchw)
    return TaskFiles(folder / "multi_head.keras", folder / "multi_head.npz", onnx, folder / "multi_head_onnx.npz")
