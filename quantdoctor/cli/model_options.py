"""Options that say how to read a float model beyond its path: a TF 1.x frozen graph's arrays, a SavedModel signature.

The names and formats are toco's: comma-separated node names, and one comma-separated shape per input with the inputs
separated by ':' (`--input-shapes 1,224,224,3:1,10`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

_FLAGS = ("input_arrays", "output_arrays", "input_shapes", "signature_key")


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Add --input-arrays, --output-arrays, --input-shapes and --signature-key to a subcommand."""
    g = parser.add_argument_group("TF 1.x models")
    g.add_argument("--input-arrays", metavar="NAMES",
                   help="frozen graph (.pb): its input node names, comma-separated (as toco's --input_arrays)")
    g.add_argument("--output-arrays", metavar="NAMES",
                   help="frozen graph (.pb): its output node names, comma-separated (as toco's --output_arrays)")
    g.add_argument("--input-shapes", metavar="SHAPES",
                   help="frozen graph (.pb): input shapes, batch first, e.g. 1,224,224,3; several inputs separated by "
                        "':' (1,224,224,3:1,10); needed when the graph leaves sizes open")
    g.add_argument("--signature-key", metavar="KEY",
                   help="SavedModel folder: the signature to convert (default: serving_default)")


def model_source(args: argparse.Namespace, path: str) -> Any:
    """The model to hand to diagnose/repair: `path` itself, or a `ModelSource` carrying the options given.

    Raises:
        UserInputError: a badly formatted option, or options that fit no model of this kind.
    """
    return model_sources(args, path)[0]


def model_sources(args: argparse.Namespace, *paths: str) -> list[Any]:
    """`model_source` for several models (compare): the options go to each model they fit, and must fit one."""
    from quantdoctor.backends.keras.loader import ModelSource, detect_source
    from quantdoctor.errors import UserInputError

    given = {k: getattr(args, k, None) for k in _FLAGS if getattr(args, k, None) is not None}
    if not given:
        return list(paths)
    inputs = _names(given.get("input_arrays"), "--input-arrays")
    outputs = _names(given.get("output_arrays"), "--output-arrays")
    shapes = _shapes(given.get("input_shapes"))
    if shapes and not inputs:
        raise UserInputError("--input-shapes goes with --input-arrays (one shape per input array)")
    if shapes and len(shapes) != len(inputs):
        raise UserInputError(f"--input-shapes gives {len(shapes)} shape(s) for {len(inputs)} input array(s); give one "
                             "per input, separated by ':'")
    key = given.get("signature_key")
    if key is not None and not key.strip():
        raise UserInputError("--signature-key is empty; give a signature name such as serving_default")
    out, used = [], set()
    for path in paths:
        source = detect_source(path)
        if source.kind == "frozen":
            out.append(ModelSource("frozen", source.path, inputs, outputs, shapes))
            used.update(k for k in given if k != "signature_key")
        elif source.kind == "savedmodel" and key is not None:
            out.append(ModelSource("savedmodel", source.path, signature_key=key.strip()))
            used.add("signature_key")
        else:
            out.append(path)
    unused = [k for k in given if k not in used]
    if unused:
        flag = "--" + unused[0].replace("_", "-")
        kinds = "a SavedModel folder" if unused[0] == "signature_key" else "a TF 1.x frozen graph (.pb)"
        names = " and ".join(Path(p).name for p in paths)
        raise UserInputError(f"{flag} is for {kinds}; {names} is not one")
    return out


def _names(text: str | None, flag: str) -> tuple[str, ...]:
    from quantdoctor.errors import UserInputError

    if text is None:
        return ()
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise UserInputError(f"{flag} '{text}' has an empty name; give node names separated by commas, e.g. input_1")
    return names


def _shapes(text: str | None) -> tuple[tuple[int, ...], ...]:
    from quantdoctor.errors import UserInputError

    if text is None:
        return ()
    shapes = []
    for part in text.split(":"):
        dims = [d.strip() for d in part.split(",")]
        bad = next((d for d in dims if not d.isdigit() or int(d) == 0), None)
        if bad is not None:
            raise UserInputError(f"--input-shapes '{text}': '{bad}' is not a size; give positive whole numbers, batch "
                                 "first, e.g. 1,224,224,3 (inputs separated by ':')")
        shapes.append(tuple(int(d) for d in dims))
    return tuple(shapes)
