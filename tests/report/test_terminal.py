import dataclasses
import io
import math

from rich.console import Console

from quantdoctor.report import sentences
from quantdoctor.report.terminal import render, render_text

# Golden output at width 100 (render_text strips trailing blanks). Regenerate by printing render_text(diagnosis)
# and reviewing the diff by eye.
EXPECTED_HEAD = """\
quantdoctor diagnosis
Float model      models/tiny_effnet.keras (keras)
Quantized model  converted with scheme int8-per-tensor
Data             tests/photos (24 images)
Preprocess       resize 256, crop 224, (x - 127) / 128
Calibration      first 4 images
Samples          20 (batch 8)

Model metrics
Top-1 agreement with float          0.350
Top-5 agreement with float          0.800
Top-1 accuracy (float → quantized)  0.850 → 0.300
Top-5 accuracy (float → quantized)  0.950 → 0.750
Labelled samples                    20 of 20
Mean KL(float || quantized)         1.23
Logit SQNR                          3.2 dB
Logit cosine                        0.679
Worst classes                       class 7: accuracy 1.000 → 0.000 (3 samples)
                                    class 2: accuracy 1.000 → 0.000 (3 samples)
                                    class 9: accuracy 1.000 → 0.333 (3 samples)
                                    class 4: accuracy 1.000 → 0.333 (3 samples)
                                    class 1: accuracy 1.000 → 0.333 (3 samples)

Error onset: layer b1_dw_relu (DEPTHWISE_CONV_2D, position 4): SQNR falls from 31.2 dB at its input
to 4.1 dB.
"""

EXPECTED_HEALTHY_HEAD = """\
quantdoctor diagnosis
Float model      models/tiny_effnet.keras (keras)
Quantized model  models/tiny_dr.tflite
Data             tests/photos (24 images)
Preprocess       (x - 127) / 128
Calibration      none needed
Samples          20 (batch 8)

Model metrics
Top-1 agreement with float   1.000
Top-5 agreement with float   1.000
Mean KL(float || quantized)  0.0004
Logit SQNR                   36.0 dB
Logit cosine                 1.000

No error onset: no layer's SQNR drops sharply; the lowest is 36.0 dB at predictions (position 8).
"""


def test_header_metrics_and_onset_match_golden_text(diagnosis):
    assert render_text(diagnosis, width=100).startswith(EXPECTED_HEAD)


def test_without_labels_accuracy_rows_are_left_out(healthy_diagnosis):
    text = render_text(healthy_diagnosis, width=100)
    assert text.startswith(EXPECTED_HEALTHY_HEAD)
    assert "accuracy" not in text and "Worst classes" not in text


def test_worst_layers_table_starts_with_the_onset_layer(diagnosis):
    lines = render_text(diagnosis, width=100).splitlines()
    rule = next(i for i, line in enumerate(lines) if set(line) == {"─"})
    assert lines[rule - 1].split()[:4] == ["Pos", "Layer", "Op", "SQNR"]
    assert lines[rule + 1].split() == ["4", "b1_dw_relu", "DEPTHWISE_CONV_2D", "4.1", "31.2", "27.1", "0.848", "53.1",
                                       "int8", "per-tensor", "int8"]
    # all nine layers are listed, and the exact input of the first layer reads "inf", not a huge number
    assert sum(1 for line in lines[rule + 1:] if line[:3].strip().isdigit()) == 9
    stem = next(line for line in lines if " stem_relu " in line)
    assert stem.split()[3:6] == ["38.5", "inf", sentences.fmt_db(diagnosis.layers[0].sqnr_drop_db)]


def test_coverage_lines_count_the_commonest_reasons(diagnosis):
    text = render_text(diagnosis, width=100)
    assert "Matched 9/11 float tensors (81.8%); conv/dense layers 7/7 (100.0%)." in text
    assert "Unmatched: 3 (2x folded into the preceding convolution; 1x inserted by the converter" in text


def test_only_five_worst_classes_are_shown(diagnosis):
    assert len(diagnosis.model.worst_classes) == 6
    text = render_text(diagnosis)
    assert "class 1:" in text and "class 0:" not in text


def test_render_prints_the_same_text_to_a_given_console(diagnosis):
    buf = io.StringIO()
    render(diagnosis, Console(file=buf, width=100, color_system=None))
    assert [l.rstrip() for l in buf.getvalue().splitlines()] == render_text(diagnosis).splitlines()


def test_text_fits_the_width_even_with_a_long_layer_name(diagnosis):
    long = dataclasses.replace(diagnosis.layers[4], keras_layers=("block_" * 12 + "dw",))
    d = dataclasses.replace(diagnosis, layers=diagnosis.layers[:4] + (long,) + diagnosis.layers[5:])
    text = render_text(d, width=100)
    assert max(len(line) for line in text.splitlines()) <= 100
    assert "DEPTHWISE_CONV_2D" in text  # the op column did not fold: the layer name did


def test_number_formats():
    assert [sentences.fmt_db(v) for v in (31.249, math.inf, -math.inf, math.nan, None)] == \
        ["31.2", "inf", "-inf", "nan", "-"]
    assert sentences.fmt_ratio(0.98765) == "0.988"
    assert sentences.fmt_num(0.000123456) == "0.000123"


def test_80_columns_drop_the_cosine_column_and_keep_every_other_value_whole(diagnosis):
    text = render_text(diagnosis, width=80)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 80
    header = next(line for line in lines if line.startswith("Pos"))
    assert header.split() == ["Pos", "Layer", "Op", "SQNR", "In", "Drop", "scale", "Weights", "Act"]
    first = lines[lines.index(header) + 2]
    assert first.split() == [
        "4", "b1_dw_relu", "DEPTHWISE_CONV_2D", "4.1", "31.2", "27.1", "53.1", "int8", "per-tensor", "int8"
    ]
