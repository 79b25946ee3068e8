"""The runtimes quantdoctor speaks, one entry each: how to read a model file and how to run it.

The pipeline asks this table, never `if framework ==`: a new runtime is a folder under `backends/` (loader, graph,
runner, subgraph) plus one entry here and one quantizer adapter under `quantize/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from quantdoctor.backends.base import Runner
from quantdoctor.registry import Registry


@dataclass(frozen=True)
class Runtime:
    """One runtime.

    Attributes:
        name: "tflite", "onnx".
        read: the bytes of a model file, checked for the format (raises ModelLoadError with a one-line reason).
        runner: a `Runner` for model bytes and a batch size.
        suffix: the file suffix of its models.
        one_op_repro: whether a kernel-defect finding gets a one-op reproduction file.
        weight_analysis: whether the per-op weight analysis (diagnose/weights.py) reads this format.
    """

    name: str
    read: Callable[[Path], bytes]
    runner: Callable[[bytes, int], Runner]
    suffix: str
    one_op_repro: bool = False
    weight_analysis: bool = False


RUNTIMES: Registry[Runtime] = Registry("runtime")


def _read_tflite(path: Path) -> bytes:
    from quantdoctor.backends.tflite.runner import read_tflite

    return read_tflite(path)


def _tflite_runner(model: bytes, batch_size: int) -> Runner:
    from quantdoctor.backends.tflite.runner import TfliteRunner

    return TfliteRunner(model, batch_size)


def _need_onnx() -> None:
    import importlib.util

    from quantdoctor.errors import UserInputError

    if importlib.util.find_spec("onnx") is None or importlib.util.find_spec("onnxruntime") is None:
        raise UserInputError("ONNX models need onnx and onnxruntime: pip install 'quantdoctor[onnx]'")


def _read_onnx(path: Path) -> bytes:
    _need_onnx()
    from quantdoctor.backends.onnx.loader import read_onnx

    return read_onnx(path)


def _onnx_runner(model: bytes, batch_size: int) -> Runner:
    _need_onnx()
    from quantdoctor.backends.onnx.runner import OnnxRunner

    return OnnxRunner(model, batch_size)


RUNTIMES.add("tflite", Runtime("tflite", _read_tflite, _tflite_runner, ".tflite", one_op_repro=True, weight_analysis=True))
RUNTIMES.add("onnx", Runtime("onnx", _read_onnx, _onnx_runner, ".onnx", one_op_repro=True))
