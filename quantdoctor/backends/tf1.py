"""TensorFlow 1.x models: frozen graphs (.pb) checked and converted with TF's v1 converter, and SavedModel signatures.

A frozen graph has no signature, so the user names its input and output nodes as toco took them (--input-arrays,
--output-arrays and, where the graph leaves sizes open, --input-shapes). `tf.compat.v1.lite.TFLiteConverter
.from_frozen_graph` keeps node names as TFLite tensor names, fused ops joined with ';' with the op whose output the
tensor holds first (`model/conv/Relu;model/conv/BiasAdd`), which is what labels the layers.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from quantdoctor.backends.keras.loader import ModelSource, one_line, quiet_tensorflow_logging
from quantdoctor.errors import ModelLoadError

_SHOWN = 5  # candidate node names listed in a message
DEFAULT_SIGNATURE = "serving_default"


def frozen_graph(
    path: str | Path,
    inputs: Sequence[str],
    outputs: Sequence[str],
    input_shapes: Sequence[Sequence[int]] | None = None,
) -> ModelSource:
    """A TF 1.x frozen graph as a float model for `diagnose`, `repair` and `compare`.

    Args:
        path: the frozen GraphDef (.pb).
        inputs, outputs: the graph's input and output node names (toco's --input-arrays / --output-arrays).
        input_shapes: one shape per input, batch first (toco's --input-shapes); needed when the graph leaves a size
            other than the batch open.
    """
    return ModelSource("frozen", Path(path), tuple(inputs), tuple(outputs), tuple(input_shapes or ()))


def read_graph_def(path: Path) -> Any:
    """The GraphDef in a frozen graph file.

    Raises:
        ModelLoadError: the file cannot be read, does not parse as a GraphDef or has no nodes.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read frozen graph {path}: {exc.strerror}") from None
    quiet_tensorflow_logging()
    import tensorflow as tf

    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError, or a RuntimeWarning-free ValueError from the C++ parser
        reason = one_line(str(exc) or type(exc).__name__, limit=120)
        raise ModelLoadError(f"{path} is not a TensorFlow GraphDef ({reason}); give a frozen graph .pb") from None
    if not graph_def.node:
        raise ModelLoadError(
            f"{path} is not a TensorFlow GraphDef (no nodes in its {len(data)} bytes); give a frozen graph .pb"
        )
    return graph_def


def check_frozen(source: ModelSource, graph_def: Any = None) -> Any:
    """Check a frozen graph's arrays against its nodes before the converter sees them; returns the GraphDef.

    Raises:
        ModelLoadError: missing or unknown arrays, a shape count that does not fit, or an input whose size is left
            open without `input_shapes`.
    """
    graph_def = graph_def if graph_def is not None else read_graph_def(source.path)
    nodes = {n.name: n for n in graph_def.node}
    if not source.inputs or not source.outputs:
        placeholders = [n.name for n in graph_def.node if n.op == "Placeholder"]
        hint = f"; its Placeholder nodes: {', '.join(placeholders[:_SHOWN])}" if placeholders else ""
        raise ModelLoadError(
            f"frozen graph {source.path} needs --input-arrays and --output-arrays (the graph's input and output node "
            f"names, as toco took them){hint}"
        )
    for flag, names in (("--input-arrays", source.inputs), ("--output-arrays", source.outputs)):
        for name in names:
            if _node_name(name) not in nodes:
                close = difflib.get_close_matches(_node_name(name), list(nodes), n=_SHOWN, cutoff=0.5)
                hint = f"; close names: {', '.join(close)}" if close else ""
                raise ModelLoadError(f"{flag}: frozen graph {source.path} has no node '{name}'{hint}")
    if source.input_shapes:
        if len(source.input_shapes) != len(source.inputs):
            raise ModelLoadError(
                f"--input-shapes gives {len(source.input_shapes)} shape(s) for {len(source.inputs)} input array(s); "
                "give one per input, separated by ':'"
            )
        return graph_def
    for name in source.inputs:
        shape = _placeholder_shape(nodes[_node_name(name)])
        if shape is None or any(d < 0 for d in shape[1:]):
            shown = "unknown" if shape is None else "(" + ", ".join("?" if d < 0 else str(d) for d in shape) + ")"
            raise ModelLoadError(
                f"frozen graph {source.path}: input '{name}' has shape {shown}, sizes left open; give them with "
                "--input-shapes, e.g. 1,224,224,3"
            )
    return graph_def


def frozen_converter(source: ModelSource) -> Any:
    """TF's v1 converter for a checked frozen graph (the optimizations and target_spec of the v2 one apply).

    Raises:
        ModelLoadError: as `check_frozen`, or the converter cannot import the graph.
    """
    check_frozen(source)
    import tensorflow as tf

    shapes = {name: list(s) for name, s in zip(source.inputs, source.input_shapes)} or None  # counts: check_frozen
    try:
        return tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
            str(source.path), list(source.inputs), list(source.outputs), shapes
        )
    except Exception as exc:  # import errors of a graph that parsed: unknown ops, bad attributes, ...
        raise ModelLoadError(f"cannot import frozen graph {source.path}: {one_line(str(exc))}") from exc


