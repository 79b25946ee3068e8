"""The model's inputs and outputs as diagnose reads them: input specs for the data, the float ↔ quantized output
pairs, the quantization scale behind each output, and the example input a task's figure is drawn on."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from quantdoctor.backends.base import Graph, TensorSpec

THUMBNAIL = 256  # longest side of the example image kept in the report


def input_specs(inputs: Sequence[TensorSpec]):
    """What `load_dataset` takes: the one input's shape, or an `InputSpecs` for several inputs."""
    from quantdoctor.data.multi import InputSpecs

    if len(inputs) == 1:
        return tuple(inputs[0].shape)
    return InputSpecs(tuple(i.name for i in inputs), tuple(tuple(i.shape) for i in inputs))


def in_input_order(dataset, runner):
    """A dataset of several inputs reordered to the runner's inputs (matched by name); any other dataset as it is."""
    from quantdoctor.data.multi import MultiDataset

    if isinstance(dataset, MultiDataset):
        return dataset.ordered_as([i.name for i in runner.inputs()])
    return dataset


def class_output(outputs: Sequence[TensorSpec], options: Any) -> int:
    """Which output holds the class scores: `options.class_output`, else the first vector of ≥ 2 entries."""
    if options is not None and options.class_output is not None:
        return int(options.class_output)
    for i, o in enumerate(outputs):
        if len(o.shape) == 1 and o.shape[0] >= 2:
            return i
    return 0


def output_pairs(float_graph: Graph, quant_graph: Graph) -> tuple[list[int], list[int]]:
    """The graph outputs of both models, position by position (both list them in the source model's order)."""
    return list(float_graph.outputs), list(quant_graph.outputs)


def output_scales(graph: Graph, outputs: Sequence[int]) -> list[float | None]:
    """The per-tensor quantization scale each output was stored with (through a final dequantize op), None if float.

    A full-integer model with float outputs ends in a DEQUANTIZE (TFLite) or DequantizeLinear (QDQ): the scale of
    its input is the grid the output was computed on.
    """
    out: list[float | None] = []
    for t in outputs:
        info = graph.tensors[t]
        if info.quant is None and info.producer is not None:
            op = graph.op(info.producer)
            if graph.is_conversion(op) and op.inputs and op.inputs[0] >= 0:
                info = graph.tensors[op.inputs[0]]
        q = info.quant
        out.append(float(q.scales[0]) if q is not None and len(q.scales) == 1 else None)
    return out


def with_example_input(result, dataset):
    """The task result with its example sample's input attached as a small PNG, when it has an image example."""
    example = result.details.get("example")
    if not isinstance(example, dict) or "sample" not in example:
        return result
    found = example_image(dataset, int(example["sample"]))
    if found is None:
        return result
    image, size = found
    extra = {"image": image}
    boxes = [b for side in ("float", "quant") for b in example.get(side, ())]
    if all(max(b[0], b[2]) <= size[1] * 1.05 and max(b[1], b[3]) <= size[0] * 1.05 for b in boxes):
        extra["size"] = list(size)  # boxes in input pixels (else in another frame, e.g. the source image's)
    return replace(result, details={**result.details, "example": {**example, **extra}})


def example_image(dataset, position: int) -> tuple[str, tuple[int, int]] | None:
    """Sample `position` of the dataset as a base64 PNG (at most `THUMBNAIL` px a side) and the input's (height,
    width), which box coordinates refer to; None if the sample is not an image.

    The preprocessed sample is rescaled to 0..255 by its own range, so any preset draws.
    """
    from PIL import Image

    if position < 0 or position >= len(dataset):
        return None
    x, _ = next(dataset.batches(1, np.array([position])))
    if isinstance(x, tuple):
        images = [a for a in x if a.ndim == 4]
        if len(images) != 1:
            return None
        x = images[0]
    sample = np.asarray(x[0], dtype=np.float32)
    if sample.ndim != 3:
        return None
    if sample.shape[0] in (1, 3) and sample.shape[2] not in (1, 3):  # channels first
        sample = sample.transpose(1, 2, 0)
    if sample.shape[2] not in (1, 3):
        return None
    lo, hi = float(np.nanmin(sample)), float(np.nanmax(sample))
    pixels = np.zeros_like(sample) if hi <= lo else (sample - lo) / (hi - lo) * 255.0
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    size = (int(sample.shape[0]), int(sample.shape[1]))
    image = Image.fromarray(pixels[..., 0] if pixels.shape[2] == 1 else pixels)
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii"), size
