"""Find out what kind of float model the user gave, and load Keras models from .keras and .h5 files.

TensorFlow and Keras are imported inside the functions that need them, after `quiet_tensorflow_logging()`, so that
`import quantdoctor` stays fast and TensorFlow's C++ start-up chatter is not printed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quantdoctor.errors import ModelLoadError

if TYPE_CHECKING:
    import keras

KINDS = ("keras", "savedmodel", "tflite", "onnx", "torch", "frozen")
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
# A TFLite flatbuffer carries this file identifier at bytes 4..8 (bytes 0..4 are the root table offset).
TFLITE_IDENTIFIER = b"TFL3"
HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"  # at byte 0 of every file h5py writes (no user block)
_SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
_NOT_A_MODEL = "is not a .keras, .h5, SavedModel directory, .tflite, .onnx or .pt2 file (nor a TF 1.x frozen graph .pb)"


@dataclass(frozen=True)
class ModelSource:
    """The float model the user gave: its kind (one of `KINDS`) and where it is.

    A TF 1.x frozen graph ("frozen") also needs its input and output node names (`inputs`, `outputs`, as toco's
    --input-arrays/--output-arrays) and, when the graph leaves them open, `input_shapes`; a SavedModel may name the
    `signature_key` to convert (default: the converter's choice, serving_default).
    """

    kind: str
    path: Path
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    input_shapes: tuple[tuple[int, ...], ...] = ()
    signature_key: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"model kind must be one of {KINDS}, not {self.kind!r}")
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "inputs", tuple(self.inputs))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "input_shapes", tuple(tuple(int(d) for d in s) for s in self.input_shapes))

    def __str__(self) -> str:  # reports and comparisons name the model by its path
        return str(self.path)

    def options(self) -> dict[str, Any]:
        """The graph options that are set (for a recipe to rebuild this source from its path); {} for most models."""
        found = {"inputs": list(self.inputs), "outputs": list(self.outputs),
                 "input_shapes": [list(s) for s in self.input_shapes], "signature_key": self.signature_key}
        return {k: v for k, v in found.items() if v}


def resolve_source(model: str | Path | ModelSource) -> ModelSource:
    """The ModelSource of a path (see `detect_source`) or of one the caller built, with its graph options checked.

    Raises:
        ModelLoadError: the model is missing or unsupported; a frozen graph whose arrays are missing, unknown or
            of open shape (see `backends.tf1.check_frozen`); graph options given for a model of another kind.
    """
    source = model if isinstance(model, ModelSource) else detect_source(model)
    if (source.inputs or source.outputs or source.input_shapes) and source.kind != "frozen":
        raise ModelLoadError(
            f"{source.path} is a {source.kind} model; --input-arrays, --output-arrays and --input-shapes are for "
            "TF 1.x frozen graphs (.pb)"
        )
    if source.signature_key and source.kind != "savedmodel":
        raise ModelLoadError(f"{source.path} is a {source.kind} model; --signature-key is for SavedModel folders")
    if source.kind == "frozen":
        from quantdoctor.backends.tf1 import check_frozen

        check_frozen(source)
    return source


def detect_source(path: str | Path) -> ModelSource:
    """Tell a .keras/.h5 file, a SavedModel folder, a .tflite flatbuffer, .onnx, .pt2 and a frozen graph (.pb) apart
    from the path and file header.

    A file with another suffix is still taken as TFLite when it carries the flatbuffer identifier.

    Raises:
        ModelLoadError: the path is missing or is none of the supported kinds.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise ModelLoadError(f"model {path} does not exist; check the path")
    if path.is_dir():
        if any((path / name).is_file() for name in _SAVED_MODEL_FILES):
            return ModelSource("savedmodel", path)
        raise ModelLoadError(f"{path} {_NOT_A_MODEL} (the folder has no saved_model.pb)")
    suffix = path.suffix.lower()
    if suffix in KERAS_SUFFIXES:
        return ModelSource("keras", path)
    if _has_tflite_identifier(path):
        return ModelSource("tflite", path)
    if path.name in _SAVED_MODEL_FILES:
        raise ModelLoadError(f"{path} is the graph of a SavedModel; give its folder {path.parent}")
    if suffix == ".pb":  # a TF 1.x frozen GraphDef; its input/output nodes come from the user (ModelSource fields)
        return ModelSource("frozen", path)
    if suffix == ".onnx":
        return ModelSource("onnx", path)
    if suffix == ".pt2":  # a torch.export program: exported to ONNX, labelled with module paths
        return ModelSource("torch", path)
    if suffix == ".tflite":
        raise ModelLoadError(
            f"{path} is not a TFLite flatbuffer (no 'TFL3' identifier at byte 4); re-export the model as .tflite"
        )
    raise ModelLoadError(f"{path} {_NOT_A_MODEL}")


def load_keras_model(path: str | Path, safe_mode: bool = True) -> keras.Model:
    """Load a .keras or .h5 model (including tf.keras 2.x HDF5 files) without its training configuration.

    Args:
        path: the .keras/.h5/.hdf5 file.
        safe_mode: Keras' guard against running Python code stored in the file (Lambda layers); turn it off only
            for files you trust.

    Raises:
        ModelLoadError: the file is missing, cannot be read, or the model's input size is not fixed.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"Keras model {path} does not exist; check the path")
    if path.suffix.lower() not in KERAS_SUFFIXES:
        raise ModelLoadError(f"{path} is not a .keras or .h5 file")
    _check_keras_container(path)
    quiet_tensorflow_logging()
    import keras

    try:
        # compile=False: the optimizer and loss are not needed and often do not deserialize across Keras versions.
        model = keras.models.load_model(str(path), compile=False, safe_mode=safe_mode)
    except Exception as exc:  # Keras raises anything from ValueError to OSError and h5py errors.
        # Longer than usual: Keras' safe-mode refusal puts its remedy at the end of a 400-character message.
        reason = one_line(str(exc) or type(exc).__name__, limit=500)
        raise ModelLoadError(f"cannot load Keras model {path}: {reason}") from exc
    if not isinstance(model, keras.Model):
        raise ModelLoadError(f"{path} holds a {type(model).__name__}, not a Keras model")
    require_fixed_input_shape(model, str(path))
    return model


def _check_keras_container(path: Path) -> None:
    """Refuse an empty, truncated or foreign file before Keras does (Keras says "File not found" for all of them).

    A .keras file is a zip archive; a .h5/.hdf5 file carries the HDF5 signature.
    """
    import zipfile

    try:
        size = path.stat().st_size
        if size == 0:
            raise ModelLoadError(f"Keras model {path} is empty (0 bytes); save the model again with model.save()")
        if path.suffix.lower() == ".keras":
            if not zipfile.is_zipfile(path):
                raise ModelLoadError(
                    f"{path} is not a .keras file (a .keras model is a zip archive; this one is truncated, damaged or "
                    "another format); save the model again with model.save('model.keras')"
                )
            return
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise ModelLoadError(f"cannot read Keras model {path}: {exc.strerror}") from exc
    if head != HDF5_SIGNATURE:
        raise ModelLoadError(
            f"{path} is not an HDF5 file (no HDF5 signature; truncated, damaged or another format); "
            "save the model again with model.save('model.h5') or as .keras"
        )


def keras_input_shape(model: Any):
    """The per-sample input shape of a Keras model; for a model with several inputs, their names and shapes as a
    `quantdoctor.data.multi.InputSpecs` (what `load_dataset` takes)."""
    shape = model.input_shape
    if isinstance(shape, list):
        if len(shape) != 1:
            from quantdoctor.data.multi import InputSpecs

            names = tuple(str(getattr(t, "name", f"x{i}")).split(":")[0] for i, t in enumerate(model.inputs))
            return InputSpecs(names, tuple(tuple(int(d) for d in s[1:]) for s in shape))
        shape = shape[0]
    return tuple(int(s) for s in shape[1:])


def require_fixed_input_shape(model: Any, where: str) -> None:
    """Refuse a model whose inputs have an unknown size other than the batch dimension.

    Args:
        model: a Keras model.
        where: how to name the model in the message (usually its path).

    Raises:
        ModelLoadError: an input has a `None` dimension after the batch dimension.
    """
    try:
        inputs = list(model.inputs or [])
    except (AttributeError, ValueError):  # a subclassed model that was never called has no symbolic inputs
        return
    for tensor in inputs:
        shape = tuple(tensor.shape)
        if any(dim is None for dim in shape[1:]):
            name = getattr(tensor, "name", "?")
            raise ModelLoadError(
                f"{where}: input '{name}' has shape {shape} with a size left open (None); quantdoctor needs a fixed "
                "input size: rebuild the model with e.g. keras.Input(shape=(224, 224, 3)) and save it again"
            )


def quiet_tensorflow_logging() -> None:
    """Import TensorFlow with its C++ start-up lines held back and absl's INFO/WARNING lines off; errors still show.

    Call it before the first `import tensorflow` or `import keras` (see `quantdoctor.native`).
    """
    from quantdoctor.native import import_tensorflow_quietly

    import_tensorflow_quietly()


def one_line(text: str, limit: int = 300) -> str:
    """Squeeze a multi-line library message into one line of at most `limit` characters."""
    squeezed = re.sub(r"\s+", " ", text).strip()
    if len(squeezed) > limit:
        squeezed = squeezed[: limit - 3].rstrip() + "..."
    return squeezed


def _has_tflite_identifier(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            header = handle.read(8)
    except OSError as exc:
        raise ModelLoadError(f"cannot read model {path}: {exc.strerror}") from exc
    return header[4:8] == TFLITE_IDENTIFIER
