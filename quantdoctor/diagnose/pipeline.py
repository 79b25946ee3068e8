"""diagnose(): run the float model and its quantized version on the same data and measure where they part.

One streaming pass per model: each batch runs through both interpreters, every matched tensor pair updates its error
accumulator, and the batch is dropped. Memory does not grow with the number of samples.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from quantdoctor.diagnose.config import DiagnoseConfig
from quantdoctor.diagnose.layers import build_layers, coverage
from quantdoctor.diagnose.onset import find_onset
from quantdoctor.diagnose.results import Diagnosis, RunInfo
from quantdoctor.errors import DataError
from quantdoctor.progress import Progress


def diagnose(
    float_model: str | Path | Any,
    data: str | Path | Any,
    quantized: str | Path | None = None,
    scheme: str | None = None,
    *,
    config: DiagnoseConfig | None = None,
    progress: bool = False,
    **options: Any,
) -> Diagnosis:
    """Compare a float model with its quantized version, layer by layer.

    Args:
        float_model: .keras / .h5 file, SavedModel directory, float .tflite, float .onnx, a `torch.export` program
            (.pt2), a `ModelSource` (e.g. `quantdoctor.frozen_graph(...)` for a TF 1.x frozen graph), or a
            `torch.nn.Module` (exported to ONNX here; needs the `torch` extra).
        data: .npz (x, optional y), .npy, an image folder, or a `quantdoctor.data.Dataset`.
        quantized: a quantized .tflite made elsewhere; or give `scheme` to convert here.
        scheme: quantization scheme name (see `quantdoctor.quantize.schemes.SCHEMES`).
        config: all options at once; keyword `options` (preprocess=, batch_size=, ...) override its fields.
        progress: show progress bars on stderr.

    Raises:
        UserInputError: bad model, data or options (the message says what to do).
    """
    base = config or DiagnoseConfig(scheme=scheme, quantized=None if quantized is None else str(quantized))
    if config is not None and (scheme is not None or quantized is not None):
        options = {**options, "scheme": scheme, "quantized": None if quantized is None else str(quantized)}
    cfg = replace(base, **options) if options else base
    from quantdoctor.backends.keras.loader import ModelSource
    from quantdoctor.cache import use_cache
    from quantdoctor.executors import make_executor

    # The executor is checked now (Ray installed?) and starts its workers at the passes; closed at the end.
    with Progress(progress) as prog, use_cache(cfg.cache), make_executor(cfg.executor, cfg.workers, cfg.ray_address) as pool:
        if isinstance(float_model, ModelSource):
            return _Run(cfg, prog, pool=pool).diagnose(float_model, data)
        if isinstance(float_model, (str, Path)):
            return _Run(cfg, prog, pool=pool).diagnose(Path(float_model), data)
        return _Run(cfg, prog, module=float_model, pool=pool).diagnose(Path(f"<{type(float_model).__name__}>"), data)


class _Run:
    """One diagnose run; the methods are its steps in order."""

    def __init__(self, cfg: DiagnoseConfig, prog: Progress, module: Any = None, pool: Any = None) -> None:
        from quantdoctor.executors.local import LocalExecutor

        self.cfg, self.prog = cfg, prog
        self.pool = pool if pool is not None else LocalExecutor()  # where the passes and counterfactuals run
        self.module = module  # a torch.nn.Module given through the API
        self.module_labels: dict[str, str] = {}  # ONNX tensor name -> PyTorch module path (torch sources)
        self._float_outputs = None  # the verification samples' float outputs, kept by the passes

    def diagnose(self, model_path: Path | Any, data) -> Diagnosis:
        from quantdoctor.backends.keras.loader import ModelSource, keras_input_shape, resolve_source
        from quantdoctor.diagnose.outputs import in_input_order, input_specs
        from quantdoctor.tasks.classify import classification_metrics
        from quantdoctor.backends.runtimes import RUNTIMES
        from quantdoctor.matching.match import match_graphs
        from quantdoctor.quantize.converter import supports_calibrated_pair

        cfg = self.cfg
        source = ModelSource("torch", model_path) if self.module is not None else resolve_source(model_path)
        runtime = RUNTIMES.get("onnx" if source.kind in ("onnx", "torch") else "tflite")
        self._check_scheme(runtime.name)
        keras_model, layer_infos = self._load_keras(source)
        dataset = None
        if keras_model is not None:  # read the data before converting: bad data fails in seconds, not minutes
            dataset = self._dataset(data, keras_input_shape(keras_model))  # InputSpecs for several inputs
        quant_name = str(cfg.quantized) if cfg.quantized is not None else f"converted with scheme {cfg.scheme}"
        if keras_model is not None and cfg.quantized is None and supports_calibrated_pair(cfg.scheme):
            eval_ds, calib_ds, calib_text = self._split(dataset)
            float_bytes, quant_bytes = self._calibrated_pair(keras_model, calib_ds)
            float_runner = runtime.runner(float_bytes, cfg.batch_size)
        else:
            float_bytes = self._float_model(source, keras_model, runtime, data)
            float_runner = runtime.runner(float_bytes, cfg.batch_size)
            if dataset is None:
                dataset = self._dataset(data, input_specs(float_runner.inputs()))
            eval_ds, calib_ds, calib_text = self._split(dataset)
            if cfg.quantized is not None:
                quant_bytes = runtime.read(Path(cfg.quantized))
            else:
                quant_bytes = self._quantize(source, keras_model, calib_ds, float_runner.model)
        quant_runner = runtime.runner(quant_bytes, cfg.batch_size)
        eval_ds = in_input_order(eval_ds, float_runner)
        float_bytes, quant_bytes = float_runner.model, quant_runner.model  # what every index refers to
        self._check_compatible(float_runner, quant_runner)
        provenance = None
        if cfg.quantized is not None:  # refused (unless --force) when it was made from another float model
            from quantdoctor.diagnose.provenance import require_provenance

            provenance = require_provenance(float_runner, quant_runner, cfg.quantized, force=cfg.force)
        task, options = self._task(float_runner, eval_ds)

        fg, qg = float_runner.graph, quant_runner.graph
        matching = match_graphs(fg, qg)
        labels = self._labels(fg, keras_model, layer_infos, source)
        probes = self._probes(float_runner, quant_runner, matching) if cfg.explain else None
        errors, task_result, margins, channel_errors = self._passes(eval_ds, float_runner, quant_runner, matching, task,
                                                                    options, probes)
        model_metrics = classification_metrics(task_result)  # None unless the task is classify
        weight_reports = self._weights(float_bytes, quant_bytes) if cfg.explain and runtime.weight_analysis else {}

        evidence = probes.results() if probes is not None else None
        layers = build_layers(fg, qg, matching, errors, labels, evidence, weight_reports, channel_errors)
        keras_weighted = None if layer_infos is None else {l.name for l in layer_infos if l.has_weights}
        cov = coverage(layers, matching, fg, keras_weighted)
        onset = find_onset(layers, cfg.onset_drop_db, cfg.onset_below_db)
        run = RunInfo(
            float_model=str(model_path),
            float_kind=source.kind,
            quantized_model=quant_name,
            scheme=cfg.scheme,
            data=eval_ds.description,
            preprocess=cfg.preprocess,
            calibration=calib_text,
            num_eval_samples=len(eval_ds),
            batch_size=cfg.batch_size,
            seconds={k: round(v, 3) for k, v in self.prog.seconds.items()},
        )
        diagnosis = Diagnosis(run, model_metrics, layers, matching.unmatched, cov, onset, margins, task=task_result)
        if cfg.explain:
            from quantdoctor.diagnose.findings import find_all

            found = find_all(diagnosis, qg)
            verification = None
            if cfg.verify:
                found, verification = self._verify(found, diagnosis, float_runner, quant_runner, matching, eval_ds)
            repros = _repros(found, diagnosis, probes, quant_bytes, runtime.name) if runtime.one_op_repro else ()
            diagnosis = replace(diagnosis, findings=found, verification=verification, repros=repros)
            diagnosis = replace(diagnosis, run=replace(run, seconds={k: round(v, 3) for k, v in self.prog.seconds.items()}))
        if provenance is not None and provenance.mismatch:  # --force: the user insisted; the mismatch comes first
            from quantdoctor.diagnose.provenance import mismatch_finding

            diagnosis = replace(diagnosis, findings=(mismatch_finding(provenance), *diagnosis.findings))
        return diagnosis

    def _verify(self, found, diagnosis, float_runner, quant_runner, matching, eval_ds):
        """Counterfactuals at the output: locate the ops that carry the loss, check each finding, re-rank."""
        from quantdoctor.diagnose.counterfactuals import Counterfactuals
        from quantdoctor.diagnose.verify import locate_causes, proxy_order, verify_findings

        cfg = self.cfg
        n = min(cfg.verify_samples, len(eval_ds))
        with self.prog.step("verify", f"verifying causes on {n} samples"):
            task, options = self._task(float_runner, eval_ds, check=False)
            make = Counterfactuals
            if self.pool.name != "local":  # each evaluation's batches split among the workers (diagnose/parallel.py)
                from quantdoctor.diagnose.parallel import sharded_counterfactuals

                make = sharded_counterfactuals(self.pool)
            cf = make(float_runner, quant_runner, matching, eval_ds, n, batch_size=cfg.batch_size, top_k=cfg.top_k,
                      task=task, task_options=options, float_outputs=self._float_outputs)
            labels = {l.position: (l.label, l.op_type) for l in diagnosis.layers}
            seeds = [f.positions for f in found[:4] if f.mechanism not in ("accumulated_drift", "float_ops")]
            verification = locate_causes(cf, proxy_order(diagnosis, found), labels, seeds=seeds)
            found = verify_findings(found, diagnosis, cf, verification)
            verification = replace(verification, evaluations=cf.count, seconds=round(cf.seconds, 3),
                                   decided_early=cf.early)
        return found, verification

    def _probes(self, float_runner, quant_runner, matching):
        from quantdoctor.diagnose.layers import is_dynamic_range
        from quantdoctor.diagnose.probes import Probes

        with self.prog.step("plan_probes", "cutting out each op"):
            return Probes(float_runner, quant_runner, matching, is_dynamic_range(quant_runner.graph),
                          self.cfg.explain_samples)

    def _weights(self, float_bytes, quant_bytes):
        from quantdoctor.diagnose.weights import analyze_weights

        with self.prog.step("weights", "measuring the weights"):
            return {r.op_index: r for r in analyze_weights(float_bytes, quant_bytes)}

    def _load_keras(self, source):
        if source.kind != "keras":
            return None, None
        from quantdoctor.backends.keras.layers import layer_infos
        from quantdoctor.backends.keras.loader import load_keras_model

        with self.prog.step("load", f"loading {source.path.name}"):
            model = load_keras_model(source.path)
        return model, layer_infos(model)

    def _check_scheme(self, runtime: str) -> None:
        """The scheme must belong to the model's runtime (checked before any heavy work)."""
        from quantdoctor.quantize.schemes import check_scheme_runtime

        if self.cfg.scheme is not None:
            check_scheme_runtime(self.cfg.scheme, runtime)

    def _float_model(self, source, keras_model, runtime, data) -> bytes:
        from quantdoctor.quantize.converter import convert

        if source.kind == "torch":
            return self._export_torch(source, data)
        if source.kind in ("tflite", "onnx"):
            data = runtime.read(source.path)
            _check_float(runtime.runner(data, 1).graph, source.path)
            return data
        with self.prog.step("convert_float", "converting to float TFLite"):
            return convert(keras_model if keras_model is not None else source, None)

    def _dataset(self, data, input_shape):
        from quantdoctor.data import Dataset, load_dataset
        from quantdoctor.data.multi import MultiDataset

        if isinstance(data, (Dataset, MultiDataset)):
            return data
        return load_dataset(data, input_shape, preprocess=self.cfg.preprocess, resize=self.cfg.resize)

    def _split(self, dataset):
        """(evaluation set, calibration set or None, sentence saying which samples calibrated)."""
        from quantdoctor.data import split_calibration
        from quantdoctor.quantize.schemes import needs_calibration

        cfg = self.cfg
        needs_calib = cfg.quantized is None and needs_calibration(cfg.scheme)
        eval_ds, calib_ds, text = dataset, None, "none needed (weights-only / dynamic-range scheme)"
        if cfg.quantized is not None:
            text = "unknown (quantized model given)"
        elif needs_calib and cfg.calib is not None:
            calib_ds = self._dataset(cfg.calib, dataset.input_shape)
            text = f"{len(calib_ds)} samples of {calib_ds.description} (--calib)"
        elif needs_calib:
            if len(dataset) < 2:
                raise DataError("calibration needs a part of --data but it has 1 sample; give --calib DATA or more data")
            calib_idx, eval_idx = split_calibration(len(dataset), cfg.calib_count)
            calib_ds, eval_ds = dataset.subset(calib_idx), dataset.subset(eval_idx)
            text = (
                f"{len(calib_idx)} samples of --data (seeded random choice, excluded from evaluation; "
                f"indices {_short_list(calib_idx)})"
            )
        if cfg.max_samples is not None and len(eval_ds) > cfg.max_samples:
            eval_ds = eval_ds.subset(np.arange(cfg.max_samples))
        return eval_ds, calib_ds, text

    def _export_torch(self, source, data) -> bytes:
        """The PyTorch model exported to float ONNX, its node outputs labelled with module paths."""
        from quantdoctor.backends.torch.export import export_onnx, load_pt2

        shape = _data_input_shape(data)
        with self.prog.step("convert_float", "exporting the PyTorch model to ONNX"):
            module = self.module if self.module is not None else load_pt2(source.path)
            model, self.module_labels = export_onnx(module, np.zeros((1, *shape), np.float32))
        return model

    def _quantize(self, source, keras_model, calib_ds, float_model: bytes) -> bytes:
        from quantdoctor.quantize.converter import calibration_from, convert

        with self.prog.step("convert_quant", f"quantizing ({self.cfg.scheme})"):
            if source.kind in ("onnx", "torch"):
                from quantdoctor.quantize.onnxrt import quantize_onnx

                return quantize_onnx(float_model, self.cfg.scheme, calibration_from(calib_ds) if calib_ds else None)
            target = source if source.kind != "keras" else keras_model
            return convert(target, self.cfg.scheme, calibration_from(calib_ds))

    def _calibrated_pair(self, keras_model, calib_ds) -> tuple[bytes, bytes]:
        from quantdoctor.quantize.converter import calibration_from, convert_calibrated_pair

        with self.prog.step("convert_quant", f"calibrating and quantizing ({self.cfg.scheme})"):
            return convert_calibrated_pair(keras_model, self.cfg.scheme, calibration_from(calib_ds))

    def _check_compatible(self, float_runner, quant_runner) -> None:
        from quantdoctor.errors import ModelLoadError

        fi, qi = [i.shape for i in float_runner.inputs()], [i.shape for i in quant_runner.inputs()]
        fo, qo = [o.shape for o in float_runner.outputs()], [o.shape for o in quant_runner.outputs()]
        if fi != qi or fo != qo:
            raise ModelLoadError(
                f"the quantized model (inputs {_shapes(qi)}, outputs {_shapes(qo)}) does not fit the float model "
                f"(inputs {_shapes(fi)}, outputs {_shapes(fo)}); give the quantized version of this float model"
            )

    def _task(self, float_runner, eval_ds, check: bool = True):
        """The task judging the outputs (`--task`, or chosen from the outputs) and its options; labels checked."""
        from quantdoctor.tasks import resolve_task
        from quantdoctor.tasks.base import TaskOptions

        options = self.cfg.task_options or TaskOptions(top_k=self.cfg.top_k)
        outputs = float_runner.outputs()
        task = resolve_task(self.cfg.task, outputs, options)
        if check and task.name == "classify":
            from quantdoctor.diagnose.outputs import class_output

            eval_ds.check_labels(int(np.prod(outputs[class_output(outputs, options)].shape)))
        return task, options

    def _labels(self, fg, keras_model, layer_infos, source):
        if source.kind == "frozen":
            from quantdoctor.backends.tf1 import node_labels

            return node_labels(fg, source.path)
        if self.module_labels:
            from quantdoctor.matching.keras_names import LayerLabel

            names = {t: fg.tensors[t].name for t in fg.activations()}
            return {t: LayerLabel((self.module_labels[n],), "module") for t, n in names.items() if n in self.module_labels}
        if layer_infos is None:
            return {}
        from quantdoctor.matching.keras_names import KerasLabeler

        output_layers = tuple(t._keras_history.operation.name for t in keras_model.outputs)
        labeler = KerasLabeler(layer_infos, output_layers)
        tensors = {t: (fg.tensors[t].name, fg.tensors[t].shape[1:]) for t in fg.activations()}
        return labeler.label_all(tensors, fg.outputs)

    def _passes(self, eval_ds, float_runner, quant_runner, matching, task, options, probes=None):
        from quantdoctor.diagnose.outputs import with_example_input
        from quantdoctor.diagnose.passes import Passes

        cfg = self.cfg
        # The verification samples' float outputs are kept for the counterfactuals, in this process only: a worker's
        # one-thread kernels round differently from the driver's, whose float model the counterfactuals run.
        local = self.pool.name == "local"
        keep = min(cfg.verify_samples, len(eval_ds)) if cfg.explain and cfg.verify and local else 0
        if not local:  # data-parallel: shards of eval_ds on the workers (diagnose/parallel.py)
            from quantdoctor.diagnose.parallel import sharded_passes

            what = f"float + quantized passes on {self.pool.workers} workers"
            with self.prog.step("passes", what, total=len(eval_ds)) as step:
                passes = sharded_passes(self.pool, float_runner, quant_runner, eval_ds, matching, task, options,
                                        self.cfg.top_k, self.cfg.batch_size, probes)
                step.advance(len(eval_ds))
        else:
            passes = Passes(float_runner.graph, quant_runner.graph, float_runner.outputs(), matching, task, options,
                            self.cfg.top_k, keep)
            with self.prog.step("passes", "float + quantized passes", total=len(eval_ds)) as step:
                passes.feed(float_runner, quant_runner, eval_ds, self.cfg.batch_size, probes, advance=step.advance)
        self._float_outputs = passes.kept_outputs()
        for runner in (float_runner, quant_runner):  # what comes next builds its own cuts: free every batch tensor
            runner.release()
        errors, result, margins = passes.results()
        return errors, with_example_input(result, eval_ds), margins, passes.channel_results()


