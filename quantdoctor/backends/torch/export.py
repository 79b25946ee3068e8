"""Export a PyTorch model to float ONNX, and label each ONNX node output with the module it came from.

quantdoctor names TFLite ops by their Keras layer; for a PyTorch model the equivalent is the module's qualified name
(`features.3.block.0.conv`). We use the torch.export-based exporter (`torch.onnx.export(..., dynamo=True)`), which
records on every node the `nn_module_stack` of the FX node it was translated from (`pkg.torch.onnx.name_scopes`, e.g.
`['', 'features', 'features.3', 'features.3.conv', 'conv2d']`): exact qualified names, one per nesting level, also for
`.pt2` programs and for modules called more than once. The TorchScript exporter (`dynamo=False`, deprecated since
torch 2.9) only encodes a scope in the node name (`/features/features.3/conv/Conv`), with unqualified names per level
and `_1` suffixes on repeated calls, which cannot be parsed back without guessing.

Two facts of torch 2.13 shape the code:
- the exporter has no op implementations below opset 18. Asked for 17, it converts the model down with ONNX's version
  converter, which drops node metadata, and keeps opset 18 when that fails (any ReduceMean); converting ourselves
  gave a model ONNX Runtime rejects (ReduceMean keeps opset 18's `noop_with_empty_axes`). So opset 18 is the floor.
- its graph optimizer folds BatchNormalization into the preceding Conv, and the fused node carries the *BatchNorm's*
  scope. The fused Conv keeps the conv's weight initializer name (`features.3.conv.weight`), so ops that carry a weight
  (Conv, ConvTranspose, Gemm, MatMul) are labelled with the module that owns the weight: that is the layer whose
  parameters quantization changes.
"""

from __future__ import annotations

import contextlib
import logging
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from quantdoctor.errors import ModelLoadError, UserInputError

if TYPE_CHECKING:
    import torch

TORCH_PIP = "pip install 'quantdoctor[torch]'"
# The lowest opset torch 2.13's exporter has op implementations for (see the module docstring).
MIN_OPSET = 18
WEIGHTED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"})
_NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
_SCOPE_ENTRY = re.compile(r"'((?:[^'\\]|\\.)*)'")


def import_torch() -> Any:
    """The `torch` module.

    Raises:
        UserInputError: PyTorch is not installed.
    """
    try:
        import torch
    except ImportError:
        raise UserInputError(f"PyTorch is not installed; {TORCH_PIP}") from None
    return torch


def load_pt2(path: str | Path) -> torch.nn.Module:
    """Load a `torch.export` program file (`.pt2`, from `torch.export.save`) as a runnable module.

    The module keeps each node's `nn_module_stack`, so `export_onnx` labels its ops with the original module paths.

    Raises:
        UserInputError: PyTorch is not installed.
        ModelLoadError: the file is missing or is not a torch.export program.
    """
    torch = import_torch()
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"model {p} does not exist; give a .pt2 file written by torch.export.save")
    try:
        program = torch.export.load(str(p))
    except Exception as exc:  # zipfile.BadZipFile, RuntimeError, KeyError, ... all mean "not a program file"
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ModelLoadError(f"{p} is not a torch.export program ({first}); save one with torch.export.save") from None
    module = program.module()
    # The program's ops were fixed by torch.export (batch norm etc. as the model was exported), and this module
    # refuses eval(); clear the flags so exporters do not warn that it is "in training mode".
    for sub in module.modules():
        sub.training = False
    return module


