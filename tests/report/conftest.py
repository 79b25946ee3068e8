"""Hand-built diagnoses shared by the report tests (no model is run: the renderers only read the data model)."""

from __future__ import annotations

import dataclasses
import math

import pytest

from quantdoctor.diagnose.results import (
    ClassLoss,
    Coverage,
    Diagnosis,
    LayerResult,
    MatchMethod,
    ModelMetrics,
    Onset,
    QuantParams,
    RunInfo,
    TensorError,
    Unmatched,
    WeightInfo,
)
from quantdoctor.tasks.base import ChannelGroup, OutputMetrics, TaskResult


def tensor_error(sqnr_db: float, ref_rms: float = 2.0, samples: int = 20) -> TensorError:
    """A TensorError whose numbers agree with each other (relative RMSE = 10^(-SQNR/20))."""
    rel = 0.0 if sqnr_db == math.inf else 10.0 ** (-sqnr_db / 20.0)
    return TensorError(
        sqnr_db=sqnr_db,
        cosine_mean=1.0 / math.sqrt(1.0 + rel * rel),
        relative_rmse=rel,
        rmse=rel * ref_rms,
        max_abs_error=4.0 * rel * ref_rms,
        ref_rms=ref_rms,
        num_samples=samples,
        num_elements=samples * 1000,
        mean_abs_error=0.8 * rel * ref_rms,
        mean_error=0.0,
        ref_mean=0.5,
    )


def act(scale: float, dtype: str = "int8") -> QuantParams:
    return QuantParams(dtype=dtype, scales=(scale,), zero_points=(-128,), axis=None)


def weights(name: str, shape: tuple[int, ...], per_channel: bool = True) -> WeightInfo:
    n = shape[-1] if per_channel else 1
    quant = QuantParams(dtype="int8", scales=tuple(0.01 * (i + 1) for i in range(n)), zero_points=(0,) * n,
                        axis=len(shape) - 1 if per_channel else None)
    return WeightInfo(tensor=name, shape=shape, storage="int8", kernel="integer", quant=quant)


# (keras layers, op type, shape, SQNR dB, input SQNR dB, weights, activation quant)
_LAYERS = [
    (("stem_conv", "stem_bn", "stem_relu"), "CONV_2D", (1, 16, 16, 8), 38.5, math.inf,
     weights("stem/kernel", (3, 3, 3, 8)), act(0.0235)),
    (("b0_dw", "b0_dw_bn", "b0_dw_relu"), "DEPTHWISE_CONV_2D", (1, 16, 16, 8), 35.2, 38.5,
     weights("b0_dw/kernel", (1, 3, 3, 8)), act(0.0235)),
    (("b0_project", "b0_project_bn"), "CONV_2D", (1, 16, 16, 4), 33.0, 35.2,
     weights("b0_project/kernel", (4, 1, 1, 8)), act(0.081)),
    (("b1_expand", "b1_expand_bn", "b1_expand_relu"), "CONV_2D", (1, 16, 16, 24), 31.2, 33.0,
     weights("b1_expand/kernel", (24, 1, 1, 4)), act(0.0235)),
    (("b1_dw", "b1_dw_bn", "b1_dw_relu"), "DEPTHWISE_CONV_2D", (1, 8, 8, 24), 4.1, 31.2,
     weights("b1_dw/kernel", (1, 3, 3, 24), per_channel=False), act(0.0235)),
    (("b1_project", "b1_project_bn"), "CONV_2D", (1, 8, 8, 16), 3.9, 4.1,
     weights("b1_project/kernel", (16, 1, 1, 24)), act(0.11)),
    (("head_conv", "head_bn", "head_relu"), "CONV_2D", (1, 8, 8, 32), 3.6, 3.9,
     weights("head/kernel", (32, 1, 1, 16)), act(0.0235)),
    (("avg_pool",), "MEAN", (1, 32), 3.5, 3.6, None, None),
    (("predictions",), "FULLY_CONNECTED", (1, 10), 3.2, 3.5,
     WeightInfo(tensor="predictions/kernel", shape=(10, 32), storage="float32", kernel="float", quant=None,
                note="left in float: fewer than 1024 elements"), act(0.2)),
]


