"""Convert a float Keras model or SavedModel to a .tflite with one of the quantization schemes.

Keras 3 models go through `tf.lite.TFLiteConverter.from_keras_model`, which in TF 2.21 exports the model with
`keras.export.ExportArchive` and converts the SavedModel; the TFLite tensor names keep the Keras layer names, e.g.
`tiny_1/b1_dw_relu_1/Relu6;tiny_1/b1_dw_bn_1/batchnorm/mul_1;tiny_1/b1_dw_1/depthwise;1`: Keras 3 appends `_1` to the
model and layer scopes, fused ops join their source names with `;`, and the flatbuffer writer appends a de-duplication
counter ("1", "2") that can shift between schemes. A float .tflite is re-quantized by `quantize.recipes` with
ai-edge-quantizer instead, since the TF converter cannot read .tflite files.

`convert` and `requantize` go through `quantdoctor.cache`: the same model, scheme and calibration data give the stored
bytes without running the converter.
"""

from __future__ import annotations

import contextlib
import io
import logging
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from quantdoctor.backends.keras.loader import (
    ModelSource,
    load_keras_model,
    one_line,
    quiet_tensorflow_logging,
    require_fixed_input_shape,
)
from quantdoctor.errors import DataError, ModelLoadError, QuantDoctorError, UserInputError
from quantdoctor.native import captured_native_stderr
from quantdoctor.quantize.schemes import SCHEMES, Scheme

if TYPE_CHECKING:
    import keras

Calibration = Callable[[], Iterable[np.ndarray]]

log = logging.getLogger(__name__)


class ConversionError(QuantDoctorError):
    """The TFLite converter or ai-edge-quantizer rejected the model.

    Attributes:
        details: the converter's full message and whatever it printed, for a verbose view.
    """

    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


def convert(
    source: ModelSource | keras.Model,
    scheme: str | None,
    calibration: Calibration | None = None,
    *,
    calibrate_only: bool = False,
) -> bytes:
    """Convert the float model to a .tflite quantized with `scheme` (None: a float .tflite).

    Args:
        source: the user's float model, or a Keras model already in memory.
        scheme: a name registered in `SCHEMES`, or None for a float conversion.
        calibration: returns an iterable of float input batches (N, ...) each time it is called; every sample
            becomes one single-sample batch of the representative dataset. A list/tuple batch feeds several inputs.
        calibrate_only: stop after calibration and return the calibrated float model (calibrating schemes only).

    Raises:
        UnknownNameError: `scheme` is not registered.
        UserInputError: the scheme needs calibration data and none was given, or the data is empty.
        ModelLoadError: the model cannot be read.
        ConversionError: the converter rejected the model.
    """
    spec = SCHEMES.get(scheme) if scheme is not None else None
    if spec is not None and spec.needs_calibration and calibration is None:
        raise UserInputError(
            f"scheme '{scheme}' needs calibration data (a few hundred representative inputs); give some, "
            "or choose a scheme without calibration such as 'dynamic'"
        )
    if scheme is None and isinstance(source, ModelSource) and source.kind == "tflite":
        return _from_tflite(source, None, None)  # the file itself: nothing to cache
    from quantdoctor.cache import TF_PACKAGES, cached, digest_calibration, digest_source, versions

    def parts() -> dict[str, Any]:
        return {
            "op": "tflite.convert", "model": digest_source(source), "scheme": scheme,
            "spec": spec.to_dict() if spec is not None else None, "calibrate_only": calibrate_only,
            # Only calibrating schemes read the data (a dynamic scheme given data converts the same).
            "calibration": digest_calibration(calibration) if spec is not None and spec.needs_calibration else None,
            "versions": versions(*TF_PACKAGES),
        }

    what = f"tflite {scheme or 'float'}{' calibrated float' if calibrate_only else ''}"
    return cached(what, parts, lambda: _convert(source, scheme, spec, calibration, calibrate_only))


def _convert(
    source: ModelSource | keras.Model, scheme: str | None, spec: Scheme | None, calibration: Calibration | None,
    calibrate_only: bool,
) -> bytes:
    if isinstance(source, ModelSource) and source.kind == "tflite":
        return _from_tflite(source, scheme, calibration)
    if spec is not None and spec.via_recipe:
        # No converter setting makes this layout (toco-1x): convert to float, then apply the scheme's recipe.
        from quantdoctor.quantize.recipes import quantize_tflite

        return quantize_tflite(convert(source, None), scheme, calibration)

    quiet_tensorflow_logging()
    import tensorflow as tf

    expected_shapes: list[tuple] | None = None
    if isinstance(source, ModelSource) and source.kind == "frozen":
        from quantdoctor.backends.tf1 import frozen_converter

        converter = frozen_converter(source)
    elif isinstance(source, ModelSource) and source.kind == "savedmodel":
        from quantdoctor.backends.tf1 import saved_model_converter

        converter = saved_model_converter(source)
    else:
        model = load_keras_model(source.path) if isinstance(source, ModelSource) else source
        if not isinstance(source, ModelSource):
            require_fixed_input_shape(model, f"Keras model '{getattr(model, 'name', '?')}'")
        expected_shapes = _input_shapes(model)
        converter = tf.lite.TFLiteConverter.from_keras_model(model)

    if spec is not None:
        representative = representative_dataset(calibration, expected_shapes) if calibration is not None else None
        _apply_scheme(tf, converter, spec, representative)
    if calibrate_only:
        converter._experimental_calibrate_only = True
        return _run_converter(converter, f"{scheme} calibration")
    return _run_converter(converter, scheme or "float")


