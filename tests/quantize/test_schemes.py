"""Tests for quantize/schemes.py: the registry of schemes and the README table rendered from it."""

from __future__ import annotations

import json
import re

import pytest

from quantdoctor.errors import UnknownNameError
from quantdoctor.quantize.schemes import SCHEMES, Scheme, scheme_table_markdown

NAMES = ["dynamic", "dynamic-per-tensor", "int8", "int8-io", "int8-per-tensor", "int16x8", "float16", "toco-1x"]


def test_registry_holds_exactly_the_schemes():
    assert SCHEMES.names() == NAMES
    assert all(SCHEMES.get(name).name == name for name in NAMES)


def test_calibration_is_needed_by_the_static_schemes_only():
    needing = {name for name in NAMES if SCHEMES.get(name).needs_calibration}
    assert needing == {"int8", "int8-io", "int8-per-tensor", "int16x8"}


@pytest.mark.parametrize(
    "name, settings",
    [
        ("dynamic", "optimizations=[DEFAULT]"),
        ("dynamic-per-tensor", "optimizations=[DEFAULT], _experimental_disable_per_channel=True"),
        ("int8", "optimizations=[DEFAULT], representative_dataset, supported_ops=[TFLITE_BUILTINS_INT8]"),
        (
            "int8-io",
            "optimizations=[DEFAULT], representative_dataset, supported_ops=[TFLITE_BUILTINS_INT8], "
            "inference_input_type=inference_output_type=tf.int8",
        ),
        (
            "int8-per-tensor",
            "optimizations=[DEFAULT], representative_dataset, supported_ops=[TFLITE_BUILTINS_INT8], "
            "_experimental_disable_per_channel=True",
        ),
        (
            "int16x8",
            "optimizations=[DEFAULT], representative_dataset, "
            "supported_ops=[EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]",
        ),
        ("float16", "optimizations=[DEFAULT], supported_types=[tf.float16]"),
        ("toco-1x", "none: float conversion, then the ai-edge-quantizer recipe RECIPES['toco-1x']"),
    ],
)
def test_converter_settings_text(name, settings):
    assert SCHEMES.get(name).converter_settings == settings


def test_descriptions():
    assert SCHEMES.get("dynamic").weights.startswith("int8 per-channel")
    assert SCHEMES.get("dynamic-per-tensor").weights.startswith("int8 per-tensor")
    assert SCHEMES.get("int16x8").weights == "int8 per-channel (16x8)"
    assert SCHEMES.get("int16x8").activations == "int16"
    assert SCHEMES.get("int8-io").io == "int8" and SCHEMES.get("int8").io == "float32"
    assert SCHEMES.get("float16").weights == "float16"


def test_scheme_is_frozen_and_serialises():
    scheme = SCHEMES.get("int8-io")
    with pytest.raises(AttributeError):
        scheme.name = "x"  # type: ignore[misc]
    data = json.loads(json.dumps(scheme.to_dict()))
    assert data["converter_settings"] == scheme.converter_settings
    assert Scheme.from_dict(data) == scheme
    assert Scheme.from_dict(SCHEMES.get("float16").to_dict()).supported_types == ("float16",)
    assert Scheme.from_dict(SCHEMES.get("toco-1x").to_dict()).via_recipe


def test_unknown_scheme_lists_the_known_ones():
    with pytest.raises(UnknownNameError, match="unknown scheme 'int4'; choose one of: dynamic, dynamic-per-tensor"):
        SCHEMES.get("int4")


def test_markdown_table_has_one_row_per_scheme():
    lines = scheme_table_markdown().splitlines()
    assert len(lines) == 2 + len(NAMES)
    assert lines[0] == "| Scheme | What it is | Weights | Activations | I/O | Calibration | Converter settings |"
    assert lines[1] == "|---|---|---|---|---|---|---|"
    for line, name in zip(lines[2:], NAMES, strict=True):
        assert line.startswith(f"| `{name}` | ")
        # Every row has the header's 7 cells: 8 pipes not preceded by a backslash.
        assert len(re.findall(r"(?<!\\)\|", line)) == 8
    assert "| yes |" in lines[2 + NAMES.index("int8")] and "| no |" in lines[2]
