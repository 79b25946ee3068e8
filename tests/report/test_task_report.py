"""The report of a model that is not a classifier (`Diagnosis.model is None`): headline from the task, every output and
its channel groups, the task's figures; and a classifier with a task result keeps its classifier view."""

import base64
import dataclasses
import io
import math
import re

import numpy as np
import pytest

from quantdoctor.report import outputs_text as ot
from quantdoctor.report import task_figures as tf
from quantdoctor.report.frame import OUTPUT_COLUMNS, outputs_frame
from quantdoctor.report.html import render_html
from quantdoctor.report.render import render
from quantdoctor.report.terminal import render_text
from quantdoctor.tasks.base import ChannelGroup, OutputMetrics

from .conftest import DETECT_EXAMPLE, make_detect_task, make_task_diagnosis

GROUP_SENTENCE = (
    "output 'Identity' mixes two quantities: box [0:4] keeps 38.1 dB (spans 0..63.8, 121 levels), scores [4:14] "
    "collapses to 2.1 dB (spans 0..1.00, 2 levels); both share one grid, whose step the wider range sets."
)

# Golden terminal text of the detector's task sections at width 100 (between the header and the error onset).
EXPECTED_DETECT = """\
Task: detect (40 samples; headline F1)
detection F1 vs float 0.12 (precision 0.50, recall 0.07), 1.00 for the float model
Metric                        Quantized   Float
───────────────────────────────────────────────
F1                                0.120       -
precision                         0.500       -
recall                            0.070       -
box error                         1.900       -
mean IoU                          0.810       -
float detections per sample       2.900       -
quant detections per sample       0.400       -

Outputs (SQNR in dB; errors against the float output over all samples)
#   Output     Role                   Shape   SQNR   Rel err   Max err
──────────────────────────────────────────────────────────────────────
0   Identity   boxes + class scores   84x14    6.3     0.484      51.2

Channel groups (levels: steps of the output's grid the float range spans)
Output     Group           Channels   Float range   Levels   SQNR
─────────────────────────────────────────────────────────────────
Identity   box [0:4]          [0:4]       0..63.8      121   38.1
Identity   scores [4:14]     [4:14]       0..1.00        2    2.1

output 'Identity' mixes two quantities: box [0:4] keeps 38.1 dB (spans 0..63.8, 121 levels), scores
[4:14] collapses to 2.1 dB (spans 0..1.00, 2 levels); both share one grid, whose step the wider
range sets.

Error onset:"""


def _captions(html: str) -> list[str]:
    return [re.sub(r"\s+", " ", c).strip() for c in re.findall(r"<figcaption>(.*?)</figcaption>", html, re.S)]


# -- terminal ----------------------------------------------------------------------------------------------------------


def test_detector_terminal_shows_task_outputs_and_group_sentence(detect_diagnosis):
    text = render_text(detect_diagnosis, width=100)
    start = text.index("Task: detect")
    assert text[start:text.index("Error onset:") + len("Error onset:")] == EXPECTED_DETECT
    assert "Model metrics" not in text and "Worst classes" not in text
    assert max(len(line) for line in text.splitlines()) <= 100


def test_segmenter_terminal_has_its_headline_and_no_group_section(segment_diagnosis):
    text = render_text(segment_diagnosis, width=80)
    assert "segmentation mIoU vs float 0.62, 1.00 for the float model" in text
    rows = {line.rsplit(None, 2)[0].strip(): line.split()[-2:] for line in text.splitlines()
            if "IoU" in line or "agreement" in line}
    assert rows["pixel agreement"] == ["0.875", "-"]
    assert rows["mIoU labels"] == ["0.550", "0.700"]  # the float model's own value against the labels
    row = next(line for line in text.splitlines() if line.startswith("0   logits"))
    assert row.split() == ["0", "logits", "mask", "logits", "8x8x3", "14.2", "0.195", "3.4"]
    assert "Channel groups" not in text and "mixes" not in text
    assert max(len(line) for line in text.splitlines()) <= 80


