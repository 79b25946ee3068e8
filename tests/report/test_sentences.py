import dataclasses
import math

from quantdoctor.diagnose.results import ClassLoss, Onset
from quantdoctor.report.sentences import depth_caption, onset_sentence, unmatched_sentence, worst_class_lines


def test_onset_sentence(diagnosis):
    assert onset_sentence(diagnosis) == (
        "Error onset: layer b1_dw_relu (DEPTHWISE_CONV_2D, position 4): SQNR falls from 31.2 dB at its input to 4.1 dB."
    )


def test_onset_without_matched_input(diagnosis):
    d = dataclasses.replace(diagnosis, onset=Onset(position=0, label="stem_relu", sqnr_db=2.0, input_sqnr_db=None,
                                                   rule="r"))
    assert onset_sentence(d) == (
        "Error onset: layer stem_relu (CONV_2D, position 0): SQNR is 2.0 dB with no matched input."
    )


def test_no_onset_names_the_lowest_tensor(healthy_diagnosis):
    assert onset_sentence(healthy_diagnosis) == (
        "No error onset: no layer's SQNR drops sharply; the lowest is 36.0 dB at predictions (position 8)."
    )


def test_caption_is_computed_from_the_numbers(diagnosis):
    # minimum before the onset is 31.2 dB over positions 0..3
    assert depth_caption(diagnosis) == (
        "SQNR stays above 30 dB for the first 4 tensors, then falls to 4.1 dB at b1_dw_relu; "
        "the last tensor, predictions, ends at 3.2 dB."
    )


def test_caption_bounds(diagnosis):
    first = dataclasses.replace(diagnosis.layers[0], accumulated=dataclasses.replace(
        diagnosis.layers[0].accumulated, sqnr_db=8.6))
    d = dataclasses.replace(diagnosis, layers=(first,) + diagnosis.layers[1:])
    assert depth_caption(d).startswith("SQNR stays above 8 dB for the first 4 tensors")
    exact = tuple(dataclasses.replace(l, accumulated=dataclasses.replace(l.accumulated, sqnr_db=math.inf))
                  for l in diagnosis.layers[:4])
    d = dataclasses.replace(diagnosis, layers=exact + diagnosis.layers[4:])
    assert depth_caption(d).startswith("SQNR is exact (inf dB) for the first 4 tensors, then falls to 4.1 dB")


def test_caption_without_onset(healthy_diagnosis):
    assert depth_caption(healthy_diagnosis) == (
        "SQNR stays at or above 36.0 dB over 9 matched tensors with no sharp drop (lowest at predictions, position 8)."
    )


def test_unmatched_sentence(diagnosis, healthy_diagnosis):
    assert unmatched_sentence(healthy_diagnosis) == "Every tensor was matched."
    assert unmatched_sentence(diagnosis, n=1) == (
        "Unmatched: 3 (2x folded into the preceding convolution; 1 other reason)."
    )


def test_worst_classes_without_labels_count_kept_predictions(healthy_diagnosis):
    model = dataclasses.replace(healthy_diagnosis.model, worst_classes=(
        ClassLoss(class_index=17, support=3, float_rate=1.0, quant_rate=1 / 3, drop=2 / 3),
        ClassLoss(class_index=4, support=1, float_rate=1.0, quant_rate=0.0, drop=1.0),
    ))
    assert worst_class_lines(model) == [
        "class 17: 1 of 3 float predictions kept",
        "class 4: 0 of 1 float prediction kept",
    ]
