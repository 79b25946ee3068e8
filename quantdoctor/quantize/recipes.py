"""Quantize an existing float .tflite with ai-edge-quantizer recipes that reproduce quantdoctor's schemes.

The TF converter cannot read a .tflite, so a float .tflite is quantized with ai-edge-quantizer instead. `RECIPES` says
which of its recipes stands for which scheme:

| scheme | ai-edge-quantizer recipe | changes to it |
|---|---|---|
| dynamic | dynamic_legacy_wi8_afp32 | none (it skips weights under 1024 elements, like the TF converter) |
| dynamic-per-tensor | dynamic_legacy_wi8_afp32 | weight granularity TENSORWISE |
| int8 | static_wi8_ai8 | model input and output kept float (no_quantize rules on INPUT and OUTPUT) |
| int8-io | static_wi8_ai8 | none (the recipe quantizes the model input and output to int8 itself) |
| int8-per-tensor | static_wi8_ai8 | weight granularity TENSORWISE, float input and output |
| int16x8 | static_wi8_ai16 | float input and output |
| float16 | weight-only float_casting to 16 bits | none; biases stay float32 (the TF converter makes them float16 too) |
| toco-1x | built here (TOCO_1X_RECIPE) | per-op rules: dynamic int8 per-tensor on CONV_2D/FULLY_CONNECTED/EMBEDDING_LOOKUP, asymmetric int8 per-tensor weight-only with explicit DEQUANTIZE on DEPTHWISE_CONV_2D, 1024+ elements |
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from quantdoctor.backends.keras.loader import one_line
from quantdoctor.errors import QuantDoctorError, UserInputError
from quantdoctor.quantize.converter import (
    Calibration,
    ConversionError,
    captured_native_stderr,
    representative_dataset,
)
from quantdoctor.quantize.schemes import SCHEMES

FLOAT16_RECIPE = "weight_only_wf16_afp32"
TOCO_1X_RECIPE = "toco_1x"

# TF 1.12/1.13 tensorflow/lite/tools/optimize/quantize_weights.cc: ops with a hybrid kernel (IsHybridEvaluationOp) get
# symmetric per-tensor 8-bit weights; other ops with weights (GetWeightInputIndices) get asymmetric min/max 8-bit
# weights behind a DEQUANTIZE op. Only these op types exist in both that tool and ai-edge-quantizer's policy.
TOCO_1X_HYBRID_OPS = ("CONV_2D", "FULLY_CONNECTED", "EMBEDDING_LOOKUP")
TOCO_1X_DEQUANTIZE_OPS = ("DEPTHWISE_CONV_2D",)
TOCO_1X_MIN_ELEMENTS = 1024  # kWeightsMinNumElementsDefault


@dataclass(frozen=True)
class RecipeChoice:
    """How one scheme is expressed as an ai-edge-quantizer recipe.

    Attributes:
        recipe: name of a function in `ai_edge_quantizer.recipe`, or FLOAT16_RECIPE / TOCO_1X_RECIPE (built
            here: the package has no helper for them).
        weight_granularity: "CHANNELWISE" or "TENSORWISE", written into every rule's weight config.
        float_io: add rules that leave the model's input and output tensors in float32.
    """

    recipe: str
    weight_granularity: str = "CHANNELWISE"
    float_io: bool = False


RECIPES: dict[str, RecipeChoice] = {
    "dynamic": RecipeChoice("dynamic_legacy_wi8_afp32"),
    "dynamic-per-tensor": RecipeChoice("dynamic_legacy_wi8_afp32", weight_granularity="TENSORWISE"),
    "int8": RecipeChoice("static_wi8_ai8", float_io=True),
    "int8-io": RecipeChoice("static_wi8_ai8"),
    "int8-per-tensor": RecipeChoice("static_wi8_ai8", weight_granularity="TENSORWISE", float_io=True),
    "int16x8": RecipeChoice("static_wi8_ai16", float_io=True),
    "float16": RecipeChoice(FLOAT16_RECIPE),
    "toco-1x": RecipeChoice(TOCO_1X_RECIPE, weight_granularity="TENSORWISE"),
}


def recipe_for(scheme: str) -> list[dict]:
    """Return the ai-edge-quantizer recipe (its JSON form: a list of regex-scoped rules) that applies `scheme`.

    Raises:
        UnknownNameError: `scheme` is not registered.
        UserInputError: the scheme has no faithful recipe.
    """
    SCHEMES.get(scheme)
    choice = RECIPES.get(scheme)
    if choice is None:
        raise UserInputError(
            f"scheme '{scheme}' cannot be applied to a .tflite float model; give the Keras/SavedModel model or "
            "--quantized"
        )
    # The round trip through JSON turns the package's str enums into plain strings.
    rules: list[dict] = json.loads(json.dumps(_base_recipe(choice.recipe)))
    for rule in rules:
        weight_config = rule.get("op_config", {}).get("weight_tensor_config")
        if weight_config is not None and choice.weight_granularity != "CHANNELWISE":
            weight_config["granularity"] = choice.weight_granularity
    if choice.float_io:
        # Later rules win in ai-edge-quantizer; INPUT/OUTPUT are its virtual ops for the graph's inputs and outputs.
        rules += [{"regex": ".*", "operation": op, "algorithm_key": "no_quantize"} for op in ("INPUT", "OUTPUT")]
    return rules


def quantize_tflite(tflite_bytes: bytes, scheme: str, calibration: Calibration | None = None) -> bytes:
    """Quantize a float .tflite with the recipe of `scheme`.

    Args:
        tflite_bytes: the float model.
        scheme: a registered scheme name.
        calibration: as for `quantize.converter.convert`; needed by the static (int8, int16x8) schemes.

    Raises:
        UserInputError: no recipe for the scheme, missing or empty calibration data, or a model that is already
            quantized or has several inputs.
        ModelLoadError: the bytes are not a readable .tflite.
        ConversionError: ai-edge-quantizer rejected the model.
    """
    rules = recipe_for(scheme)
    interpreter = _read_float_model(tflite_bytes)
    from ai_edge_quantizer import quantizer

    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), captured_native_stderr():
            # Its calibration and checks open LiteRT with preserve_all_tensors, which warns every time; LiteRT
            # prints its delegate banner on fd 2.
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
            engine = quantizer.Quantizer(bytearray(tflite_bytes))
            engine.load_quantization_recipe(rules)
            calibration_result = None
            if engine.need_calibration:
                if calibration is None:
                    raise UserInputError(f"scheme '{scheme}' needs calibration data; give some representative inputs")
                signature, input_name, shape = _single_input(interpreter)
                # ai-edge-quantizer walks the data twice (it counts it first), so it must be a list, not a generator.
                samples = [{input_name: s[0]} for s in representative_dataset(calibration, [shape])()]
                calibration_result = engine.calibrate({signature: samples})
            result = engine.quantize(calibration_result, enable_progress_report=False)
    except QuantDoctorError:
        raise
    except Exception as exc:  # the package raises ValueError, RuntimeError and KeyError alike
        message = f"ai-edge-quantizer ({scheme}) failed: {one_line(str(exc) or type(exc).__name__)}"
        raise ConversionError(message, details=str(exc)) from exc
    # ai-edge-quantizer returns a bytearray; LiteRT's Interpreter(model_content=...) wants bytes.
    return bytes(result.quantized_model)


def _base_recipe(name: str) -> Any:
    if name == FLOAT16_RECIPE:
        from ai_edge_quantizer import algorithm_manager, qtyping, recipe_manager

        manager = recipe_manager.RecipeManager()
        manager.add_weight_only_config(
            regex=".*",
            operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            num_bits=16,
            algorithm_key=algorithm_manager.AlgorithmName.FLOAT_CASTING,
        )
        return manager.get_quantization_recipe()
    if name == TOCO_1X_RECIPE:
        return _toco_1x_recipe()
    from ai_edge_quantizer import recipe

    return getattr(recipe, name)()


def _toco_1x_recipe() -> list[dict]:
    """One rule per op type: hybrid (dynamic-range) int8 for the ops TF 1.x ran as hybrid kernels, weight-only with an
    explicit DEQUANTIZE for the others; ops of neither group stay float, as in TF 1.x."""

    def rule(op: str, symmetric: bool, hybrid: bool) -> dict:
        weights = {"num_bits": 8, "symmetric": symmetric, "granularity": "TENSORWISE", "dtype": "INT", "block_size": 0}
        config = {
            "weight_tensor_config": weights,
            "compute_precision": "INTEGER" if hybrid else "FLOAT",
            "explicit_dequantize": not hybrid,
            "skip_checks": False,
            "min_weight_elements": TOCO_1X_MIN_ELEMENTS,
        }
        return {"regex": ".*", "operation": op, "algorithm_key": "min_max_uniform_quantize", "op_config": config}

    return [rule(op, True, True) for op in TOCO_1X_HYBRID_OPS] + [
        rule(op, False, False) for op in TOCO_1X_DEQUANTIZE_OPS
    ]


def _read_float_model(tflite_bytes: bytes) -> Any:
    """Open the model with LiteRT and check that it is a float model."""
    from quantdoctor.backends.tflite.loader import load_interpreter

    interpreter = load_interpreter(tflite_bytes, what="the .tflite model")
    # Read before allocate_tensors(): XNNPACK's prepare step rewrites weight quantization parameters in place.
    for detail in interpreter.get_tensor_details():
        if len(detail["quantization_parameters"]["scales"]) or detail["dtype"] == np.float16:
            raise UserInputError(
                f"the .tflite model is already quantized (tensor '{detail['name']}' is {np.dtype(detail['dtype'])}); "
                "give the float model, or pass this one as --quantized"
            )
    return interpreter


def _single_input(interpreter: Any) -> tuple[str, str, tuple]:
    """Return the signature key, input name and input shape (batch first, None if open) to calibrate with."""
    signatures = interpreter.get_signature_list()
    if len(signatures) != 1:
        raise UserInputError(
            f"the .tflite model has {len(signatures)} signatures; calibrating a .tflite needs exactly one; "
            "give the Keras/SavedModel model instead"
        )
    signature, io_names = next(iter(signatures.items()))
    if len(io_names["inputs"]) != 1:
        raise UserInputError(
            f"the .tflite model has {len(io_names['inputs'])} inputs; calibrating a .tflite supports one input; "
            "give the Keras/SavedModel model instead"
        )
    detail = interpreter.get_signature_runner(signature).get_input_details()[io_names["inputs"][0]]
    shape = tuple(None if dim < 0 else int(dim) for dim in detail["shape_signature"])
    return signature, io_names["inputs"][0], shape
