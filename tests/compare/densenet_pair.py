"""A small DenseNet-style classifier trained on composites of real handwritten digits, at two class counts.

The compare tests reproduce the user story behind `quantdoctor compare`: two models of ONE architecture that differ only
in the number of classes (80 vs 200), both fine in float, quantized the same way. Real images come from scikit-learn's
bundled `load_digits()` (1797 real 8x8 digits, no download): a class is an ordered digit pair "ab" (00-99) in one of two
layouts (side by side, or stacked) on a 16x16 canvas, so 200 classes; the 80-class model learns classes 0-79 (side by
side, first digit 0-7). Train and held-out composites draw their digits from disjoint halves of the digit images, so
the held-out accuracy measures generalisation to unseen handwriting, not memorised pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CANVAS = 16
DIGIT = 8
LAYOUTS = 2  # 0: side by side, 1: stacked
CLASSES_B = 100 * LAYOUTS  # 200
CLASSES_A = 80
GROWTH = 12
# Narrower than DenseNet-BC's 4 x growth: trains in seconds, and every 3x3 kernel still has >= 1024 weights (so
# dynamic-range quantization touches it).
BOTTLENECK = 32
LEARNING_RATE = 8e-3
BATCH = 32  # small batches: 200 classes need many updates more than big ones


@dataclass(frozen=True)
class DigitPool:
    """Real 8x8 digit images in [0, 1], grouped by digit, split into disjoint train / held-out halves."""

    train: tuple[np.ndarray, ...]  # one (n_d, 8, 8) array per digit 0..9
    test: tuple[np.ndarray, ...]


def digit_pool(seed: int = 0, test_share: float = 0.4) -> DigitPool:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype("float32")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(digits.target == d))
        cut = int(round(len(idx) * test_share))
        test.append(images[idx[:cut]])
        train.append(images[idx[cut:]])
    return DigitPool(tuple(train), tuple(test))


def compose(classes: np.ndarray, pool: tuple[np.ndarray, ...], rng: np.random.Generator) -> np.ndarray:
    """One 16x16x1 image per class index: two real digits placed by the class's layout, with a random offset.

    The pair shifts by up to ±3 pixels along the free axis (each digit independently by ±1 more), and every sample
    draws its two digit images at random from `pool`: the augmentation is real handwriting variation.
    """
    n = len(classes)
    x = np.zeros((n, CANVAS, CANVAS), dtype="float32")
    layout, first, second = classes // 100, (classes % 100) // 10, classes % 10
    base = rng.integers(1, 8, size=n)  # free-axis offset of the pair: 1..7 (the digit is 8 wide, canvas 16)
    jitter = rng.integers(-1, 2, size=(n, 2))
    for i in range(n):
        for j, d in enumerate((first[i], second[i])):
            img = pool[d][rng.integers(len(pool[d]))]
            off = int(np.clip(base[i] + jitter[i, j], 0, CANVAS - DIGIT))
            if layout[i] == 0:
                r, c = off, j * DIGIT
            else:
                r, c = j * DIGIT, off
            region = x[i, r : r + DIGIT, c : c + DIGIT]
            np.maximum(region, img, out=region)
    return x[..., None]


def make_split(
    num_classes: int, per_class: int, pool: tuple[np.ndarray, ...], seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """`per_class` composites of each class 0..num_classes-1, shuffled; labels are class indices."""
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.repeat(np.arange(num_classes), per_class))
    return compose(y, pool, rng), y.astype("int64")


def build_densenet(num_classes: int, seed: int = 0, blocks: tuple[int, ...] = (2, 2), stem_stride: int = 2):
    """DenseNet-BC in miniature: stem conv, dense blocks of BN-ReLU-Conv1x1-BN-ReLU-Conv3x3 whose outputs are
    concatenated onto the block's input, BN-ReLU-Conv1x1-AvgPool transitions (compression 0.5), a final BN-ReLU,
    global average pooling and a Dense head that outputs logits.

    Every layer is named by its place in the architecture, so two models built with different `num_classes` share
    every layer name and differ in the head's shape only.
    """
    import keras
    from keras import layers

    keras.utils.set_random_seed(seed)
    inp = keras.Input((CANVAS, CANVAS, 1), name="image")
    x = layers.Conv2D(2 * GROWTH, 3, strides=stem_stride, padding="same", use_bias=False, name="stem_conv")(inp)
    for b, count in enumerate(blocks, start=1):
        for i in range(1, count + 1):
            p = f"block{b}_{i}"
            y = layers.BatchNormalization(epsilon=1.001e-5, momentum=0.9, name=f"{p}_bn1")(x)
            y = layers.ReLU(name=f"{p}_relu1")(y)
            y = layers.Conv2D(BOTTLENECK, 1, use_bias=False, name=f"{p}_conv1")(y)
            y = layers.BatchNormalization(epsilon=1.001e-5, momentum=0.9, name=f"{p}_bn2")(y)
            y = layers.ReLU(name=f"{p}_relu2")(y)
            y = layers.Conv2D(GROWTH, 3, padding="same", use_bias=False, name=f"{p}_conv2")(y)
            x = layers.Concatenate(name=f"{p}_concat")([x, y])
        if b < len(blocks):
            p = f"pool{b}"
            x = layers.BatchNormalization(epsilon=1.001e-5, momentum=0.9, name=f"{p}_bn")(x)
            x = layers.ReLU(name=f"{p}_relu")(x)
            x = layers.Conv2D(int(x.shape[-1]) // 2, 1, use_bias=False, name=f"{p}_conv")(x)
            x = layers.AveragePooling2D(2, name=f"{p}_pool")(x)
    x = layers.BatchNormalization(epsilon=1.001e-5, momentum=0.9, name="final_bn")(x)
    x = layers.ReLU(name="final_relu")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    out = layers.Dense(num_classes, name="logits")(x)
    return keras.Model(inp, out, name="densenet")


def train(model, x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0):
    """Adam with a cosine-decayed learning rate; returns the Keras History."""
    import keras

    keras.utils.set_random_seed(seed)
    steps = epochs * int(np.ceil(len(x) / BATCH))
    lr = keras.optimizers.schedules.CosineDecay(LEARNING_RATE, steps, alpha=0.05)
    model.compile(
        optimizer=keras.optimizers.Adam(lr),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model.fit(x, y, batch_size=BATCH, epochs=epochs, verbose=0, shuffle=True)


@dataclass(frozen=True)
class TrainedModel:
    """One trained classifier as the tests use it: its files, and what was measured when it was made."""

    num_classes: int
    model_path: Path  # .keras
    data_path: Path  # .npz with held-out x (N, 16, 16, 1) and y (N,)
    train_samples: int
    epochs: int
    train_seconds: float
    heldout_accuracy: float  # float top-1 on data_path, measured with Keras


@dataclass(frozen=True)
class Recipe:
    """How much each model trains. 200 classes need more updates per class than 80 to get clearly above chance."""

    num_classes: int
    per_class: int
    epochs: int
    eval_per_class: int


RECIPES = (
    Recipe(CLASSES_A, per_class=24, epochs=8, eval_per_class=10),
    Recipe(CLASSES_B, per_class=16, epochs=10, eval_per_class=5),
)


def train_pair(out_dir: Path, seed: int = 0) -> tuple[TrainedModel, TrainedModel]:
    """Train the 80- and the 200-class model; save each as .keras with an .npz of held-out composites."""
    pool = digit_pool(seed)
    made = [train_one(r, pool, out_dir, seed)[0] for r in RECIPES]
    return made[0], made[1]


def train_one(r: Recipe, pool: DigitPool, out_dir: Path, seed: int = 0):
    """Train one recipe's model and save it with its held-out composites: (TrainedModel, the Keras model, held-out x)."""
    start = time.perf_counter()
    x, y = make_split(r.num_classes, r.per_class, pool.train, seed=seed + 1)
    model = build_densenet(r.num_classes, seed=seed)
    train(model, x, y, r.epochs, seed=seed)
    seconds = time.perf_counter() - start
    xt, yt = make_split(r.num_classes, r.eval_per_class, pool.test, seed=seed + 2)
    accuracy = float(np.mean(np.argmax(model.predict(xt, verbose=0, batch_size=256), axis=1) == yt))
    model_path, data_path = out_dir / f"densenet{r.num_classes}.keras", out_dir / f"digits{r.num_classes}.npz"
    model.save(model_path)
    np.savez(data_path, x=xt, y=yt)
    return TrainedModel(r.num_classes, model_path, data_path, len(x), r.epochs, seconds, accuracy), model, xt
