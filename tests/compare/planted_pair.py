"""The DenseNet pair of densenet_pair.py with a planted downstream fault in the 200-class model.

The user story: A (80 classes) quantizes fine, B (200 classes) collapses under `dynamic-per-tensor`, and the cause is
one conv whose per-tensor weight scale is set by a single output channel. We plant exactly that in the trained B: one
output channel of one conv is multiplied by `factor`, and every BatchNormalization that reads that channel undoes it
(moving mean ×factor, moving variance so that var + eps grows by factor²), so the float model computes the same
function; with a power-of-two factor the float logits are bit-identical.

Where it can be planted: the fault must survive the converter. A conv followed directly by its own BN (the bottleneck
`*_conv1`) does not work: the converter folds the BN into the conv, and a compensating BN folds the factor right back
out (and `block*_1_conv1`, 24 -> 32 = 768 weights, is not even quantized by dynamic range). Compensating after the ReLU
instead (the next conv's input channel ÷ factor) would feed a ×factor channel into the next hybrid op, whose input the
kernel quantizes per sample with one scale: an activation outlier, a second fault. So the planted conv is one whose
output reaches BatchNormalizations only through channel-preserving ops (AveragePooling2D, Concatenate): a dense
block's `*_conv2` (3x3, 32 -> 12, 3456 weights) or the transition `pool1_conv` (1x1, 48 -> 24, 1152 weights). Those
BNs follow a concatenation or a pool, so the converter keeps them as float MUL/ADD: the only trace of the plant in the
quantized graph is the conv's weight tensor, whose one channel is `factor` times the widest channel it had. Under
per-tensor int8 that channel sets the scale and the other channels fall to a few levels; under per-channel int8
(`dynamic`) nothing changes.

The default, `block1_2_conv2` ×64 (the last conv of block 1; its output channel 0 is undone by `pool1_bn`, channel 36):
77 % of the other 11 channels' weights round to 0, each keeps 3-4 levels. The op's own output is dominated by the ×64
channel, so its isolated SQNR stays high (33 dB); the error shows where `pool1_bn` divides that channel back
(accumulated SQNR 31.9 -> 10.3 dB at that MUL). Measured with seed 0 on 2 cores (LiteRT builtin kernels, 1000
held-out samples): top-1 agreement under dynamic-per-tensor 0.985 unplanted, 0.664 planted, 0.987 with only
block1_2_conv2 kept float (or per-channel, via ai-edge-quantizer); A (800 samples) 0.994. The agreement is not
monotone in the factor (which small weights cross a rounding threshold decides it): with seed 0 it is 0.89 at ×30,
0.62-0.69 from ×55 to ×80, then 0.27 at ×90; seeds 1 and 2 give 0.80 and 0.81 at ×64 (0.98 unplanted).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from tests.compare.densenet_pair import RECIPES, TrainedModel, digit_pool, train_one

PLANTED_LAYER = "block1_2_conv2"
PLANTED_FACTOR = 64.0


@dataclass(frozen=True)
class Plant:
    """What was planted: `layer`'s output `channel` ×`factor`, undone by the `compensated` BNs (name -> channel)."""

    layer: str
    channel: int
    factor: float
    compensated: dict[str, int]
    float_max_rel_diff: float  # max |planted - unplanted| / max |unplanted| float logit on the held-out data


def _consumers(model) -> dict[int, list]:
    """id(KerasTensor) -> the layers that take it as an input."""
    out: dict[int, list] = {}
    for layer in model.layers:
        for node in layer._inbound_nodes:
            for t in node.input_tensors:
                out.setdefault(id(t), []).append(layer)
    return out


def _reading_bns(model, layer_name: str) -> list[tuple[object, int]]:
    """The BatchNormalization layers that read `layer_name`'s output, each with the offset of that output's channel 0
    in the BN's input, following AveragePooling2D / MaxPooling2D (offset unchanged) and Concatenate (offset shifted).

    Raises ValueError when the output reaches any other layer (the plant would not be undone exactly), or a BN directly
    (the converter would fold the plant away)."""
    from keras import layers

    consumers = _consumers(model)
    found: list[tuple[object, int]] = []
    source = model.get_layer(layer_name).output
    todo = [(source, 0)]
    while todo:
        tensor, offset = todo.pop()
        for user in consumers.get(id(tensor), []):
            if isinstance(user, layers.BatchNormalization):
                if tensor is source:
                    raise ValueError(f"{user.name} reads {layer_name} directly: the converter folds it into the conv, "
                                     "and the plant with it")
                found.append((user, offset))
            elif isinstance(user, (layers.AveragePooling2D, layers.MaxPooling2D)):  # commute with a positive scale
                todo.append((user.output, offset))
            elif isinstance(user, layers.Concatenate):
                before = 0
                for t in user.input:
                    if t is tensor:
                        break
                    before += int(t.shape[-1])
                todo.append((user.output, offset + before))
            else:
                raise ValueError(f"{layer_name}'s output reaches {user.name} ({type(user).__name__}), not only BNs")
    if not found:
        raise ValueError(f"no BatchNormalization reads {layer_name}'s output: nothing would undo the plant")
    return found