def test_classifier_with_a_task_keeps_its_metrics_and_adds_the_outputs(diagnosis, classify_task_diagnosis):
    before, after = render_text(diagnosis), render_text(classify_task_diagnosis)
    head = before[:before.index("Error onset:")]
    assert after.startswith(head.rstrip("\n"))  # the classifier view is unchanged up to the new section
    added = after[len(head.rstrip("\n")):after.index("Error onset:")]
    assert "Outputs (SQNR in dB" in added
    assert next(l for l in added.splitlines() if l.startswith("0 ")).split() == \
        ["0", "predictions", "class", "scores", "10", "3.2", "0.692", "5.1"]
    assert "Task:" not in after  # the headline is the classifier's table


def test_without_task_and_model_nothing_crashes(diagnosis):
    bare = dataclasses.replace(diagnosis, model=None, task=None)
    assert "Model metrics: none measured (no task result)." in render_text(bare)
    assert "No model metrics: no task result." in render_html(bare)
    assert outputs_frame(bare).empty


# -- sentences ---------------------------------------------------------------------------------------------------------


def test_headline_quotes_the_float_value_when_it_has_one(classify_task_diagnosis):
    task = classify_task_diagnosis.task
    assert ot.headline_sentence(task) == "classification agreement vs float 0.35, 1.00 for the float model"
    top1 = dataclasses.replace(task, headline="top1")
    assert ot.headline_sentence(top1) == "classification top-1 0.30, 0.85 for the float model"
    assert ot.task_metric_rows(task)[2] == ("top-1", "0.300", "0.850")
    assert ot.task_metric_rows(task)[-1] == ("logit SQNR dB", "3.2", "-")


@pytest.mark.parametrize("best, worst, expected", [
    (38.1, 2.1, True),
    (38.1, 12.0, False),  # the weaker group still holds its signal
    (18.0, 2.1, False),  # nothing keeps its signal: the output is just bad, not mixed
    (math.inf, 2.1, True),
])
def test_group_sentence_only_when_one_group_keeps_and_another_collapses(best, worst, expected):
    o = OutputMetrics(0, "out", "values", (10,), 5.0, 0.5, 1.0,
                      groups=(ChannelGroup("a", 0, 4, -1.0, 1.0, best, None),
                              ChannelGroup("b", 4, 10, 0.0, 0.5, worst, None)))
    sentence = ot.group_sentence(o)
    assert bool(sentence) is expected
    if expected:  # a name without a range gets one; no levels, no grid clause
        assert sentence == (f"output 'out' mixes two quantities: a [0:4] keeps {ot.fmt_db(best)} dB (spans "
                            f"-1.00..1.00), b [4:10] collapses to 2.1 dB (spans 0..0.500).")


@pytest.mark.parametrize("value, text", [(0.0, "0"), (1.0, "1.00"), (63.8, "63.8"), (121.0, "121"), (-0.5, "-0.500"),
                                         (12345.0, "1.23e+04")])
def test_sig3(value, text):
    assert ot.sig3(value) == text


def test_metric_titles():
    assert [ot.metric_title(n) for n in ("f1", "mean_iou", "top1_agreement", "box_mae_px", "logit_sqnr_db")] == \
        ["F1", "mean IoU", "top-1 agreement", "box MAE px", "logit SQNR dB"]


# -- HTML and figures --------------------------------------------------------------------------------------------------


def test_detector_html_has_task_outputs_and_figure_captions(detect_diagnosis):
    html = render_html(detect_diagnosis)
    assert "<h2>Task metrics</h2>" in html and "<h2>Model metrics</h2>" not in html
    assert "detection F1 vs float 0.12 (precision 0.50, recall 0.07), 1.00 for the float model" in html
    assert '<section id="outputs">' in html
    assert GROUP_SENTENCE.replace("'", "&#39;") in html
    captions = _captions(html)
    assert "Sample 17: the float model finds 3 objects (scores 0.91-0.98); the quantized model finds 0." in captions
    assert ("Output &#39;Identity&#39; (boxes + class scores), SQNR per channel group: box [0:4] 38.1 dB, "
            "scores [4:14] 2.1 dB. Output &#39;Identity&#39; mixes two quantities") in " ".join(captions)
    # error by depth, per-layer SQNR, the detections and the channel groups
    assert html.count("<svg") == 4
    order = [html.index(f'id="{name}"') for name in ("metrics", "outputs", "task-example", "groups-0", "onset")]
    assert order == sorted(order)