def saved_model_converter(source: ModelSource) -> Any:
    """TF's converter for one signature of a SavedModel (TF 1 or 2): `signature_key`, else serving_default.

    Without a key the converter would take every signature and the runner the first in name order; a SavedModel
    without serving_default and without a key still converts that way.

    Raises:
        ModelLoadError: the folder cannot be loaded, or has no such signature (the message lists those it has).
    """
    quiet_tensorflow_logging()
    import tensorflow as tf

    keys = [source.signature_key or DEFAULT_SIGNATURE]
    try:
        try:
            return tf.lite.TFLiteConverter.from_saved_model(str(source.path), signature_keys=keys)
        except ValueError as exc:
            if source.signature_key or "Invalid signature key" not in str(exc):
                raise
            return tf.lite.TFLiteConverter.from_saved_model(str(source.path))
    except Exception as exc:
        raise ModelLoadError(f"cannot load SavedModel {source.path}: {one_line(str(exc))}") from exc


def node_labels(graph: Any, path: Path) -> dict[int, Any]:
    """Float TFLite activation tensor → label with the graph nodes its name joins (the producing node last).

    Names the flatbuffer writer de-duplicated ("Identity1" for node "Identity") are read back to their node.
    """
    from quantdoctor.matching.keras_names import LayerLabel

    nodes = {n.name for n in read_graph_def(path).node}
    labels = {}
    for t in graph.activations():
        found = []
        for part in graph.tensors[t].name.split(";"):
            name = _dedup_base(part, nodes)
            if name is not None and name not in found:
                found.append(name)
        if found:
            labels[t] = LayerLabel(tuple(reversed(found)), "node")
    return labels


def _dedup_base(name: str, nodes: set[str]) -> str | None:
    """The node a tensor name refers to, taking off a de-duplication counter the writer appended ("Identity1")."""
    if name in nodes:
        return name
    for cut in range(1, 4):
        if name[-cut:].isdigit() and name[:-cut] in nodes:
            return name[:-cut]
    return None


def _node_name(array: str) -> str:
    """The node of a tensor name: 'input:0' → 'input' (toco took both forms)."""
    head, sep, tail = array.rpartition(":")
    return head if sep and tail.isdigit() else array


def _placeholder_shape(node: Any) -> tuple[int, ...] | None:
    """The shape a Placeholder declares (-1 for an open size), or None when its rank is unknown or not declared."""
    if node.op != "Placeholder" or "shape" not in node.attr:
        return None
    proto = node.attr["shape"].shape
    return None if proto.unknown_rank else tuple(int(d.size) for d in proto.dim)