def plant(model, layer_name: str = PLANTED_LAYER, factor: float = PLANTED_FACTOR, channel: int | None = None) -> Plant:
    """Multiply one output channel of conv `layer_name` by `factor` in place and undo it in every BN that reads it.

    `channel` defaults to the channel with the widest weight range, so the per-tensor range grows by exactly `factor`.
    For a BN reading the channel as x' = factor·x: moving_mean' = factor·mean and moving_variance' chosen so that
    var' + eps = factor²·(var + eps), which makes gamma·(x' − mean')/sqrt(var' + eps) + beta exact.
    """
    if not factor > 0:
        raise ValueError(f"factor must be positive (ReLU and pooling commute with a positive scale only), got {factor}")
    conv = model.get_layer(layer_name)
    weights = conv.get_weights()
    kernel = weights[0]
    ranges = np.abs(kernel.reshape(-1, kernel.shape[-1])).max(axis=0)
    channel = int(np.argmax(ranges)) if channel is None else int(channel)
    bns = _reading_bns(model, layer_name)  # before changing anything: raises on an unsupported graph
    kernel = kernel.copy()
    kernel[..., channel] *= factor
    weights[0] = kernel
    if len(weights) > 1:  # bias
        weights[1] = weights[1].copy()
        weights[1][channel] *= factor
    conv.set_weights(weights)
    compensated = {}
    for bn, offset in bns:
        if not (bn.center and bn.scale):
            raise ValueError(f"{bn.name}: a BN without gamma or beta is not supported")
        gamma, beta, mean, var = (w.astype(np.float64) for w in bn.get_weights())
        c = offset + channel
        eps = float(bn.epsilon)
        mean[c] *= factor
        var[c] = factor**2 * (var[c] + eps) - eps
        bn.set_weights([w.astype(np.float32) for w in (gamma, beta, mean, var)])
        compensated[bn.name] = c
    return Plant(layer_name, channel, float(factor), compensated, float("nan"))


@dataclass(frozen=True)
class PlantedPair:
    """Everything `planted_pair_full` made."""

    a: TrainedModel | None  # 80 classes, no plant (None when not trained)
    b: TrainedModel  # 200 classes, planted (densenet200_planted.keras)
    b_unplanted: TrainedModel  # B before planting (densenet200.keras): the counterfactual "fixed" model
    plant: Plant


def planted_pair(
    out_dir: Path, seed: int = 0, layer: str = PLANTED_LAYER, factor: float = PLANTED_FACTOR
) -> tuple[TrainedModel, TrainedModel, str]:
    """Train A (80 classes) and B (200 classes) as `train_pair` does, plant the fault in B; return (A, B, layer).

    Files in `out_dir`: densenet80.keras + digits80.npz (A), densenet200_planted.keras + digits200.npz (B), and
    densenet200.keras (B before planting). `planted_pair_full` returns all of it with what was planted.
    """
    made = planted_pair_full(out_dir, seed=seed, layer=layer, factor=factor)
    assert made.a is not None
    return made.a, made.b, made.plant.layer


def planted_pair_full(
    out_dir: Path, seed: int = 0, layer: str = PLANTED_LAYER, factor: float = PLANTED_FACTOR, train_a: bool = True
) -> PlantedPair:
    """`planted_pair` with the unplanted B and the `Plant` record; `train_a=False` trains B only (a is None)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pool = digit_pool(seed)
    recipe_a, recipe_b = RECIPES  # the same recipes, seeds and order as train_pair: A and B are train_pair's models
    a = train_one(recipe_a, pool, out_dir, seed)[0] if train_a else None
    b_unplanted, model, xt = train_one(recipe_b, pool, out_dir, seed)
    before = model.predict(xt, verbose=0, batch_size=256)
    start = time.perf_counter()
    p = plant(model, layer, factor)
    after = model.predict(xt, verbose=0, batch_size=256)
    diff = float(np.max(np.abs(after - before)) / np.max(np.abs(before)))
    if not diff < 1e-4:
        raise AssertionError(f"planting {layer} ×{factor} changed the float logits by {diff:.2e} (relative)")
    if not np.array_equal(np.argmax(after, axis=1), np.argmax(before, axis=1)):
        raise AssertionError(f"planting {layer} ×{factor} changed a float top-1 decision")
    planted_path = out_dir / f"densenet{recipe_b.num_classes}_planted.keras"
    model.save(planted_path)
    seconds = b_unplanted.train_seconds + time.perf_counter() - start
    b = replace(b_unplanted, model_path=planted_path, train_seconds=seconds)
    return PlantedPair(a, b, b_unplanted, replace(p, float_max_rel_diff=diff))


def _main(out_dir: str) -> None:
    """Train, plant and measure top-1 agreement under dynamic-per-tensor with LiteRT's builtin kernels."""
    import keras

    from quantdoctor.quantize.converter import convert
    from tests.compare.conftest import litert_outputs

    start = time.perf_counter()
    made = planted_pair_full(Path(out_dir))
    print(f"trained and planted in {time.perf_counter() - start:.1f} s: {made.plant}")
    for name, m in (("A (80)", made.a), ("B unplanted", made.b_unplanted), ("B planted", made.b)):
        model = keras.models.load_model(m.model_path)
        x = np.load(m.data_path)["x"]
        path = m.model_path.with_suffix(".dynamic-per-tensor.tflite")
        path.write_bytes(convert(model, "dynamic-per-tensor"))
        agreement = np.mean(litert_outputs(path, x).argmax(1) == model.predict(x, verbose=0).argmax(1))
        print(f"{name}: float top-1 {m.heldout_accuracy:.3f}, dynamic-per-tensor top-1 agreement {agreement:.3f}")


if __name__ == "__main__":
    import sys

    _main(sys.argv[1] if len(sys.argv) > 1 else "planted_pair_out")