def test_segmenter_html_shows_the_masks_with_the_pixel_agreement(segment_diagnosis):
    html = render_html(segment_diagnosis)
    assert ("Sample 4: the quantized mask agrees with the float mask on 87.5% of pixels (56 of 64); class 2 covers "
            "12 pixels in the float mask and 4 in the quantized one.") in _captions(html)
    assert html.count("<svg") == 3  # depth, layer SQNR, masks: one output without groups has no group chart


def test_classifier_html_keeps_model_metrics_and_lists_outputs(classify_task_diagnosis):
    html = render_html(classify_task_diagnosis)
    assert "<h2>Model metrics</h2>" in html and "Top-1 agreement with float" in html
    assert '<section id="outputs">' in html and "class scores" in html
    assert 'id="task-example"' not in html


def _png(array: np.ndarray) -> str:
    from matplotlib.image import imsave

    buf = io.BytesIO()
    imsave(buf, array, format="png", cmap="gray")
    return base64.b64encode(buf.getvalue()).decode()


def test_detections_on_the_image_count_matches():
    image = np.zeros((64, 48))
    example = dict(DETECT_EXAMPLE, image=_png(image), quant=[[5.0, 6.0, 21.0, 27.0, 3, 0.6], [30, 8, 44, 30, 2, 0.4]])
    d = make_task_diagnosis(make_detect_task(example))
    figure = next(f for f in tf.task_figures(d) if f.id == "task-example")
    assert figure.caption == ("Sample 17: the float model finds 3 objects (scores 0.91-0.98); the quantized model "
                              "finds 2 (scores 0.40-0.60), 1 of them matching a float detection (same class, "
                              "IoU ≥ 0.50).")
    assert "data:image/png;base64," in figure.svg  # the sample is drawn under the boxes
    assert tf._canvas(example, np.zeros((0, 6)), tf._image(example)) == (64.0, 48.0)


@pytest.mark.parametrize("example, boxes, image, canvas", [
    ({"size": [480, 640]}, [[0, 0, 700, 500]], (64, 48), (480.0, 640.0)),  # the example says
    ({}, [[0.1, 0.2, 0.5, 0.9]], (64, 48), (1.0, 1.0)),  # normalized boxes
    ({}, [[0, 0, 96, 64]], (64, 48), (128.0, 96.0)),  # a thumbnail of a twice larger input
    ({}, [[0, 0, 30, 20]], (64, 48), (64.0, 48.0)),  # the image at the input's size
    ({}, [[0, 0, 62, 60]], None, (66.0, 69.0)),  # no image: the boxes' reach and a tenth
])
def test_canvas(example, boxes, image, canvas):
    rows = np.asarray([b + [0, 0.9] for b in boxes], dtype=np.float64)
    assert tf._canvas(example, rows, None if image is None else np.zeros(image)) == canvas


def test_an_unreadable_image_falls_back_to_a_canvas():
    example = dict(DETECT_EXAMPLE, image=base64.b64encode(b"not a png").decode())
    assert tf._image(example) is None
    assert tf.detections_caption(example).endswith("the boxes are drawn on an empty canvas.")
    assert "data:image/png" not in tf.detections_svg(example)


@pytest.mark.parametrize("fmt, rows", [
    ("xyxy", [[10, 20, 30, 60, 1, 0.9]]),
    ("yxyx", [[20, 10, 60, 30, 1, 0.9]]),
    ("cxcywh", [[20, 40, 20, 40, 1, 0.9]]),
])
def test_box_formats_become_xyxy(fmt, rows):
    assert tf._boxes(rows, fmt)[0, :4].tolist() == [10, 20, 30, 60]


def test_matching_is_one_to_one_and_needs_the_same_class():
    f = tf._boxes([[0, 0, 10, 10, 1, 0.9]], "xyxy")
    q = tf._boxes([[0, 0, 10, 10, 1, 0.8], [1, 1, 10, 10, 1, 0.7], [0, 0, 10, 10, 2, 0.9]], "xyxy")
    assert tf.matched(f, q) == 1


# -- data frame and render -----------------------------------------------------------------------------------------


