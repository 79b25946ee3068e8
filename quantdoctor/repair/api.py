"""repair(): the smallest change to a quantized model that brings it within an accuracy budget of the float model."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from quantdoctor.cache import cache_option
from quantdoctor.errors import DataError, UserInputError
from quantdoctor.repair.result import RepairResult

MODEL_NAME, RECIPE_NAME, RESULT_NAME = "repaired.tflite", "recipe.json", "repair.json"
HTML_NAME = "repair.html"


@cache_option
def repair(
    model: str | Path | Any,
    data: Any,
    scheme: str | None = None,
    quantized: str | Path | None = None,
    max_drop: float = 1.0,
    metric: str | None = None,
    out: str | Path | None = None,
    *,
    preprocess: str = "none",
    resize: str = "crop",
    calib: str | Path | None = None,
    calib_count: int = 100,
    batch_size: int = 16,
    top_k: int = 3,
    max_samples: int | None = None,
    rank_size: int = 32,
    search: Any = None,
    cache: bool = True,
    executor: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    task: str = "auto",
    task_options: Any = None,
) -> RepairResult:
    """Find the fewest actions that bring the quantized model within `max_drop` points of the float model on `metric`.

    Args:
        model: the float model (.keras, .h5, SavedModel folder, float .tflite or float .onnx), or a `ModelSource`
            (e.g. `quantdoctor.frozen_graph(...)` for a TF 1.x frozen graph).
        data: evaluation (and, for calibrating schemes, calibration) data, as for `diagnose`.
        scheme: the scheme to repair (an ort-* scheme for an .onnx model); or give `quantized`, a model made elsewhere
            (.tflite, or .onnx for an ONNX model; its scheme is read from the file).
        max_drop: allowed drop in points (1.0 = one percentage point) of `metric` against the float model.
        metric: a budget metric of the task (None: its headline): "agreement" (top-1 agreement with float), "top1"
            or "topk" (accuracy on labels) for a classifier; "f1", "recall", "precision" for a detector; "miou",
            "pixel_agreement" for a segmenter; "fidelity" for a regressor (see `repair.evaluate.METRICS`).
        task, task_options: how the outputs are judged, as for `diagnose` ("auto" decides from the outputs).
        out: folder for repaired.tflite (repaired.onnx), recipe.json and repair.json (written atomically).
        rank_size: samples of the evaluation set each step's diagnosis runs on; the search ranks candidates on at
            least as many, and on enough that one changed decision costs less than `max_drop`
            (`repair.search.ranking_size`).
        search: a `repair.search.SearchConfig` (its max_drop is replaced by `max_drop`).
        cache: read and write converted models (the calibrated model, every candidate built with the converter) in the
            user's cache (`quantdoctor.cache`); False never touches it.
        executor: where each round's candidates are evaluated: "local" (this process) or "ray" (`workers` Ray actors;
            `ray_address` joins a cluster: "auto" or "ray://host:port"). The search decides the same either way.

    Returns:
        A `RepairResult`; `budget_met` is False (and `model` the best found) when the budget cannot be met.

    Raises:
        UserInputError: bad model, data or options.
    """
    from dataclasses import replace

    from quantdoctor.backends.runtimes import RUNTIMES
    from quantdoctor.repair.evaluate import Evaluator
    from quantdoctor.repair.recipe import Recipe, file_sha256, sha256
    from quantdoctor.repair.search import GreedySearch, SearchConfig

    start = time.perf_counter()
    if max_drop < 0:
        raise UserInputError(f"--max-drop must be 0 or more points, got {max_drop}")
    from quantdoctor.executors import make_executor

    pool = make_executor(executor, workers, ray_address)  # checked now; nothing starts before the first round
    p = prepare(model, data, scheme, quantized, preprocess=preprocess, resize=resize, calib=calib,
                calib_count=calib_count, max_samples=max_samples)
    source, runtime, given, scheme, eval_ds, builder = p.source, p.runtime, p.given, p.scheme, p.eval_ds, p.builder
    evaluator = Evaluator(builder.float_model, eval_ds, metric, batch_size=batch_size, top_k=top_k, rank_size=rank_size,
                          runtime=runtime, task=task, task_options=task_options)
    diagnose_fn = _diagnoser(builder.float_model, eval_ds, evaluator, batch_size, RUNTIMES.get(runtime).suffix,
                             rank_size)
    cfg = replace(search or SearchConfig(), max_drop=max_drop)

    note = ""
    baseline = evaluator.evaluate(given if given is not None else builder.build([]), full=True)
    if given is not None:
        rebuilt = evaluator.evaluate(builder.build([]), full=True)
        note = (f" (the given model scores {baseline.value:.4f}; rebuilt here with scheme {scheme}: "
                f"{rebuilt.value:.4f})")
    if baseline.drop <= max_drop + 1e-9:
        actions, final, trajectory, skipped, changed = [], baseline, (), {}, 0
        repaired = given if given is not None else builder.build([])
    else:
        engine = GreedySearch(builder, evaluator, diagnose_fn, cfg, executor=pool,
                              baseline=None if given is not None else baseline)
        try:
            actions, final = engine.run()
        finally:
            diagnose_fn.cleanup()
            pool.close()
        trajectory, skipped, changed = tuple(engine.state.trajectory), engine.state.skipped, engine.changed_ops(actions)
        repaired = builder.build(actions)  # `final`: the search's evaluation of these bytes on the whole set
    met = final.drop <= max_drop + 1e-9
    name = evaluator.metric.name
    if met:
        message = (f"budget met: {name} {final.value:.4f} (drop {final.drop:.2f} points <= {max_drop:g}) with "
                   f"{len(actions)} change(s) to {changed} op(s); baseline {baseline.value:.4f}{note}")
    else:
        message = (f"budget NOT met: the best model found has {name} {final.value:.4f} (drop {final.drop:.2f} points > "
                   f"{max_drop:g}); baseline {baseline.value:.4f}; the best model is written anyway{note}")
    result = RepairResult(
        scheme=scheme, backend=builder.backend.value, metric=name, max_drop=max_drop, baseline_metric=baseline.value,
        final_metric=final.value, actions=tuple(actions), changed_ops=changed, trajectory=trajectory,
        evaluations=evaluator.count, seconds=round(time.perf_counter() - start, 2), budget_met=met,
        skipped=tuple(f"{k}: {v}" for k, v in skipped.items()), message=message, model=repaired,
        float_model=str(model), splice_evaluations=getattr(diagnose_fn, "splices", 0),
    )
    if out is not None:
        ranges = builder.final_ranges(actions) if builder.ranges else None
        recipe = Recipe(scheme, builder.backend.value, tuple(actions), file_sha256(source.path), sha256(repaired), ranges,
                        source=source.options() or None)
        write_repair(result, recipe, Path(out), model_name(runtime))
    return result


@dataclass(frozen=True)
class Prepared:
    """What a repair (or a fix check) starts from: the model, its runtime, the data split and a builder."""

    source: Any
    runtime: str
    given: bytes | None  # a quantized model made elsewhere
    scheme: str
    eval_ds: Any
    builder: Any


def prepare(model: Any, data: Any, scheme: str | None, quantized: Any, *, preprocess: str = "none",
            resize: str = "crop", calib: Any = None, calib_count: int = 100, max_samples: int | None = None) -> Prepared:
    """Read the model and data, split off the calibration samples (as diagnose does) and set up the real builder.

    Raises:
        UserInputError: both or neither of `scheme` and `quantized`, a PyTorch program, a scheme of another runtime.
    """
    from quantdoctor.backends.keras.loader import load_keras_model, resolve_source
    from quantdoctor.repair.build import Builder

    if (scheme is None) == (quantized is None):
        raise UserInputError("give exactly one of --scheme and --quantized")
    source = resolve_source(model)
    if source.kind == "torch":
        raise UserInputError("repair takes Keras, SavedModel, TF 1.x frozen graph, .tflite and .onnx models; export "
                             "the PyTorch program to ONNX first (diagnose takes .pt2 programs)")
    runtime = "onnx" if source.kind == "onnx" else "tflite"
    given = None
    if quantized is not None:
        given, scheme = _read_quantized(quantized, runtime)
    _check_scheme(scheme, runtime)
    keras_model = load_keras_model(source.path) if source.kind == "keras" else None
    dataset = _dataset(data, source, keras_model, preprocess, resize)
    eval_ds, calib_ds = _split(dataset, scheme, calib, calib_count, preprocess, resize)
    if max_samples is not None and len(eval_ds) > max_samples:
        eval_ds = eval_ds.subset(np.arange(max_samples))
    builder = Builder.prepare(keras_model if keras_model is not None else source, scheme, calib_ds)
    return Prepared(source, runtime, given, scheme, eval_ds, builder)


def model_name(runtime: str) -> str:
    """The file name of the repaired model: repaired.tflite, or repaired.onnx for an ONNX model."""
    return MODEL_NAME if runtime == "tflite" else "repaired" + _suffix(runtime)


def _suffix(runtime: str) -> str:
    from quantdoctor.backends.runtimes import RUNTIMES

    return RUNTIMES.get(runtime).suffix


def _read_quantized(path: str | Path, runtime: str) -> tuple[bytes, str]:
    """(bytes, scheme) of a quantized model made elsewhere, for a float model of `runtime`."""
    if runtime == "onnx":
        from quantdoctor.backends.onnx.runner import OnnxRunner, read_onnx
        from quantdoctor.repair.build_onnx import infer_ort_scheme

        if Path(path).suffix.lower() != ".onnx":
            raise UserInputError(f"--quantized {path}: the float model is an ONNX model; give a quantized .onnx")
        data = read_onnx(path)
        return data, infer_ort_scheme(OnnxRunner(data, 1).model)
    from quantdoctor.backends.tflite.runner import read_tflite

    data = read_tflite(path)
    return data, infer_scheme(data)


def _check_scheme(scheme: str, runtime: str) -> None:
    """The scheme must quantize the model's runtime (checked before any heavy work)."""
    from quantdoctor.quantize.schemes import check_scheme_runtime

    check_scheme_runtime(scheme, runtime)