def make_layers(rows=_LAYERS) -> tuple[LayerResult, ...]:
    layers = []
    prev = "input_1"
    for pos, (keras, op, shape, sqnr, in_sqnr, w, q) in enumerate(rows):
        name = f"model/{keras[-1]}/out"
        err = tensor_error(sqnr)
        layers.append(LayerResult(
            position=pos,
            float_tensor=name,
            quant_tensor=name + ";quant",
            keras_layers=keras,
            op_type=op,
            shape=shape,
            match=MatchMethod.SHAPE_TOPOLOGY if op == "MEAN" else MatchMethod.EXACT_ID,
            accumulated=err,
            quant=q,
            weights=w,
            input_tensors=(prev,),
            input_sqnr_db=in_sqnr,
            rmse_over_scale=err.rmse / q.scales[0] if q else None,
            isolated=tensor_error(sqnr + 2.0) if op == "DEPTHWISE_CONV_2D" else None,
        ))
        prev = name
    return tuple(layers)


RUN = RunInfo(
    float_model="models/tiny_effnet.keras",
    float_kind="keras",
    quantized_model="converted with scheme int8-per-tensor",
    scheme="int8-per-tensor",
    data="tests/photos (24 images)",
    preprocess="resize 256, crop 224, (x - 127) / 128",
    calibration="first 4 images",
    num_eval_samples=20,
    batch_size=8,
    seconds={"float": 2.6, "quantized": 0.3, "convert": 11.0},
)


@pytest.fixture
def diagnosis() -> Diagnosis:
    return make_diagnosis()


@pytest.fixture
def healthy_diagnosis() -> Diagnosis:
    return make_healthy_diagnosis()


def make_diagnosis() -> Diagnosis:
    """Nine matched layers, an onset at b1_dw_relu (per-tensor depthwise weights), three unmatched, labels present."""
    metrics = ModelMetrics(
        num_samples=20, num_labelled=20, k=5,
        top1_agreement=0.35, topk_agreement=0.8,
        float_top1=0.85, float_topk=0.95, quant_top1=0.3, quant_topk=0.75,
        kl_mean=1.2345, logit_sqnr_db=3.2, logit_cosine=0.6789,
        worst_classes=tuple(
            ClassLoss(class_index=c, support=3, float_rate=1.0, quant_rate=r, drop=1.0 - r)
            for c, r in [(7, 0.0), (2, 0.0), (9, 1 / 3), (4, 1 / 3), (1, 1 / 3), (0, 2 / 3)]
        ),
    )
    unmatched = (
        Unmatched(side="float", tensor="model/b0_dw_bn/batchnorm", op_type="BatchNormalization",
                  reason="folded into the preceding convolution"),
        Unmatched(side="float", tensor="model/b1_dw_bn/batchnorm", op_type="BatchNormalization",
                  reason="folded into the preceding convolution"),
        Unmatched(side="quantized", tensor="tfl.quantize", op_type="QUANTIZE",
                  reason="inserted by the converter, no float counterpart"),
    )
    layers = make_layers()
    onset = Onset(position=4, label="b1_dw_relu", sqnr_db=4.1, input_sqnr_db=31.2,
                  rule="first layer whose SQNR drops by more than 10 dB across it")
    return Diagnosis(run=RUN, model=metrics, layers=layers, unmatched=unmatched,
                     coverage=Coverage(matched=9, float_tensors=11, weighted_layers_matched=7, weighted_layers=7),
                     onset=onset)


def make_healthy_diagnosis() -> Diagnosis:
    """No labels, no onset, every tensor matched: a dynamic-range model that keeps its accuracy."""
    rows = [(k, op, shape, 40.0 - 0.5 * i, (math.inf if i == 0 else 40.0 - 0.5 * (i - 1)), w, None)
            for i, (k, op, shape, _, _, w, _) in enumerate(_LAYERS)]
    metrics = ModelMetrics(
        num_samples=20, num_labelled=0, k=5, top1_agreement=1.0, topk_agreement=1.0,
        float_top1=None, float_topk=None, quant_top1=None, quant_topk=None,
        kl_mean=0.0004, logit_sqnr_db=36.0, logit_cosine=0.9999, worst_classes=(),
    )
    run = RunInfo(float_model="models/tiny_effnet.keras", float_kind="keras", quantized_model="models/tiny_dr.tflite",
                  scheme=None, data="tests/photos (24 images)", preprocess="(x - 127) / 128",
                  calibration="none needed", num_eval_samples=20, batch_size=8)
    return Diagnosis(run=run, model=metrics, layers=make_layers(rows), unmatched=(),
                     coverage=Coverage(matched=9, float_tensors=9, weighted_layers_matched=7, weighted_layers=7),
                     onset=None)