def test_outputs_frame_has_a_row_per_output_and_group(detect_diagnosis):
    frame = outputs_frame(detect_diagnosis)
    assert list(frame.columns) == list(OUTPUT_COLUMNS)
    assert frame["group"].isna().tolist() == [True, False, False]
    assert frame["group"].iloc[1:].tolist() == ["box [0:4]", "scores [4:14]"]
    assert frame["sqnr_db"].tolist() == [6.3, 38.1, 2.1]
    assert frame["levels"].iloc[1:].tolist() == [121.0, 2.0] and math.isnan(frame["levels"].iloc[0])


def test_every_format_renders_a_detector(detect_diagnosis):
    for fmt in ("terminal", "json", "html", "frame"):
        assert render(detect_diagnosis, fmt) is not None


# -- results made by the task accumulators themselves (no model run) -----------------------------------------------


def test_renders_what_the_detect_and_segment_tasks_produce():
    import json

    from quantdoctor.tasks.base import TaskOptions
    from quantdoctor.tasks.detect import DetectAccumulator
    from quantdoctor.tasks.segment import SegmentAccumulator
    from tests.tasks.conftest import specs

    head = np.zeros((10, 6))
    head[:2] = [[10, 10, 4, 4, 0.9, 0.1], [30, 30, 4, 4, 0.2, 0.8]]
    lost = head.copy()
    lost[:, 4:] = 0.2  # every score under the threshold
    det = DetectAccumulator(specs((10, 6)), TaskOptions(), scales=[0.5])
    det.update([head[None]], [lost[None]])
    d = make_task_diagnosis(det.result())
    text = render_text(d)
    assert "detection F1 vs float 0.00 (precision 0.00, recall 0.00), 1.00 for the float model" in text
    html = render_html(d)
    assert "Sample 0: the float model finds 2 objects (scores 0.80-0.90); the quantized model finds 0." in html
    json.loads(d.to_json())

    f, q = np.eye(3)[np.array([[0, 1], [1, 2]])], np.eye(3)[np.array([[0, 1], [2, 2]])]
    seg = SegmentAccumulator(specs(f.shape), TaskOptions())
    seg.update([f[None]], [q[None]])
    d = make_task_diagnosis(seg.result())
    assert "segmentation mIoU vs float" in render_text(d)
    assert "Sample 0: the quantized mask agrees with the float mask on 75.0% of pixels (3 of 4); class 1 covers 2 " \
           "pixels in the float mask and 1 in the quantized one." in _captions(render_html(d))


def _verified(d):
    """`d` with a verification measured on its task's headline (F1 for the detector): op 4 exact recovers 90 %."""
    from quantdoctor.diagnose.verification import Outcome, Sensitivity, Verification

    def outcome(kind, ops, value, recovery):
        return Outcome(kind, ops, value, value, None, 6.3, recovery, metric=d.task.headline)

    base, fixed = outcome("quantized", (), 0.12, 0.0), outcome("op_exact", (4,), 0.91, 0.9)
    row = Sensitivity(4, "b1_dw_relu", "DEPTHWISE_CONV_2D", fixed, None, True)
    v = Verification(samples=40, candidates=9, target=0.8, baseline=base,
                     all_exact=outcome("op_exact", (4, 5), 1.0, 1.0), causes=(4,), cause_outcome=fixed, table=(row,),
                     evaluations=3, seconds=1.5, cause_labels=("b1_dw_relu",))
    return dataclasses.replace(d, verification=v)


def test_verification_names_the_task_headline(detect_diagnosis):
    import json

    import jsonschema

    from .test_schema import SCHEMA

    d = _verified(detect_diagnosis)
    text = render_text(d)
    assert "Sensitivity (F1 at the output, 40 samples; quantized 0.12)" in text
    assert ("Verification (3 evaluations, 1.5 s, 40 samples): making b1_dw_relu exact brings F1 from 0.12 to 0.91; "
            "every op exact gives 1.00.") in render_text(d, width=200)
    assert "top-1 agreement" not in text
    early = dataclasses.replace(d, verification=dataclasses.replace(d.verification, decided_early=2))
    assert "Verification (3 evaluations (2 decided before their last batch), 1.5 s, 40 samples)" in \
        render_text(early, width=200)
    assert "Exact: F1 with this op computed by its float twin" in render_html(d)
    doc = json.loads(d.to_json())
    assert doc["verification"]["baseline"]["metric"] == "f1"
    assert list(jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text())).iter_errors(doc)) == []