def export_onnx(
    module: torch.nn.Module | torch.export.ExportedProgram,
    example: Any,
    *,
    opset: int = MIN_OPSET,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Export `module` to a float ONNX model and label its node outputs with module paths.

    Args:
        module: the model; exported in eval mode (its training flag is restored afterwards). A `torch.export`
            program (or a module from `load_pt2`) keeps the input shapes it was exported with: a batch size it
            fixed stays fixed. Any other module gets a dynamic batch dimension.
        example: one input batch (`np.ndarray` or `torch.Tensor`, batch first), or a tuple of them for several inputs.
        opset: ONNX opset of the returned model, at least `MIN_OPSET`.
        input_names, output_names: names for the graph's inputs and outputs; by default the exporter's (the forward
            arguments' names, and FX node names such as `linear_2` for outputs).

    Returns:
        The serialized ModelProto, and `{node output tensor name: module qualified name}` for every node output that
        came from a submodule. Ops written in the root module's own `forward` have no entry.

    Raises:
        UserInputError: PyTorch is not installed, the example is not an array/tensor, or the opset is below 18.
        ModelLoadError: the exporter cannot export the model (the message carries its first line).
    """
    torch = import_torch()
    if opset < MIN_OPSET:
        raise UserInputError(f"opset {opset} is too old: PyTorch's ONNX exporter writes opset {MIN_OPSET} or newer")
    dynamic = not _shapes_fixed(torch, module)
    args = _example_args(torch, example, dynamic)
    with _eval_mode(module), _quiet_exporter():
        try:
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                opset_version=opset,
                dynamic_shapes=tuple({0: torch.export.Dim("batch")} if a.ndim else None for a in args)
                if dynamic
                else None,
                input_names=list(input_names) if input_names else None,
                output_names=list(output_names) if output_names else None,
                optimize=True,
                verbose=False,
            )
        except Exception as exc:
            raise ModelLoadError(f"torch.onnx.export failed: {_root_cause(exc)}") from exc
    proto = program.model_proto
    labels = node_labels(proto, _weight_owners(module))
    for node in proto.graph.node:
        # The labels are returned separately; the metadata also holds stack traces with the user's file paths.
        del node.metadata_props[:]
    return proto.SerializeToString(), labels


def node_labels(proto: Any, weight_owners: dict[str, str]) -> dict[str, str]:
    """`{node output name: module path}` from the exporter's name scopes, weighted ops by their weight's owner.

    Args:
        proto: an `onnx.ModelProto` as the torch.export-based exporter wrote it (node metadata intact).
        weight_owners: `{initializer name: module path}` for parameters (`"features.3.conv.weight"` -> its module).
    """
    labels: dict[str, str] = {}
    for node in proto.graph.node:
        path = None
        if node.op_type in WEIGHTED_OPS and len(node.input) >= 2:
            path = weight_owners.get(node.input[1])
        if path is None:
            path = _innermost_module(node)
        if path:
            labels.update((name, path) for name in node.output if name)
    return labels


def _innermost_module(node: Any) -> str | None:
    """The last module of the node's `name_scopes` (`['', 'a', 'a.b', fx_node_name]` -> `'a.b'`), if any."""
    raw = next((p.value for p in node.metadata_props if p.key == _NAME_SCOPES_KEY), None)
    if raw is None:
        return None
    # The value is a Python list repr of strings; parse only quoted strings (never eval text from a file).
    scopes = [m.group(1) for m in _SCOPE_ENTRY.finditer(raw)]
    # A real module stack starts at the root ('') and has at least one submodule before the FX node's own name;
    # nodes without a stack (shape arithmetic) get a placeholder entry instead.
    if len(scopes) < 3 or scopes[0] != "":
        return None
    return scopes[-2]


def _weight_owners(module: Any) -> dict[str, str]:
    """`{parameter name: owning module path}` for parameters named `<module>.weight`."""
    state = getattr(module, "state_dict", {})
    state = state() if callable(state) else state  # a method on modules, a dict on an ExportedProgram
    owners = {}
    for name in state:
        owner, _, leaf = name.rpartition(".")
        if owner and leaf == "weight":
            owners[name] = owner
    return owners


def _shapes_fixed(torch: Any, module: Any) -> bool:
    """Whether `module` is a torch.export program (or its `.module()`) that fixed its batch size when exported."""
    if isinstance(module, torch.export.ExportedProgram):
        return True  # exported as it is, with the shapes it has
    if not isinstance(module, torch.fx.GraphModule):
        return False
    for node in module.graph.nodes:
        value = node.meta.get("val") if node.op == "placeholder" else None
        if isinstance(value, torch.Tensor) and value.ndim and isinstance(value.shape[0], int):
            return True  # a plain int where a dynamic batch would be a SymInt
    return False


def _root_cause(exc: BaseException) -> str:
    """The first line of the innermost exception, without terminal colour codes (the outer ones are generic)."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _example_args(torch: Any, example: Any, dynamic: bool) -> tuple[Any, ...]:
    items = example if isinstance(example, (tuple, list)) else (example,)
    args = []
    for item in items:
        if isinstance(item, torch.Tensor):
            args.append(item.detach())
        elif isinstance(item, np.ndarray):
            args.append(torch.from_numpy(np.ascontiguousarray(item)))
        else:
            raise UserInputError(f"the example input must be a numpy array or torch tensor, not {type(item).__name__}")
    if not dynamic:
        return tuple(args)
    # torch.export specializes dimensions of size 1, which would freeze the batch at 1: trace with two samples.
    return tuple(a.expand(2, *a.shape[1:]).contiguous() if a.ndim and a.shape[0] == 1 else a for a in args)


@contextlib.contextmanager
def _eval_mode(module: Any) -> Iterator[None]:
    training = getattr(module, "training", None)
    if training is None:
        yield
        return
    try:
        module.eval()
    except NotImplementedError:  # torch.export's ExportedProgram.module() refuses eval(); its ops are fixed anyway
        training = None
    try:
        yield
    finally:
        if training:
            module.train(True)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence torch's logging while exporting (notes about torchvision ops, graph dumps on failure) and its own
    deprecation warnings; a failure reaches the user as a ModelLoadError carrying the root cause."""
    logger = logging.getLogger("torch")  # torch's loggers mostly inherit their level from this one
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)