def infer_scheme(model: bytes) -> str:
    """The scheme a quantized .tflite was most likely made with, from its tensor types and weight scales (for a
    quantized .onnx: `repair.build_onnx.infer_ort_scheme`)."""
    from quantdoctor.backends.tflite.runner import TfliteRunner

    g = TfliteRunner(model, 1).graph
    acts = [g.tensors[t] for t in g.activations()]
    weights = [t for t in g.tensors.values() if t.is_constant and t.dtype == "int8" and t.quant is not None and len(t.shape) > 1]
    per_channel = any(len(t.quant.scales) > 1 for t in weights)
    if any(t.dtype == "int16" for t in acts):
        return "int16x8"
    if any(t.dtype == "int8" for t in acts):
        if g.tensors[g.inputs[0]].dtype == "int8":
            return "int8-io"
        return "int8" if per_channel else "int8-per-tensor"
    if weights:
        return "dynamic" if per_channel else "dynamic-per-tensor"
    if any(t.dtype == "float16" for t in g.tensors.values()):
        return "float16"
    raise UserInputError("the --quantized model holds no quantized tensors; give a quantized .tflite")


def write_repair(result: RepairResult, recipe: Any, out: Path, model_file: str = MODEL_NAME) -> dict[str, Path]:
    """Write repaired.tflite (`model_file`), recipe.json, repair.json and repair.html into `out`, each atomically."""
    from quantdoctor.files import atomic_write_bytes

    if out.exists() and not out.is_dir():
        raise UserInputError(f"--out {out} is a file; give a folder (it is created if missing)")
    html = result.to_html()  # rendered before anything is written: a failing figure leaves no partial output
    out.mkdir(parents=True, exist_ok=True)
    paths = {"model": out / model_file, "recipe": out / RECIPE_NAME, "result": out / RESULT_NAME,
             "html": out / HTML_NAME}
    atomic_write_bytes(paths["model"], result.model)
    atomic_write_bytes(paths["recipe"], (recipe.to_json() + "\n").encode())
    atomic_write_bytes(paths["result"], (result.to_json() + "\n").encode())
    atomic_write_bytes(paths["html"], html.encode())
    return paths