def _repros(findings, diagnosis, probes, quant_bytes, runtime: str = "tflite") -> tuple:
    """A one-op reproduction of the worst op of each kernel-defect finding."""
    from quantdoctor.diagnose.results import Repro

    out = []
    for f in findings:
        if f.mechanism != "kernel_defect":
            continue
        layer = next((l for l in diagnosis.layers if l.label == f.evidence.get("worst_layer")), None)
        inputs = probes.inputs_of(layer.position) if layer is not None and probes is not None else ()
        if inputs:
            out.append(Repro(layer.position, layer.op_type, quant_bytes, inputs, runtime))
    return tuple(out)


def _shapes(shapes) -> str:
    return ", ".join("(" + ", ".join(map(str, s)) + ")" for s in shapes)


def _data_input_shape(data) -> tuple[int, ...]:
    """Per-sample input shape read from the data (PyTorch modules do not declare theirs)."""
    from quantdoctor.data import Dataset
    from quantdoctor.errors import DataError

    if isinstance(data, Dataset):
        return tuple(int(s) for s in data.input_shape)
    path = Path(data)
    try:
        if path.suffix == ".npy":
            return tuple(int(s) for s in np.load(path, mmap_mode="r").shape[1:])
        if path.suffix == ".npz":
            with np.load(path) as z:
                return tuple(int(s) for s in z["x"].shape[1:])
    except (OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read the input shape from {path}: {exc}; give an .npz with x or an .npy") from None
    raise DataError(f"a PyTorch model takes its input shape from the data: give --data as .npz or .npy, not {path.name}")


def _check_float(g, path: Path) -> None:
    from quantdoctor.errors import ModelLoadError

    integer = [t for t in g.tensors.values() if t.dtype in ("int8", "uint8", "int16") and t.is_constant]
    if integer:
        raise ModelLoadError(
            f"{path} already holds quantized weights ({integer[0].name}); give the float model and pass this file as --quantized"
        )


def _short_list(idx) -> str:
    idx = [int(i) for i in idx]
    return ", ".join(map(str, idx)) if len(idx) <= 12 else ", ".join(map(str, idx[:10])) + f", ... ({len(idx)} in all)"
