"""Tiny models for repair tests: the shared tiny model with centred logits (so predictions vary and agreement can
fail), and the same model with a planted fault that only per-tensor int8 weights suffer from."""

from __future__ import annotations

import pytest

from tests.conftest import build_tiny_model, tiny_data


def _centred():
    model = build_tiny_model()
    x, _ = tiny_data()
    logits = model.get_layer("logits")
    kernel, bias = logits.get_weights()
    logits.set_weights([kernel, bias - model.predict(x, verbose=0).mean(0)])  # every class predicted somewhere
    return model


@pytest.fixture(scope="session")
def centred_model_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("repair") / "centred.keras"
    _centred().save(path)
    return path


@pytest.fixture(scope="session")
def planted_model_path(tmp_path_factory):
    """fc's output channel 0 scaled ×100 and the next layer's row 0 ÷100: the float function is unchanged (ReLU commutes
    with a positive scale), but one scale per weight tensor leaves fc's other 63 channels on a grid 100× too coarse."""
    model = _centred()
    fc, logits = model.get_layer("fc"), model.get_layer("logits")
    k, b = fc.get_weights()
    k[:, 0] *= 100.0
    b[0] *= 100.0
    fc.set_weights([k, b])
    k2, b2 = logits.get_weights()
    k2[0] /= 100.0
    logits.set_weights([k2, b2])
    path = tmp_path_factory.mktemp("repair") / "planted.keras"
    model.save(path)
    return path


