"""The DenseNet pair (80 vs 200 classes, trained on real digits in a session fixture), its quantized versions, and an
independent measurement of each quantized model: Keras for the float logits, LiteRT directly for the quantized ones."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.compare.densenet_pair import TrainedModel, digit_pool, make_split, train_pair

SCHEMES = ("dynamic-per-tensor", "int8-io")
CALIB_PER_CLASS = 1  # calibration composites per class for the int8 schemes (train digits, not the held-out ones)


@dataclass(frozen=True)
class Measured:
    """What one quantized model does on its held-out data, measured without quantdoctor's runner."""

    float_logits: np.ndarray  # (N, C) from Keras
    quant_logits: np.ndarray  # (N, C) from LiteRT, dequantized
    labels: np.ndarray
    tflite: Path
    convert_seconds: float


@pytest.fixture(scope="session")
def densenet_pair(tmp_path_factory) -> tuple[TrainedModel, TrainedModel]:
    return train_pair(tmp_path_factory.mktemp("densenet_pair"))


@pytest.fixture(scope="session")
def quantized(densenet_pair, tmp_path_factory):
    """scheme -> (Measured A, Measured B), converted on first use and kept for the session."""
    cache: dict[str, tuple[Measured, Measured]] = {}
    folder = tmp_path_factory.mktemp("quantized")

    def get(scheme: str) -> tuple[Measured, Measured]:
        if scheme not in cache:
            a, b = (_quantize_and_measure(m, scheme, folder) for m in densenet_pair)
            cache[scheme] = (a, b)
        return cache[scheme]

    return get


def _quantize_and_measure(model: TrainedModel, scheme: str, folder: Path) -> Measured:
    import keras

    from quantdoctor.quantize.converter import convert

    keras_model = keras.models.load_model(model.model_path)
    calib_x, _ = make_split(model.num_classes, CALIB_PER_CLASS, digit_pool().train, seed=3)

    def calibration():
        for i in range(len(calib_x)):
            yield calib_x[i : i + 1]

    start = time.perf_counter()
    data = convert(keras_model, scheme, calibration)
    seconds = time.perf_counter() - start
    path = folder / f"densenet{model.num_classes}_{scheme}.tflite"
    path.write_bytes(data)
    held = np.load(model.data_path)
    x, y = held["x"], held["y"]
    return Measured(keras_model.predict(x, verbose=0, batch_size=256), litert_outputs(path, x), y, path, seconds)


def litert_outputs(path: Path, x: np.ndarray, batch: int = 64) -> np.ndarray:
    """Run a .tflite with LiteRT's builtin kernels, quantizing int8 inputs and dequantizing int8 outputs by hand.

    Builtin kernels, as diagnose uses: with the default XNNPACK delegate a dynamic-range model computes differently
    (measured on this pair: 5 of 800 top-1 decisions differ under dynamic-per-tensor).
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    builtin = OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    interp = Interpreter(model_path=str(path), experimental_op_resolver_type=builtin)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    interp.resize_tensor_input(inp["index"], [batch, *x.shape[1:]])
    interp.allocate_tensors()
    rows = []
    for start in range(0, len(x), batch):
        s = x[start : start + batch]
        n = len(s)
        s = np.concatenate([s, np.zeros((batch - n, *s.shape[1:]), s.dtype)]) if n < batch else s
        if inp["dtype"] != np.float32:
            scale, zero = inp["quantization"]
            info = np.iinfo(inp["dtype"])
            s = np.clip(np.round(s / scale) + zero, info.min, info.max).astype(inp["dtype"])
        interp.set_tensor(inp["index"], s)
        interp.invoke()
        o = interp.get_tensor(out["index"])[:n]
        if out["dtype"] != np.float32:
            scale, zero = out["quantization"]
            o = (o.astype(np.float64) - zero) * scale
        rows.append(np.asarray(o, dtype=np.float64))
    return np.concatenate(rows)
