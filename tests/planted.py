"""Planted faults shared by the explain (tests/diagnose/test_findings.py) and repair (tests/repair/) tests.

The model, trained in seconds on scikit-learn's real digits, is plain on purpose (no depthwise: LiteRT's hybrid per-tensor depthwise kernel is itself a fault, tested in
tests/diagnose/test_explain.py): stem conv-BN-ReLU, conv-BN-ReLU (c2), a linear 1x1 projection with BN (proj), a 1x1 conv
small enough (768 weights) that dynamic-range quantization leaves it in float (mix), global pooling and a dense head.
Each `planted_*` function returns (model, scheme, diagnose/repair options, the planted layer, the expected mechanism).
"""

from __future__ import annotations

import functools

import numpy as np

from tests.conftest import TINY_INPUT


CLASSES = 10


def digits(n_train: int = 1400) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 real digits, upsampled to 24x24x3 in [-1, 1]: (x_train, y_train, x_test, y_test)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = np.repeat(np.repeat(d.images.astype(np.float32) / 8.0 - 1.0, 3, axis=1), 3, axis=2)
    x = np.repeat(x[..., None], 3, axis=3)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], d.target[order]
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


@functools.lru_cache(maxsize=1)
def _trained_weights() -> tuple:
    import keras

    x, y, _, _ = digits()
    model = _architecture()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=16, epochs=4, verbose=0)  # ~0.8 held-out accuracy in ~10 s on 2 cores
    return tuple(model.get_weights())


def _architecture(seed: int = 0):
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inp = keras.Input(TINY_INPUT, name="image")
    x = layers.Conv2D(48, 3, strides=2, padding="same", use_bias=False, name="stem")(inp)
    x = layers.BatchNormalization(epsilon=1e-3, name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = layers.Conv2D(48, 3, padding="same", use_bias=False, name="c2")(x)
    x = layers.BatchNormalization(epsilon=1e-3, name="c2_bn")(x)
    x = layers.ReLU(name="c2_relu")(x)
    x = layers.Conv2D(48, 1, use_bias=False, name="proj")(x)
    x = layers.BatchNormalization(epsilon=1e-3, name="proj_bn")(x)
    x = layers.Conv2D(16, 1, name="mix")(x)
    x = layers.ReLU(name="mix_relu")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dense(64, activation="relu", name="fc")(x)
    out = layers.Dense(CLASSES, name="logits")(x)
    return keras.Model(inp, out, name="plain")


def plain_model():
    """The plain model trained on real digits (a few seconds, once per test session)."""
    model = _architecture()
    model.set_weights(list(_trained_weights()))
    return model


def _scale_bn_channels(bn, factors: np.ndarray) -> None:
    """Multiply BN output channels by `factors` (gamma and beta), which scales what the channel carries."""
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([gamma * factors, beta * factors, mean, var])


def _compensate_next_conv(conv, factors: np.ndarray) -> None:
    """Divide the next conv's input-channel weights by `factors`: in float the model computes the same function."""
    weights = conv.get_weights()
    weights[0] = weights[0] / factors.reshape(1, 1, -1, 1)
    conv.set_weights(weights)


def planted_outlier(factor: float = 100.0):
    """One channel of c2's output ×factor (ReLU is homogeneous) and proj divides it back: the float function is unchanged."""
    model = plain_model()
    factors = np.ones(48, np.float32)
    factors[0] = factor
    _scale_bn_channels(model.get_layer("c2_bn"), factors)
    _compensate_next_conv(model.get_layer("proj"), factors)
    return model


def planted_gamma_spread():
    """proj_bn gammas spread ×100 (folded proj weights: channel ranges ×100 apart); mix, left in float under dynamic
    range (768 weights), divides them back."""
    model = plain_model()
    factors = np.logspace(-1, 1, 48).astype(np.float32)
    _scale_bn_channels(model.get_layer("proj_bn"), factors)
    _compensate_next_conv(model.get_layer("mix"), factors)
    return model


def planted_margins():
    """Every logit ≈ 10 with a 1e-3 signal: the margins are far below the output grid's step."""
    model = plain_model()
    head = model.get_layer("logits")
    w, b = head.get_weights()
    head.set_weights([w * 1e-3, np.full_like(b, 10.0)])
    return model


def planted_low_class(offset: float = -1000.0):
    """Class 0's logit shifted by `offset` (its bias): it never wins, but under an integer output (int8-io) its logits
    stretch the output range ~×30, and the grid's step (~4) swallows the other classes' margins."""
    model = plain_model()
    head = model.get_layer("logits")
    w, b = head.get_weights()
    b = b.copy()
    b[0] += offset
    head.set_weights([w, b])
    return model


def planted_data(n: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Held-out digits the model was not trained on."""
    _, _, x, y = digits()
    return x[:n], y[:n]


def shifted_calibration(n: int = 48) -> np.ndarray:
    """Calibration data that covers a fifth of the range the model meets."""
    return 0.2 * digits()[0][:n]


def save_model(model, folder, name: str):
    """Save a planted model as folder/name.keras and return the path."""
    path = folder / f"{name}.keras"
    model.save(path)
    return path
