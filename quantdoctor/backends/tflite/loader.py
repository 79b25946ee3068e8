"""The one place a LiteRT interpreter is built.

Every interpreter quantdoctor makes runs LiteRT's builtin kernels without the default delegates: XNNPACK hides the
outputs of the ops it takes over (they show as one DELEGATE op), rewrites per-tensor hybrid conv weights as per-channel
when it prepares them, and its numerics are not the ones the quantization parameters describe.
"""

from __future__ import annotations

import os
from typing import Any

from quantdoctor.errors import ModelLoadError


def load_interpreter(
    model: bytes,
    *,
    preserve_all_tensors: bool = False,
    num_threads: int | None = None,
    what: str = "the model",
) -> Any:
    """A LiteRT `Interpreter` for .tflite bytes (not allocated).

    Args:
        model: the .tflite flatbuffer.
        preserve_all_tensors: keep every intermediate tensor readable after `invoke` (costs memory: no buffer reuse).
        num_threads: kernel threads; default all cores.
        what: how the error message names the model ("the quantized model", "op 12 on its own").

    Raises:
        ModelLoadError: LiteRT cannot read or build the model (one line, LiteRT's own first line quoted).
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        return Interpreter(
            model_content=bytes(model),
            experimental_preserve_all_tensors=preserve_all_tensors,
            experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
            num_threads=num_threads or os.cpu_count() or 1,
        )
    except (ValueError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"LiteRT cannot load {what}: {first}") from None