def supports_calibrated_pair(scheme: str | None) -> bool:
    """True for the full-integer int8 schemes, whose quantized model can be made from one calibrated float model."""
    spec = SCHEMES.get(scheme) if scheme is not None else None
    return spec is not None and spec.needs_calibration and spec.supported_ops == "TFLITE_BUILTINS_INT8"


def convert_calibrated_pair(
    source: ModelSource | keras.Model, scheme: str, calibration: Calibration
) -> tuple[bytes, bytes]:
    """One calibrated conversion for both sides: (float model, int8 model quantized from it).

    The converter's int8 path is "convert to float, run the representative data through it (calibration), quantize with
    `mlir_quantize`". Stopping after calibration gives a float .tflite with the same tensor names, and quantizing it with
    the same arguments `TFLiteConverter._quantize` passes gives the same int8 model (a test checks the outputs are equal) —
    one conversion instead of two. The calibrated model is also what re-quantization with denylists starts from.

    Raises:
        UserInputError: the scheme is not a full-integer int8 scheme (see `supports_calibrated_pair`).
    """
    if not supports_calibrated_pair(scheme):
        raise UserInputError(f"scheme '{scheme}' is not a full-integer int8 scheme; use convert() for it")
    calibrated = convert(source, scheme, calibration, calibrate_only=True)
    return calibrated, requantize(calibrated, scheme)


def requantize(calibrated: bytes, scheme: str, denylisted_nodes: Sequence[str] = ()) -> bytes:
    """Quantize a calibrated float .tflite as the converter's int8 path does (`mlir_quantize` with the scheme's
    granularity and I/O type); ops writing `denylisted_nodes` (full output tensor names) stay float.

    Raises:
        ConversionError: the quantizer rejected the model.
    """
    from quantdoctor.cache import TF_PACKAGES, cached, digest_bytes, versions

    spec = SCHEMES.get(scheme)
    denied = list(denylisted_nodes)

    def parts() -> dict[str, Any]:
        return {"op": "tflite.requantize", "model": digest_bytes(calibrated), "scheme": scheme, "spec": spec.to_dict(),
                "denylisted_nodes": denied, "versions": versions(*TF_PACKAGES)}

    return cached(f"tflite {scheme} requantized", parts, lambda: _requantize(calibrated, scheme, spec, denied))


def _requantize(calibrated: bytes, scheme: str, spec: Scheme, denylisted_nodes: list[str]) -> bytes:
    quiet_tensorflow_logging()
    import tensorflow as tf
    from tensorflow.lite.python.convert import mlir_quantize

    io_type = getattr(tf, spec.io_type) if spec.io_type else tf.float32
    with captured_native_stderr(), contextlib.redirect_stdout(io.StringIO()):
        try:
            quantized = mlir_quantize(
                calibrated,
                disable_per_channel=not spec.per_channel,
                input_data_type=io_type,
                output_data_type=io_type,
                denylisted_nodes=denylisted_nodes or None,
            )
        except Exception as exc:
            raise ConversionError(
                f"TFLite quantization ({scheme}) failed: {condense_converter_message(str(exc))}", details=str(exc)
            ) from exc
    return bytes(quantized)


def calibration_from(dataset) -> Calibration | None:
    """The converter's calibration callable over a `Dataset`: one float batch per sample, read lazily."""
    if dataset is None:
        return None

    names = getattr(dataset, "names", None)  # a MultiDataset: by input name, whatever order the converter uses

    def calibration():
        for x, _ in dataset.batches(1):
            yield dict(zip(names, x)) if names else x

    return calibration


def _from_tflite(source: ModelSource, scheme: str | None, calibration: Calibration | None) -> bytes:
    try:
        data = source.path.read_bytes()
    except OSError as exc:
        raise ModelLoadError(f"cannot read model {source.path}: {exc.strerror}") from exc
    if scheme is None:
        return data
    from quantdoctor.quantize.recipes import quantize_tflite

    return quantize_tflite(data, scheme, calibration)


