"""A repair recipe: everything needed to rebuild the repaired model from the same float model, without the data.

The recipe stores the scheme, the backend (which also names the runtime: converter and ai-edge-quantizer build .tflite,
onnxruntime builds .onnx), the actions and — for static schemes — every activation range the repaired model was
quantized with, so `apply_recipe` needs neither the calibration data nor a search. TFLite: it calibrates the float
model once on a dummy sample only to get the calibrated graph, overwrites every range with the stored ones, and builds
with the same quantizer and the same actions. ONNX Runtime: its quantizer is handed the stored ranges in place of its
calibrator's (`repair.build_onnx`). Same bytes either way; tests check both.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantdoctor.errors import UserInputError
from quantdoctor.repair.actions import Action, Backend, action_from_dict

RECIPE_VERSION = 1


@dataclass(frozen=True)
class Recipe:
    scheme: str
    backend: str
    actions: tuple[Action, ...]
    float_model_sha256: str | None  # of the user's float model file (None for a SavedModel folder)
    model_sha256: str  # of the repaired .tflite the repair run wrote
    ranges: dict[str, tuple[float, float]] | None = None
    source: dict[str, Any] | None = None  # the float model's `ModelSource.options()`, e.g. a frozen graph's arrays
    version: int = RECIPE_VERSION

    def to_dict(self) -> dict[str, Any]:
        extra = {"source": self.source} if self.source else {}  # only when set: other recipes stay as they were
        return {
            "version": self.version,
            "tool": "quantdoctor",
            "scheme": self.scheme,
            "backend": self.backend,
            "float_model_sha256": self.float_model_sha256,
            "model_sha256": self.model_sha256,
            "actions": [a.to_dict() for a in self.actions],
            "ranges": None if self.ranges is None else {k: list(v) for k, v in sorted(self.ranges.items())},
            **extra,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Recipe:
        if data.get("version") != RECIPE_VERSION:
            raise UserInputError(f"recipe version {data.get('version')} is not supported (this quantdoctor reads {RECIPE_VERSION})")
        ranges = data.get("ranges")
        return cls(
            scheme=str(data["scheme"]),
            backend=Backend(data["backend"]).value,
            actions=tuple(action_from_dict(a) for a in data.get("actions", ())),
            float_model_sha256=data.get("float_model_sha256"),
            model_sha256=str(data.get("model_sha256", "")),
            ranges=None if ranges is None else {k: (float(v[0]), float(v[1])) for k, v in ranges.items()},
            source=dict(data["source"]) if data.get("source") else None,
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        p = Path(path)
        hint = "give the recipe.json a repair run wrote"
        try:
            data = json.loads(p.read_bytes().decode("utf-8"))
            if not isinstance(data, dict) or data.get("tool", "quantdoctor") != "quantdoctor":
                raise ValueError(f"it holds a JSON {type(data).__name__}, not a quantdoctor recipe object")
            return cls.from_dict(data)
        except FileNotFoundError:
            raise UserInputError(f"recipe {p} does not exist; {hint}") from None
        except OSError as exc:
            raise UserInputError(f"cannot read recipe {p} ({exc.strerror or exc}); {hint}") from None
        except UserInputError:
            raise
        # JSON and Unicode errors are ValueErrors; JSON nested thousands deep exhausts the parser's recursion, and
        # float() of an integer literal with hundreds of digits overflows
        except (KeyError, ValueError, TypeError, AttributeError, IndexError, RecursionError, OverflowError) as exc:
            reason = " ".join(str(exc).split())[:200] or type(exc).__name__
            raise UserInputError(f"recipe {p} is not a quantdoctor recipe ({reason}); {hint}") from None


def file_sha256(path: str | Path) -> str | None:
    p = Path(path)
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None


def sha256(data: bytes) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()


def apply_recipe(recipe: Recipe | str | Path, model: str | Path | Any) -> bytes:
    """Rebuild the repaired .tflite (.onnx) from `model` (the float model the recipe was made from).

    A recipe made from a TF 1.x frozen graph (or a SavedModel signature) stores the graph options, so the path alone
    rebuilds the same `ModelSource`.

    Raises:
        UserInputError: the model is not the one the recipe was made from, or the recipe is unreadable.
    """
    from quantdoctor.backends.keras.loader import ModelSource, detect_source, load_keras_model, resolve_source
    from quantdoctor.repair.build import Builder
    from quantdoctor.quantize.converter import convert

    if not isinstance(recipe, Recipe):
        recipe = Recipe.load(recipe)
    source = model if isinstance(model, ModelSource) else detect_source(model)
    if recipe.source and not source.options():
        source = _with_options(source, recipe.source)
    source = resolve_source(source)
    digest = file_sha256(source.path)
    if recipe.float_model_sha256 and digest and digest != recipe.float_model_sha256:
        raise UserInputError(f"{model} is not the float model this recipe was made from (sha256 differs); give that model")
    if (Backend(recipe.backend) == Backend.ORT) != (source.kind == "onnx"):
        raise UserInputError(f"this recipe was made with the {recipe.backend} backend, which does not quantize "
                             f"{source.kind} models; give the float model it was made from")
    if source.kind == "onnx":
        from quantdoctor.backends.onnx.runner import OnnxRunner, read_onnx
        from quantdoctor.repair.build_onnx import OrtBuilder

        builder = OrtBuilder(recipe.scheme, OnnxRunner(read_onnx(source.path), 1).model, recipe.ranges)
        return builder.build(list(recipe.actions), ranges=recipe.ranges)
    target = load_keras_model(source.path) if source.kind == "keras" else source
    if Backend(recipe.backend) == Backend.CONVERTER:
        if source.kind == "keras":
            shape = tuple(int(d) for d in target.input_shape[1:])
        elif source.kind == "frozen":
            from quantdoctor.backends.tflite.runner import TfliteRunner

            shape = TfliteRunner(convert(source, None), 1).inputs()[0].shape
        else:
            raise UserInputError("this recipe needs the Keras model it was made from")

        def dummy():  # calibration only creates the graph's range fields; the recipe's ranges replace them all
            yield np.zeros((1, *shape), np.float32)

        float_model = convert(target, recipe.scheme, dummy, calibrate_only=True)
    elif source.kind == "tflite":
        float_model = source.path.read_bytes()
    else:
        float_model = convert(target, None)
    builder = Builder(recipe.scheme, Backend(recipe.backend), float_model, recipe.ranges)
    return builder.build(list(recipe.actions), ranges=recipe.ranges)


def _with_options(source: Any, options: dict[str, Any]) -> Any:
    """`source` with the graph options a recipe stored (a frozen graph's arrays, a SavedModel's signature key)."""
    from dataclasses import replace

    try:
        return replace(source, inputs=tuple(options.get("inputs", ())), outputs=tuple(options.get("outputs", ())),
                       input_shapes=tuple(options.get("input_shapes", ())), signature_key=options.get("signature_key"))
    except (TypeError, ValueError) as exc:
        raise UserInputError(f"the recipe's float model options {options} are not readable ({exc})") from None
