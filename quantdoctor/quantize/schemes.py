"""The post-training quantization schemes quantdoctor can apply, each a set of TFLite converter settings.

The structured fields (`supported_ops`, `per_channel`, ...) are what `quantize.converter` applies; the human-readable
`converter_settings` text is rendered from them, so the README table cannot drift from what the code does. A scheme
that no converter setting reproduces (`via_recipe`, e.g. `toco-1x`) is a float conversion followed by its
ai-edge-quantizer recipe in `quantize.recipes`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from quantdoctor.registry import Registry


@dataclass(frozen=True)
class Scheme:
    """One quantization scheme: what it does to weights, activations and I/O, and the converter settings for it.

    Attributes:
        name: registry name, e.g. "int8".
        summary: one line for humans.
        needs_calibration: the converter needs a representative dataset.
        weights / activations / io: what the quantized model holds, in words ("int8 per-channel", ...).
        supported_ops: name of a `tf.lite.OpsSet` member to restrict the converter to, if any.
        supported_types: names of `tf` dtypes for `target_spec.supported_types` (float16 weights).
        per_channel: False sets `converter._experimental_disable_per_channel = True`.
        io_type: name of a `tf` dtype for `inference_input_type`/`inference_output_type`, if not float.
        via_recipe: no converter setting makes this layout: convert to float, then apply the scheme's
            ai-edge-quantizer recipe (`quantize.recipes.RECIPES`), for Keras/SavedModel sources too.
    """

    name: str
    summary: str
    needs_calibration: bool
    weights: str
    activations: str
    io: str
    supported_ops: str | None = None
    supported_types: tuple[str, ...] = ()
    per_channel: bool = True
    io_type: str | None = None
    via_recipe: bool = False

    @property
    def converter_settings(self) -> str:
        """The `tf.lite.TFLiteConverter` settings of this scheme, as one line of text."""
        if self.via_recipe:
            return f"none: float conversion, then the ai-edge-quantizer recipe RECIPES['{self.name}']"
        parts = ["optimizations=[DEFAULT]"]
        if self.needs_calibration:
            parts.append("representative_dataset")
        if self.supported_ops:
            parts.append(f"supported_ops=[{self.supported_ops}]")
        if self.supported_types:
            parts.append(f"supported_types=[{', '.join('tf.' + t for t in self.supported_types)}]")
        if self.io_type:
            parts.append(f"inference_input_type=inference_output_type=tf.{self.io_type}")
        if not self.per_channel:
            parts.append("_experimental_disable_per_channel=True")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        """JSON-ready fields, including the rendered `converter_settings`."""
        data = asdict(self)
        data["supported_types"] = list(self.supported_types)
        data["converter_settings"] = self.converter_settings
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Scheme:
        """Inverse of `to_dict`; the rendered `converter_settings` is ignored."""
        fields = {k: v for k, v in data.items() if k != "converter_settings"}
        fields["supported_types"] = tuple(fields.get("supported_types", ()))
        return cls(**fields)


SCHEMES: Registry[Scheme] = Registry("scheme")

for _scheme in (
    Scheme(
        name="dynamic",
        summary="dynamic-range: int8 weights, activations quantized on the fly by the kernels",
        needs_calibration=False,
        weights="int8 per-channel (tensors of 1024+ elements)",
        activations="float32, quantized at run time",
        io="float32",
    ),
    Scheme(
        name="dynamic-per-tensor",
        summary="dynamic-range with one scale per weight tensor: the closest modern equivalent of TF 1.x --quantize",
        needs_calibration=False,
        weights="int8 per-tensor (tensors of 1024+ elements)",
        activations="float32, quantized at run time",
        io="float32",
        per_channel=False,
    ),
    Scheme(
        name="int8",
        summary="full integer with a representative dataset, float input and output",
        needs_calibration=True,
        weights="int8 per-channel",
        activations="int8",
        io="float32",
        supported_ops="TFLITE_BUILTINS_INT8",
    ),
    Scheme(
        name="int8-io",
        summary="full integer with int8 input and output, for integer-only accelerators",
        needs_calibration=True,
        weights="int8 per-channel",
        activations="int8",
        io="int8",
        supported_ops="TFLITE_BUILTINS_INT8",
        io_type="int8",
    ),
    Scheme(
        name="int8-per-tensor",
        summary="full integer with one scale per weight tensor",
        needs_calibration=True,
        weights="int8 per-tensor",
        activations="int8",
        io="float32",
        supported_ops="TFLITE_BUILTINS_INT8",
        per_channel=False,
    ),
    Scheme(
        name="int16x8",
        summary="int16 activations with int8 weights, for models whose activations need more range",
        needs_calibration=True,
        weights="int8 per-channel (16x8)",
        activations="int16",
        io="float32",
        supported_ops="EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8",
    ),
    Scheme(
        name="float16",
        summary="float16 weights, dequantized to float32 before compute",
        needs_calibration=False,
        weights="float16",
        activations="float32",
        io="float32",
        supported_types=("float16",),
    ),
    Scheme(
        name="toco-1x",
        summary="TF 1.12-1.13 post_training_quantize layout: hybrid CONV_2D/FULLY_CONNECTED, depthwise weights "
        "behind DEQUANTIZE (README: The TOCO 1.x scheme)",
        needs_calibration=False,
        weights="int8 symmetric per-tensor (CONV_2D, FULLY_CONNECTED, EMBEDDING_LOOKUP); asymmetric 8-bit per-tensor "
        "behind DEQUANTIZE (DEPTHWISE_CONV_2D); tensors of 1024+ elements",
        activations="float32; CONV_2D/FULLY_CONNECTED quantize theirs at run time",
        io="float32",
        via_recipe=True,
    ),
):
    SCHEMES.add(_scheme.name, _scheme)
del _scheme


def scheme_table_markdown() -> str:
    """Render the README table of schemes, one row per registered scheme."""
    header = ("Scheme", "What it is", "Weights", "Activations", "I/O", "Calibration", "Converter settings")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, scheme in SCHEMES.items():
        cells = (
            f"`{name}`",
            scheme.summary,
            scheme.weights,
            scheme.activations,
            scheme.io,
            "yes" if scheme.needs_calibration else "no",
            f"`{scheme.converter_settings}`",
        )
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def runtime_of_scheme(name: str) -> str:
    """"tflite" for a TFLite converter scheme, "onnx" for an ONNX Runtime quantizer scheme.

    Raises:
        UnknownNameError: no runtime knows the name (the message lists every scheme).
    """
    from quantdoctor.errors import UnknownNameError
    from quantdoctor.quantize.onnxrt import ORT_SCHEMES

    if name in SCHEMES.names():
        return "tflite"
    if name in ORT_SCHEMES.names():
        return "onnx"
    known = ", ".join([*SCHEMES.names(), *ORT_SCHEMES.names()])
    raise UnknownNameError(f"unknown scheme '{name}'; choose one of: {known} (see `quantdoctor schemes`)")


def needs_calibration(name: str) -> bool:
    """Whether scheme `name` (of either runtime) needs a representative dataset."""
    from quantdoctor.quantize.onnxrt import ORT_SCHEMES

    return (SCHEMES if runtime_of_scheme(name) == "tflite" else ORT_SCHEMES).get(name).needs_calibration


def check_scheme_runtime(scheme: str, runtime: str) -> None:
    """Raise when scheme `scheme` does not quantize models of `runtime` ("tflite" or "onnx").

    Raises:
        UnknownNameError: no runtime knows the scheme.
        UserInputError: the scheme belongs to the other runtime (the message names the right kind of scheme).
    """
    from quantdoctor.errors import UserInputError

    wanted = runtime_of_scheme(scheme)
    if wanted != runtime:
        names = {"tflite": ("TFLite", "a TFLite"), "onnx": ("ONNX", "an ONNX")}
        hint = "an ort-* scheme" if runtime == "onnx" else "a TFLite scheme (int8, dynamic, ...)"
        raise UserInputError(f"scheme '{scheme}' quantizes {names[wanted][0]} models but the model is "
                             f"{names[runtime][1]} model; use {hint} (see `quantdoctor schemes`)")