def _apply_scheme(tf: Any, converter: Any, spec: Scheme, representative: Callable | None) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if spec.needs_calibration:
        converter.representative_dataset = representative
    if spec.supported_ops:
        converter.target_spec.supported_ops = [getattr(tf.lite.OpsSet, spec.supported_ops)]
    if spec.supported_types:
        converter.target_spec.supported_types = [getattr(tf, name) for name in spec.supported_types]
    if spec.io_type:
        converter.inference_input_type = getattr(tf, spec.io_type)
        converter.inference_output_type = getattr(tf, spec.io_type)
    if not spec.per_channel:
        # Private but stable since TF 2.4; it is the only switch for per-tensor weights in the TF converter.
        converter._experimental_disable_per_channel = True


def representative_dataset(
    calibration: Calibration, expected: Sequence[tuple] | None = None
) -> Callable[[], Iterator[list[np.ndarray]]]:
    """Turn a calibration callable into the converter's representative dataset of single-sample float32 batches.

    Args:
        calibration: returns an iterable of batches; a batch is one array (N, ...), a list of arrays for several
            inputs (in the model's input order), or a dict of arrays by input name.
        expected: the model's input shapes with the batch dimension first, to check samples against, if known.

    Raises (while the converter iterates):
        DataError: a sample's shape does not fit the model.
        UserInputError: the calibration data is empty.
    """

    def samples() -> Iterator[list[np.ndarray]]:
        count = 0
        for batch in calibration():
            if isinstance(batch, dict):  # by input name: the converter orders them by the model's signature
                named = {k: np.asarray(a, dtype=np.float32) for k, a in batch.items()}
                for index in range(len(next(iter(named.values())))):
                    count += 1
                    yield {k: a[index : index + 1] for k, a in named.items()}
                continue
            arrays = [np.asarray(a, dtype=np.float32) for a in (batch if isinstance(batch, (list, tuple)) else [batch])]
            for index in range(len(arrays[0])):
                sample = [a[index : index + 1] for a in arrays]
                if expected is not None:
                    _check_sample(sample, expected, count)
                count += 1
                yield sample
        if count == 0:
            raise UserInputError("the calibration data is empty; give at least one input sample")

    return samples


def _check_sample(sample: list[np.ndarray], expected: Sequence[tuple], index: int) -> None:
    if len(sample) != len(expected):
        raise DataError(f"calibration sample {index} feeds {len(sample)} inputs; the model has {len(expected)}")
    for array, shape in zip(sample, expected, strict=True):
        fits = array.ndim == len(shape) and all(
            want is None or got == want for got, want in zip(array.shape, shape, strict=True)
        )
        if not fits:
            raise DataError(
                f"calibration sample {index} has shape {array.shape[1:]}; the model input is {tuple(shape[1:])}"
            )


def _input_shapes(model: Any) -> list[tuple] | None:
    try:
        return [tuple(t.shape) for t in model.inputs]
    except (AttributeError, TypeError, ValueError):  # a subclassed model without symbolic inputs
        return None


def _run_converter(converter: Any, label: str) -> bytes:
    """Run `converter.convert()` with its prints, Python warnings and native stderr chatter held back."""
    with captured_native_stderr() as captured, contextlib.redirect_stdout(io.StringIO()) as printed:
        with warnings.catch_warnings():
            # Printed for every calibrated conversion; it means nothing for float-input models.
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
            try:
                result = converter.convert()
            except QuantDoctorError:
                raise  # raised by our own representative dataset
            except Exception as exc:
                failure = exc
            else:
                failure = None
    chatter = printed.getvalue() + captured.text
    if chatter.strip():
        log.debug("TFLite converter output (%s):\n%s", label, chatter)
    if failure is not None:
        message = f"TFLite conversion ({label}) failed: {condense_converter_message(str(failure))}"
        raise ConversionError(message, details=f"{failure}\n{chatter}") from failure
    return bytes(result)


def condense_converter_message(text: str) -> str:
    """Reduce the converter's multi-line MLIR diagnostics to the one line that says what went wrong."""
    errors: list[str] = []
    for line in text.splitlines():
        listed = re.match(r"\s*((?:TF Select|Custom) ops: .+)", line)
        if listed:
            errors.append(listed.group(1).strip())
            continue
        if "error:" not in line:
            continue
        reason = line.rsplit("error:", 1)[1]
        if reason.lstrip().startswith("loc("):
            reason = reason.rsplit("): ", 1)[-1]
        reason = reason.strip()
        if reason and not reason.startswith("failed while converting"):
            errors.append(reason)
    unique = list(dict.fromkeys(errors))
    return one_line("; ".join(unique) if unique else (text or "no message"))
