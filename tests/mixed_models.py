"""Tiny planted models for the `mixed_ranges` mechanism (tests/diagnose/test_mixed_ranges.py): a detector-style head
that concatenates a wide-range branch ("boxes", 0..300) with class scores in 0..1, so int8 gives both one scale.

The classifier trains in a second or two on scikit-learn's real 8x8 digits (flattened, in [0, 1]): a ReLU trunk,
sigmoid class scores and a dense head on them. The planted model reuses those trained layers and concatenates the
scores with a sigmoid×`box_scale` branch before the head; the head's weights on the box part are tiny, so the float
decisions still come from the scores, and an int8 concat whose step is ≈ box_scale/255 leaves the scores 0 or 1 level.
"""

from __future__ import annotations

import functools

import numpy as np

CLASSES = 10
FEATURES = 64
BOX_SCALE = 1000.0
SCORE_PENALTY = 0.05


def digits_flat(n_train: int = 1400) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as 64 features in [0, 1]: (x_train, y_train, x_test, y_test), fixed shuffle."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], d.target[order].astype(np.int64)
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


@functools.lru_cache(maxsize=1)
def _trained_weights() -> tuple:
    import keras

    x, y, _, _ = digits_flat()
    model = _classifier()
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, y, batch_size=32, epochs=12, verbose=0)
    return tuple(model.get_weights())


def _classifier(seed: int = 0):
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inp = keras.Input((FEATURES,), name="pixels")
    h = layers.Dense(32, activation="relu", name="trunk")(inp)
    # The penalty on the pre-activations keeps the scores graded (not saturated at 0 or 1): they carry the decision.
    z = layers.Dense(CLASSES, activity_regularizer=keras.regularizers.L2(SCORE_PENALTY), name="scores_pre")(h)
    scores = layers.Activation("sigmoid", name="scores")(z)
    out = layers.Dense(CLASSES, name="logits")(scores)
    return keras.Model(inp, out, name="scores_only")


def mixed_head_model(box_scale: float = BOX_SCALE, seed: int = 0):
    """The trained scores classifier with a box branch (sigmoid × box_scale, 4 values) concatenated before the head.

    The head reads [boxes, scores]; its box rows are 1e-4/box_scale-small so the float decisions stay the scores'.
    With box_scale = 1 the two ranges match: the healthy control.
    """
    import keras
    from keras import layers

    trained = _classifier()
    trained.set_weights(list(_trained_weights()))
    keras.utils.set_random_seed(seed + 1)
    inp = keras.Input((FEATURES,), name="pixels")
    h = trained.get_layer("trunk")(inp)
    scores = trained.get_layer("scores")(trained.get_layer("scores_pre")(h))
    boxes = layers.Dense(4, activation="sigmoid", name="boxes")(h)
    boxes = layers.Rescaling(box_scale, name="boxes_px")(boxes)
    both = layers.Concatenate(name="head_concat")([boxes, scores])
    head = layers.Dense(CLASSES, name="logits")
    out = head(both)
    model = keras.Model(inp, out, name="mixed_head")
    w, b = trained.get_layer("logits").get_weights()
    rng = np.random.default_rng(seed)
    box_rows = rng.normal(0.0, 1e-4 / box_scale, size=(4, CLASSES)).astype(np.float32)
    head.set_weights([np.concatenate([box_rows, w], axis=0), b])
    return model


def mixed_data(n: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """Held-out digits the classifier was not trained on."""
    _, _, x, y = digits_flat()
    return x[:n], y[:n]
