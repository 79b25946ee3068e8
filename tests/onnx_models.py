"""A small real classifier as a float ONNX model: a two-layer perceptron trained in numpy on scikit-learn's real 8x8
digits (no framework, a second), written with onnx.helper; optionally with a planted activation outlier."""

from __future__ import annotations

import functools

import numpy as np

HIDDEN = 48


@functools.lru_cache(maxsize=1)
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(x_train, y_train, x_test, y_test): 8x8 digits as (N, 1, 8, 8) float32 in [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], d.target[order]
    return x[:1300], y[:1300], x[1300:], y[1300:]


@functools.lru_cache(maxsize=1)
def trained_mlp() -> tuple[np.ndarray, ...]:
    """(w1, b1, w2, b2) of flatten → dense(HIDDEN) → relu → dense(10), trained by full-batch gradient descent."""
    x, y, _, _ = digits()
    x = x.reshape(len(x), -1)
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.15, (64, HIDDEN)).astype(np.float32)
    b1 = np.zeros(HIDDEN, np.float32)
    w2 = rng.normal(0, 0.15, (HIDDEN, 10)).astype(np.float32)
    b2 = np.zeros(10, np.float32)
    onehot = np.eye(10, dtype=np.float32)[y]
    for _ in range(400):
        h = np.maximum(x @ w1 + b1, 0)
        z = h @ w2 + b2
        p = np.exp(z - z.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        dz = (p - onehot) / len(x)
        dh = (dz @ w2.T) * (h > 0)
        w2 -= 1.0 * h.T @ dz
        b2 -= 1.0 * dz.sum(0)
        w1 -= 1.0 * x.T @ dh
        b1 -= 1.0 * dh.sum(0)
    return w1, b1, w2, b2


def mlp_onnx(outlier: float = 1.0) -> bytes:
    """The trained perceptron as ONNX (Flatten, Gemm "hidden", Relu "hidden_relu", Gemm "logits").

    With `outlier` > 1, hidden unit 0 is scaled by it and the logits layer divides it back: the float function is the
    same, but the hidden activation's range is set by one unit, so a per-tensor int8 grid crushes the others.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w1, b1, w2, b2 = (a.copy() for a in trained_mlp())
    w1[:, 0] *= outlier
    b1[0] *= outlier
    w2[0, :] /= outlier
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [
        helper.make_node("Flatten", ["image"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "w1", "b1"], ["hidden"], name="hidden"),
        helper.make_node("Relu", ["hidden"], ["hidden_relu"], name="hidden_relu"),
        helper.make_node("Gemm", ["hidden_relu", "w2", "b2"], ["logits"], name="logits"),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model.SerializeToString()
