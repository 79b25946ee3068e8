"""One calibrated conversion gives both the float reference and the same int8 model a plain conversion gives."""

from __future__ import annotations

import numpy as np
import pytest

from quantdoctor.quantize.converter import convert, convert_calibrated_pair, supports_calibrated_pair
from tests.conftest import build_tiny_model, tiny_data


def _run(model: bytes, x: np.ndarray) -> np.ndarray:
    from quantdoctor.backends.tflite.runner import TfliteRunner

    return TfliteRunner(model, len(x)).run(x)


@pytest.fixture(scope="module")
def model_and_data():
    x, _ = tiny_data(24)

    def calibration():
        for i in range(12):
            yield x[i : i + 1]

    return build_tiny_model(), x, calibration


def test_only_full_integer_int8_schemes_support_the_pair():
    assert [s for s in ("dynamic", "int8", "int8-io", "int8-per-tensor", "int16x8", "float16") if supports_calibrated_pair(s)] == [
        "int8", "int8-io", "int8-per-tensor"
    ]


@pytest.mark.parametrize("scheme", ["int8", "int8-io"])
def test_pair_matches_plain_conversion(model_and_data, scheme):
    model, x, calibration = model_and_data
    float_ref, quantized = convert_calibrated_pair(model, scheme, calibration)
    plain = convert(model, scheme, calibration)
    np.testing.assert_array_equal(_run(quantized, x[12:]), _run(plain, x[12:]))
    keras_out = model.predict(x[12:], verbose=0)
    np.testing.assert_allclose(_run(float_ref, x[12:]), keras_out, atol=1e-5)
