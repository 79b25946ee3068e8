"""Tiny float ONNX models built with onnx.helper from a fixed seed, and their ONNX Runtime quantizations (cached)."""

from __future__ import annotations

import functools

import numpy as np

from quantdoctor.quantize.onnxrt import ORT_SCHEMES, quantize_onnx

CHANNELS, SIZE, CLASSES = 3, 10, 7
STATIC_SCHEMES = tuple(n for n in ORT_SCHEMES.names() if ORT_SCHEMES.get(n).mode == "static")
SCHEMES = tuple(ORT_SCHEMES.names())
MODELS = ("chain", "branchy")


def _model(nodes, inits, batch, out_channels=CLASSES) -> bytes:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [batch, CHANNELS, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, out_channels])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _weights(rng, specs):
    from onnx import numpy_helper

    return [numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)
            for name, shape, scale in specs]


@functools.cache
def float_model(kind: str) -> bytes:
    """"chain": Conv-Relu-Conv-Relu-GlobalAveragePool-Flatten-Gemm with a fixed batch of 1 (as exported);
    "branchy": Conv-Relu, a residual Conv-Add, a Concat of two branches, GAP, Gemm, with a symbolic batch."""
    from onnx import helper

    rng = np.random.default_rng(7 if kind == "chain" else 11)
    node = helper.make_node
    if kind == "chain":
        nodes = [
            node("Conv", ["image", "w1", "b1"], ["conv1"], name="conv1", pads=[1, 1, 1, 1]),
            node("Relu", ["conv1"], ["relu1"], name="relu1"),
            node("Conv", ["relu1", "w2", "b2"], ["conv2"], name="conv2", pads=[1, 1, 1, 1], strides=[2, 2]),
            node("Relu", ["conv2"], ["relu2"], name="relu2"),
            node("GlobalAveragePool", ["relu2"], ["gap"], name="gap"),
            node("Flatten", ["gap"], ["flat"], name="flat"),
            node("Gemm", ["flat", "wf", "bf"], ["logits"], name="fc", transB=1),
        ]
        inits = _weights(rng, [("w1", (16, CHANNELS, 3, 3), 0.3), ("b1", (16,), 0.1), ("w2", (24, 16, 3, 3), 0.15),
                               ("b2", (24,), 0.1), ("wf", (CLASSES, 24), 0.4), ("bf", (CLASSES,), 0.1)])
        return _model(nodes, inits, 1)
    nodes = [
        node("Conv", ["image", "w1", "b1"], ["stem"], name="stem", pads=[1, 1, 1, 1]),
        node("Relu", ["stem"], ["stem_relu"], name="stem_relu"),
        node("Conv", ["stem_relu", "w2", "b2"], ["res_conv"], name="res_conv", pads=[1, 1, 1, 1]),
        node("Add", ["stem_relu", "res_conv"], ["res_add"], name="res_add"),
        node("Conv", ["res_add", "w3", "b3"], ["branch"], name="branch"),
        node("Concat", ["res_add", "branch"], ["cat"], name="cat", axis=1),
        node("GlobalAveragePool", ["cat"], ["gap"], name="gap"),
        node("Flatten", ["gap"], ["flat"], name="flat"),
        node("Gemm", ["flat", "wf", "bf"], ["logits"], name="fc", transB=1),
    ]
    inits = _weights(rng, [("w1", (12, CHANNELS, 3, 3), 0.3), ("b1", (12,), 0.1), ("w2", (12, 12, 3, 3), 0.1),
                           ("b2", (12,), 0.1), ("w3", (8, 12, 1, 1), 0.3), ("b3", (8,), 0.1),
                           ("wf", (CLASSES, 20), 0.3), ("bf", (CLASSES,), 0.1)])
    return _model(nodes, inits, "batch")


def sample_input(n: int = 5, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, CHANNELS, SIZE, SIZE)).astype(np.float32)


def calibration_batches() -> list[np.ndarray]:
    return [sample_input(6, seed) for seed in range(20, 24)]


@functools.cache
def quantized(kind: str, scheme: str, calib_method: str = "minmax") -> bytes:
    batches = calibration_batches()
    return quantize_onnx(float_model(kind), scheme, lambda: iter(batches), calib_method=calib_method)


@functools.cache
def qoperator(kind: str) -> bytes:
    """The QOperator format (QLinearConv, com.microsoft QLinearAdd/QGemm...), quantized with ORT directly."""
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import QuantFormat, quantize_static

    class Reader:
        def __init__(self):
            self.it = iter([{"image": b} for b in calibration_batches()])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, out = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        src.write_bytes(float_model(kind))
        quantize_static(str(src), str(out), Reader(), quant_format=QuantFormat.QOperator, per_channel=True)
        return out.read_bytes()