# -- diagnoses of other tasks (quantdoctor/tasks): the headline and the outputs come from `Diagnosis.task` -------------

DETECT_EXAMPLE = {
    "sample": 17,
    "box_format": "xyxy",
    "float": [[4.0, 6.0, 20.0, 26.0, 3, 0.98], [30.0, 8.0, 44.0, 30.0, 7, 0.91], [50.0, 34.0, 62.0, 60.0, 1, 0.95]],
    "quant": [],
}


def make_detect_task(example: dict | None = None) -> TaskResult:
    """A YOLO-style detector whose single output packs boxes [0:4] (0..63.8) and class scores [4:14] (0..1) on one
    int8 grid of step 0.527: the boxes keep 121 levels, the scores 2."""
    out = OutputMetrics(
        index=0, name="Identity", role="boxes + class scores", shape=(84, 14), sqnr_db=6.3, relative_error=0.484,
        max_abs_error=51.2,
        groups=(ChannelGroup("box [0:4]", 0, 4, 0.0, 63.8, 38.1, 121.0),
                ChannelGroup("scores [4:14]", 4, 14, 0.0, 1.0, 2.1, 2.0)),
    )
    return TaskResult(
        task="detect", headline="f1",
        metrics={"f1": 0.12, "precision": 0.5, "recall": 0.07, "box_error": 1.9, "mean_iou": 0.81,
                 "float_detections_per_sample": 2.9, "quant_detections_per_sample": 0.4},
        outputs=(out,), num_samples=40, details={"example": dict(DETECT_EXAMPLE if example is None else example)},
    )


def make_segment_task() -> TaskResult:
    """An 8x8 three-class segmenter whose quantized mask loses 8 pixels of class 2 to class 0 on sample 4."""
    float_mask = [[0] * 8 for _ in range(8)]
    for r in range(2, 6):
        for c in range(1, 4):
            float_mask[r][c] = 1  # 12 pixels
        for c in range(5, 8):
            float_mask[r][c] = 2  # 12 pixels
    quant_mask = [row[:] for row in float_mask]
    for r in (2, 3):
        for c in range(5, 8):
            quant_mask[r][c] = 0
    for r in (4, 5):
        quant_mask[r][7] = 0  # class 2 loses 6 + 2 = 8 pixels
    out = OutputMetrics(index=0, name="logits", role="mask logits", shape=(8, 8, 3), sqnr_db=14.2,
                        relative_error=0.195, max_abs_error=3.4)
    return TaskResult(
        task="segment", headline="miou",
        metrics={"miou": 0.62, "pixel_agreement": 0.875, "float_miou_labels": 0.7, "quant_miou_labels": 0.55,
                 "miou_labels": 0.55},
        outputs=(out,), num_samples=12, float_values={"miou_labels": 0.7},
        details={"example": {"sample": 4, "float_mask": float_mask, "quant_mask": quant_mask}},
    )


def make_classify_task() -> TaskResult:
    """The classifier of `make_diagnosis` seen as a task (as tasks/classify.py names its metrics): top-1 agreement
    0.35, accuracy 0.85 → 0.30."""
    out = OutputMetrics(index=0, name="predictions", role="class scores", shape=(10,), sqnr_db=3.2,
                        relative_error=0.692, max_abs_error=5.1)
    return TaskResult(
        task="classify", headline="agreement",
        metrics={"agreement": 0.35, "topk_agreement": 0.8, "top1": 0.3, "topk": 0.75, "kl_mean": 1.2345,
                 "logit_sqnr_db": 3.2},
        outputs=(out,), num_samples=20, float_values={"top1": 0.85, "topk": 0.95},
    )


def make_task_diagnosis(task: TaskResult) -> Diagnosis:
    """`make_diagnosis`'s layers with no classifier metrics: a detector or segmenter."""
    return dataclasses.replace(make_diagnosis(), model=None, task=task, margins=None)


@pytest.fixture
def detect_diagnosis() -> Diagnosis:
    return make_task_diagnosis(make_detect_task())


@pytest.fixture
def segment_diagnosis() -> Diagnosis:
    return make_task_diagnosis(make_segment_task())


@pytest.fixture
def classify_task_diagnosis() -> Diagnosis:
    return dataclasses.replace(make_diagnosis(), task=make_classify_task())