def _dataset(data: Any, source: Any, keras_model: Any, preprocess: str, resize: str):
    from quantdoctor.data import Dataset, load_dataset
    from quantdoctor.data.multi import MultiDataset
    from quantdoctor.diagnose.outputs import input_specs

    if isinstance(data, (Dataset, MultiDataset)):
        return data
    if keras_model is not None:
        from quantdoctor.backends.keras.loader import keras_input_shape

        shape = keras_input_shape(keras_model)  # InputSpecs for several inputs
    elif source.kind == "onnx":
        from quantdoctor.backends.onnx.runner import OnnxRunner, read_onnx

        shape = input_specs(OnnxRunner(read_onnx(source.path), 1).inputs())
    else:
        from quantdoctor.backends.tflite.runner import TfliteRunner
        from quantdoctor.quantize.converter import convert

        shape = input_specs(TfliteRunner(convert(source, None), 1).inputs())
    return load_dataset(data, shape, preprocess=preprocess, resize=resize)


def _split(dataset: Any, scheme: str, calib: Any, calib_count: int, preprocess: str, resize: str):
    from quantdoctor.data import load_dataset, split_calibration
    from quantdoctor.quantize.schemes import needs_calibration

    if not needs_calibration(scheme):
        return dataset, None
    if calib is not None:
        return dataset, load_dataset(calib, dataset.input_shape, preprocess=preprocess, resize=resize)
    if len(dataset) < 2:
        raise DataError("calibration needs a part of --data but it has 1 sample; give --calib DATA or more data")
    calib_idx, eval_idx = split_calibration(len(dataset), calib_count)
    return dataset.subset(eval_idx), dataset.subset(calib_idx)


def _diagnoser(float_model: bytes, eval_ds: Any, evaluator: Any, batch_size: int, suffix: str = ".tflite",
               size: int = 32):
    """diagnose() of a candidate on the first `size` samples (counted as one quantized evaluation): it only ranks the
    next candidates, which are then measured on the ranking subset."""
    from quantdoctor.diagnose.pipeline import diagnose

    folder = tempfile.mkdtemp(prefix="quantdoctor-repair-")
    float_path = os.path.join(folder, "float" + suffix)
    Path(float_path).write_bytes(float_model)

    def run(model: bytes):
        q_path = os.path.join(folder, "candidate" + suffix)
        Path(q_path).write_bytes(model)
        subset = eval_ds.subset(np.arange(min(size, len(eval_ds))))
        evaluator.count += 1
        d = diagnose(float_path, subset, quantized=q_path, batch_size=batch_size, task=evaluator.task.name,
                     task_options=evaluator.task_options)
        run.splices += 0 if d.verification is None else d.verification.evaluations  # type: ignore[attr-defined]
        return d

    run.splices = 0  # type: ignore[attr-defined]
    run.cleanup = lambda: shutil.rmtree(folder, ignore_errors=True)  # type: ignore[attr-defined]
    return run
