"""Build a quantized model from the float model, a scheme and a list of repair actions, with the real quantizers.

Three backends, chosen by the scheme and the kind of float model:

- converter (Keras/SavedModel + int8, int8-io, int8-per-tensor): the TFLite converter calibrates once
  (`_experimental_calibrate_only`); every build writes the activation ranges into that calibrated model and calls
  `mlir_quantize` with the same arguments as `TFLiteConverter`, plus `denylisted_nodes` for ops kept float. With no action
  the result is the converter's own int8 model (`quantize.converter.convert_calibrated_pair`).
- ai-edge-quantizer (dynamic-range and float16 schemes, and any scheme on a float .tflite): the scheme's recipe from
  `quantize.recipes` plus one regex-scoped rule per action (`no_quantize`, weight granularity, 16-bit activations).
  Static schemes are calibrated once and the calibration result is reused (and edited for range actions).
  With no action, `dynamic-per-tensor` gives the same collapse as the converter's model (measured on EfficientNet-Lite0:
  top-1 agreement 0.00 both; the logits differ, because the defective kernel reads memory past the stored scale).
- onnxruntime (any ort-* scheme on a float .onnx): `repair.build_onnx.OrtBuilder`, ORT's quantizer with
  `nodes_to_exclude` and `TensorQuantOverrides`, handed the ranges its calibrator recorded once.

The kernel workaround is a flatbuffer edit of the built model's weight parameters (`repair.flatbuffer`).
Builds are cached by action list, so the search never builds the same model twice.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import warnings
from typing import Any, Sequence

import numpy as np

from quantdoctor.errors import QuantDoctorError, UserInputError
from quantdoctor.repair.actions import (
    STATIC_SCHEMES,
    Action,
    Backend,
    CalibrationMethod,
    CalibrationRange,
    Int16Activations,
    KeepFloat,
    KernelWorkaround,
    PerChannel,
    WeightGranularity,
)
from quantdoctor.repair.flatbuffer import op_names, read_ranges, repeat_weight_scale, write_ranges

Ranges = dict[str, tuple[float, float]]


def choose_backend(scheme: str, source_kind: str) -> Backend:
    """The converter for int8 schemes of a Keras/SavedModel model; ai-edge-quantizer otherwise."""
    from quantdoctor.quantize.converter import supports_calibrated_pair

    if source_kind != "tflite" and supports_calibrated_pair(scheme):
        return Backend.CONVERTER
    return Backend.AEQ


class Builder:
    """Turns action lists into quantized .tflite bytes for one float model and scheme.

    Args:
        scheme: a registered scheme name.
        backend: which real quantizer expresses the actions.
        float_model: the float .tflite (converter backend: the calibrated float model, which carries the ranges).
        ranges: calibrated (min, max) per activation name (static schemes), else None.
        calibration: a `Dataset` to histogram activations for range actions (None: range actions cannot be computed,
            e.g. when replaying a recipe, which stores its ranges).
    """

    runtime = "tflite"  # the runtime of the float model and of what it builds

    def __init__(
        self, scheme: str, backend: Backend, float_model: bytes, ranges: Ranges | None = None, calibration: Any = None
    ) -> None:
        self.scheme, self.backend, self.float_model = scheme, Backend(backend), bytes(float_model)
        self.ranges = dict(ranges or {})
        self.calibration = calibration
        self._cache: dict[tuple, bytes] = {}
        self._range_cache: dict[CalibrationRange, tuple[float, float]] = {}
        self.ops = self._op_names()  # (type, output name) in execution order
        self.builds = 0
        self.build_seconds = 0.0

    def _op_names(self) -> list[tuple[str, str]]:
        return op_names(self.float_model)

    def quantized_activations(self, model: bytes) -> set[str] | None:
        """Activations with an integer grid in `model` when its graph does not carry them per layer (None: it does)."""
        return None

    # -- construction ------------------------------------------------------------------------------------------------
    @classmethod
    def prepare(cls, source: Any, scheme: str, calib_ds: Any = None, float_tflite: bytes | None = None) -> Builder:
        """Calibrate (if the scheme needs it) and return a builder for `source` (a ModelSource or a Keras model).

        `float_tflite` skips the float conversion for the ai-edge-quantizer backend when the caller has one already.
        """
        from quantdoctor.quantize.converter import calibration_from, convert
        from quantdoctor.quantize.schemes import SCHEMES

        kind = getattr(source, "kind", "keras")
        if kind == "onnx":
            from quantdoctor.backends.onnx.runner import OnnxRunner, read_onnx
            from quantdoctor.repair.build_onnx import OrtBuilder

            model = float_tflite if float_tflite is not None else OnnxRunner(read_onnx(source.path), 1).model
            return OrtBuilder.prepare_onnx(model, scheme, calib_ds)
        spec = SCHEMES.get(scheme)
        backend = choose_backend(scheme, kind)
        calibration = calibration_from(calib_ds)
        if spec.needs_calibration and calib_ds is None:
            raise UserInputError(f"scheme '{scheme}' needs calibration data; give --calib or more --data")
        if backend == Backend.CONVERTER:
            calibrated = convert(source, scheme, calibration, calibrate_only=True)
            return cls(scheme, backend, calibrated, read_ranges(calibrated), calib_ds)
        float_model = float_tflite if float_tflite is not None else convert(source, None)
        ranges = _aeq_calibrate(float_model, scheme, calibration) if spec.needs_calibration else None
        return cls(scheme, backend, float_model, ranges, calib_ds)

    # -- checks --------------------------------------------------------------------------------------------------------
    def unsupported(self, action: Action) -> str | None:
        """Why this builder cannot express `action` (None: it can)."""
        reason = action.unsupported(self.backend, self.scheme)
        if reason:
            return reason
        names = {name for _, name in self.ops}
        if isinstance(action, CalibrationRange):
            if action.tensor not in self.ranges:
                return f"tensor {action.tensor} has no calibrated range"
            if self.calibration is None and action not in self._range_cache:
                return "no calibration data to histogram the activation"
            return None
        missing = [t for t in action.targets() if t not in names]
        return f"no op writes {missing[0]}" if missing else None

    # -- building ------------------------------------------------------------------------------------------------------
    def build(self, actions: Sequence[Action], ranges: Ranges | None = None) -> bytes:
        """The quantized model with `actions` applied (deterministic; cached).

        Args:
            ranges: use these activation ranges instead of computing them (a recipe's stored ranges).

        Raises:
            UserInputError: an action this backend cannot express.
            ConversionError: the quantizer rejected the model.
        """
        import time

        key = tuple(actions) + (("ranges", json.dumps(ranges, sort_keys=True)) if ranges else ())
        if key in self._cache:
            return self._cache[key]
        for a in actions:
            stored = ranges is not None and isinstance(a, (CalibrationRange, CalibrationMethod))  # ranges given: no data
            reason = None if stored else self.unsupported(a)
            if reason:
                raise UserInputError(f"cannot apply '{a.describe()}' with the {self.backend.value} backend: {reason}")
        start = time.perf_counter()
        final_ranges = ranges if ranges is not None else self.final_ranges(actions)
        model = self._quantize(actions, final_ranges)
        for a in actions:
            if isinstance(a, KernelWorkaround):
                model, _ = repeat_weight_scale(model, set(a.ops), a.op_type)
        self.builds += 1
        self.build_seconds += time.perf_counter() - start
        self._cache[key] = model
        return model

    def final_ranges(self, actions: Sequence[Action]) -> Ranges:
        """Calibrated ranges with every range action applied (what a recipe stores)."""
        ranges = dict(self.ranges)
        for a in actions:
            if isinstance(a, CalibrationRange):
                ranges[a.tensor] = self.range_for(a)
        return ranges

    def range_for(self, action: CalibrationRange) -> tuple[float, float]:
        """The range `action` chooses, from a histogram of the float activation over the calibration set."""
        if action not in self._range_cache:
            from quantdoctor.backends.runtimes import RUNTIMES
            from quantdoctor.repair.ranges import activation_range

            runner = RUNTIMES.get(self.runtime).runner(self.float_model, 16)
            self._range_cache[action] = activation_range(runner, action, self.ranges[action.tensor], self.calibration)
        return self._range_cache[action]

    def _quantize(self, actions: Sequence[Action], ranges: Ranges) -> bytes:
        """The backend's quantized model for `actions` with activation ranges `ranges` (the kernel workaround aside)."""
        if self.backend == Backend.CONVERTER:
            return self._build_converter(actions, ranges)
        return self._build_aeq(actions, ranges)

    def _build_converter(self, actions: Sequence[Action], ranges: Ranges) -> bytes:
        from quantdoctor.quantize.converter import requantize

        # Always re-packed with the ranges written, so a recipe replay (stored ranges) feeds mlir_quantize the same bytes.
        calibrated = write_ranges(self.float_model, ranges)
        denied = sorted({op for a in actions if isinstance(a, KeepFloat) for op in a.ops})
        return requantize(calibrated, self.scheme, denied)

    def _build_aeq(self, actions: Sequence[Action], ranges: Ranges) -> bytes:
        from quantdoctor.quantize.recipes import recipe_for

        rules = recipe_for(self.scheme) + aeq_rules(actions, recipe_for(self.scheme))
        calibration_result = None
        if self.scheme in STATIC_SCHEMES:
            calibration_result = {k: {"min": np.array([lo], np.float32), "max": np.array([hi], np.float32)}
                                  for k, (lo, hi) in ranges.items()}
        return _aeq_quantize(self.float_model, rules, calibration_result, self.scheme)


def scope_regex(op: str) -> str:
    """ai-edge-quantizer matches a rule's regex against the op's output names joined by ';', plus a trailing ';'."""
    return "^" + re.escape(op) + ";$"


def aeq_rules(actions: Sequence[Action], base: list[dict]) -> list[dict]:
    """One regex-scoped rule per (action, op); keep-float rules last, because later rules win."""
    import copy

    main = next(r for r in base if r.get("op_config"))
    rules: list[dict] = []
    later: list[dict] = []

    def variant(regex: str, operation: str, change) -> dict:
        rule = copy.deepcopy(main)
        rule["regex"], rule["operation"] = regex, operation
        change(rule["op_config"])
        return rule

    def granularity(value: str):
        return lambda cfg: cfg["weight_tensor_config"].update(granularity=value)

    def int16(cfg):
        cfg["activation_tensor_config"].update(num_bits=16, symmetric=True)

    for a in actions:
        if isinstance(a, PerChannel):
            if a.op_type:
                rules.append(variant(".*", a.op_type, granularity("CHANNELWISE")))
            rules += [variant(scope_regex(op), "*", granularity("CHANNELWISE")) for op in a.ops]
        elif isinstance(a, WeightGranularity):
            value = "CHANNELWISE" if a.granularity == "per-channel" else "TENSORWISE"
            rules += [variant(scope_regex(op), "*", granularity(value)) for op in a.ops]
        elif isinstance(a, Int16Activations):
            rules += [variant(scope_regex(op), "*", int16) for op in a.ops]
        elif isinstance(a, KeepFloat):
            later += [{"regex": scope_regex(op), "operation": "*", "algorithm_key": "no_quantize"} for op in a.ops]
    return rules + later


def _aeq_quantize(float_model: bytes, rules: list[dict], calibration_result: Any, scheme: str) -> bytes:
    from ai_edge_quantizer import quantizer

    from quantdoctor.backends.keras.loader import one_line
    from quantdoctor.quantize.converter import ConversionError, captured_native_stderr

    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), captured_native_stderr():
            warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
            engine = quantizer.Quantizer(bytearray(float_model))
            engine.load_quantization_recipe(rules)
            result = engine.quantize(calibration_result, enable_progress_report=False)
    except QuantDoctorError:
        raise
    except Exception as exc:  # the package raises ValueError, RuntimeError and KeyError alike
        raise ConversionError(f"ai-edge-quantizer ({scheme}) failed: {one_line(str(exc))}", str(exc)) from exc
    return bytes(result.quantized_model)


def _aeq_calibrate(float_model: bytes, scheme: str, calibration: Any) -> Ranges:
    """Calibrate once with the scheme's recipe; (min, max) per tensor name."""
    from ai_edge_quantizer import quantizer

    from quantdoctor.quantize.converter import captured_native_stderr, representative_dataset
    from quantdoctor.quantize.recipes import _read_float_model, _single_input, recipe_for

    interpreter = _read_float_model(float_model)
    signature, input_name, shape = _single_input(interpreter)
    samples = [{input_name: s[0]} for s in representative_dataset(calibration, [shape])()]
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), captured_native_stderr():
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        engine = quantizer.Quantizer(bytearray(float_model))
        engine.load_quantization_recipe(recipe_for(scheme))
        result = engine.calibrate({signature: samples})
    return {k: (float(np.min(v["min"])), float(np.max(v["max"]))) for k, v in result.items() if "min" in v}
