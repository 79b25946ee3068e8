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
    float_model: str | Path,
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
        float_model: .keras / .h5 file, SavedModel directory or float .tflite.
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
    with Progress(progress) as prog:
        return _Run(cfg, prog).diagnose(Path(float_model), data)


class _Run:
    """One diagnose run; the methods are its steps in order."""

    def __init__(self, cfg: DiagnoseConfig, prog: Progress) -> None:
        self.cfg, self.prog = cfg, prog

    def diagnose(self, model_path: Path, data) -> Diagnosis:
        from quantdoctor.backends.keras.loader import detect_source
        from quantdoctor.backends.tflite.runner import TfliteRunner, read_tflite
        from quantdoctor.matching.match import match_graphs
        from quantdoctor.quantize.converter import supports_calibrated_pair

        cfg = self.cfg
        source = detect_source(model_path)
        keras_model, layer_infos = self._load_keras(source)
        dataset = None
        if keras_model is not None:  # read the data before converting: bad data fails in seconds, not minutes
            dataset = self._dataset(data, _keras_input_shape(keras_model))
        quant_name = str(cfg.quantized) if cfg.quantized is not None else f"converted with scheme {cfg.scheme}"
        if keras_model is not None and cfg.quantized is None and supports_calibrated_pair(cfg.scheme):
            eval_ds, calib_ds, calib_text = self._split(dataset)
            float_bytes, quant_bytes = self._calibrated_pair(keras_model, calib_ds)
            float_runner = TfliteRunner(float_bytes, cfg.batch_size)
        else:
            float_bytes = self._float_tflite(source, keras_model)
            float_runner = TfliteRunner(float_bytes, cfg.batch_size)
            if dataset is None:
                dataset = self._dataset(data, float_runner.inputs()[0].shape)
            eval_ds, calib_ds, calib_text = self._split(dataset)
            if cfg.quantized is not None:
                quant_bytes = read_tflite(cfg.quantized)
            else:
                quant_bytes = self._quantize(source, keras_model, calib_ds)
        quant_runner = TfliteRunner(quant_bytes, cfg.batch_size)
        self._check_compatible(float_runner, quant_runner)
        num_classes = int(float_runner.outputs()[0].shape[-1]) if float_runner.outputs()[0].shape else 1
        eval_ds.check_labels(num_classes)

        fg, qg = float_runner.graph, quant_runner.graph
        matching = match_graphs(fg, qg)
        labels = self._labels(fg, keras_model, layer_infos)
        probes = self._probes(float_bytes, quant_bytes, fg, qg, matching, quant_runner) if cfg.explain else None
        errors, model_metrics, margins = self._passes(eval_ds, float_runner, quant_runner, matching, num_classes, probes)
        weight_reports = self._weights(float_bytes, quant_bytes) if cfg.explain else {}

        evidence = probes.results() if probes is not None else None
        layers = build_layers(fg, qg, matching, errors, labels, evidence, weight_reports)
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
        diagnosis = Diagnosis(run, model_metrics, layers, matching.unmatched, cov, onset, margins)
        if cfg.explain:
            from quantdoctor.diagnose.findings import find_all

            found = find_all(diagnosis, qg)
            verification = None
            if cfg.verify:
                found, verification = self._verify(found, diagnosis, float_runner, quant_runner, matching, eval_ds)
            diagnosis = replace(diagnosis, findings=found, verification=verification,
                                repros=_repros(found, diagnosis, probes, quant_bytes))
            diagnosis = replace(diagnosis, run=replace(run, seconds={k: round(v, 3) for k, v in self.prog.seconds.items()}))
        return diagnosis

    def _verify(self, found, diagnosis, float_runner, quant_runner, matching, eval_ds):
        """Counterfactuals at the output: locate the ops that carry the loss, check each finding, re-rank."""
        from quantdoctor.diagnose.verify import Counterfactuals, locate_causes, proxy_order, verify_findings

        cfg = self.cfg
        n = min(cfg.verify_samples, len(eval_ds))
        with self.prog.step("verify", f"verifying causes on {n} samples"):
            cf = Counterfactuals(float_runner, quant_runner, matching, eval_ds, n,
                                 batch_size=cfg.batch_size, top_k=cfg.top_k)
            labels = {l.position: (l.label, l.op_type) for l in diagnosis.layers}
            seeds = [f.positions for f in found[:4] if f.mechanism not in ("accumulated_drift", "float_ops")]
            verification = locate_causes(cf, proxy_order(diagnosis, found), labels, seeds=seeds)
            found = verify_findings(found, diagnosis, cf, verification)
            verification = replace(verification, evaluations=cf.count, seconds=round(cf.seconds, 3))
        return found, verification

    def _probes(self, float_bytes, quant_bytes, fg, qg, matching, quant_runner):
        from quantdoctor.diagnose.layers import is_dynamic_range
        from quantdoctor.diagnose.probes import Probes

        with self.prog.step("plan_probes", "cutting out each op"):
            return Probes(
                float_bytes, quant_bytes, fg, qg, matching, is_dynamic_range(qg), self.cfg.explain_samples,
                quant_runner._interp,
            )

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

    def _float_tflite(self, source, keras_model) -> bytes:
        from quantdoctor.backends.tflite.runner import read_tflite
        from quantdoctor.quantize.converter import convert

        if source.kind == "tflite":
            data = read_tflite(source.path)
            _check_float(data, source.path)
            return data
        with self.prog.step("convert_float", "converting to float TFLite"):
            return convert(keras_model if keras_model is not None else source, None)

    def _dataset(self, data, input_shape):
        from quantdoctor.data import Dataset, load_dataset

        if isinstance(data, Dataset):
            return data
        return load_dataset(data, input_shape, preprocess=self.cfg.preprocess, resize=self.cfg.resize)

    def _split(self, dataset):
        """(evaluation set, calibration set or None, sentence saying which samples calibrated)."""
        from quantdoctor.data import split_calibration
        from quantdoctor.quantize.schemes import SCHEMES

        cfg = self.cfg
        needs_calib = cfg.quantized is None and SCHEMES.get(cfg.scheme).needs_calibration
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

    def _quantize(self, source, keras_model, calib_ds) -> bytes:
        from quantdoctor.quantize.converter import calibration_from, convert

        with self.prog.step("convert_quant", f"quantizing ({self.cfg.scheme})"):
            target = source if source.kind != "keras" else keras_model
            return convert(target, self.cfg.scheme, calibration_from(calib_ds))

    def _calibrated_pair(self, keras_model, calib_ds) -> tuple[bytes, bytes]:
        from quantdoctor.quantize.converter import calibration_from, convert_calibrated_pair

        with self.prog.step("convert_quant", f"calibrating and quantizing ({self.cfg.scheme})"):
            return convert_calibrated_pair(keras_model, self.cfg.scheme, calibration_from(calib_ds))

    def _check_compatible(self, float_runner, quant_runner) -> None:
        from quantdoctor.errors import ModelLoadError

        fi, qi = float_runner.inputs()[0], quant_runner.inputs()[0]
        fo, qo = float_runner.outputs()[0], quant_runner.outputs()[0]
        if fi.shape != qi.shape or fo.shape != qo.shape:
            raise ModelLoadError(
                f"the quantized model (input {qi.shape}, output {qo.shape}) does not fit the float model "
                f"(input {fi.shape}, output {fo.shape}); give the quantized version of this float model"
            )

    def _labels(self, fg, keras_model, layer_infos):
        if layer_infos is None:
            return {}
        from quantdoctor.matching.keras_names import KerasLabeler

        output_layers = tuple(t._keras_history.operation.name for t in keras_model.outputs)
        labeler = KerasLabeler(layer_infos, output_layers)
        tensors = {t: (fg.tensors[t].name, fg.tensors[t].shape[1:]) for t in fg.activations()}
        return labeler.label_all(tensors, fg.outputs)

    def _passes(self, eval_ds, float_runner, quant_runner, matching, num_classes, probes=None):
        from quantdoctor.stats.accumulators import ErrorAccumulator
        from quantdoctor.stats.classification import ClassificationAccumulator
        from quantdoctor.stats.margins import MarginAccumulator

        f_ids = [p.float_index for p in matching.pairs]
        if probes is not None:
            f_ids += sorted(probes.float_ids - set(f_ids))
        matched = [p.float_index for p in matching.pairs]
        q_ids = [p.quant_index for p in matching.pairs]
        f_out, q_out = float_runner.graph.outputs[0], quant_runner.graph.outputs[0]
        accs = {f: ErrorAccumulator() for f in matched}
        cls = ClassificationAccumulator(num_classes, k=self.cfg.top_k)
        margins = MarginAccumulator(k=self.cfg.top_k) if num_classes > 1 else None
        labels = eval_ds.labels
        with self.prog.step("passes", "float + quantized passes", total=len(eval_ds)) as step:
            for x, idx in eval_ds.batches(self.cfg.batch_size):
                # Views into the interpreters' buffers (no copies); dropped before the next batch runs.
                fv = float_runner.capture(x, f_ids + [f_out], copy=False)
                qv = quant_runner.capture(x, q_ids + [q_out], copy=False)
                for f, q in zip(matched, q_ids):
                    accs[f].update(fv[f], qv[q])
                if probes is not None:
                    probes.update(fv, qv)
                y = None if labels is None else labels[idx]
                f_logits, q_logits = fv[f_out].reshape(len(x), -1), qv[q_out].reshape(len(x), -1)
                cls.update(f_logits, q_logits, y)
                if margins is not None:
                    margins.update(f_logits, q_logits)
                del fv, qv, f_logits, q_logits
                step.advance(len(x))
        metrics = cls.result()
        if metrics.num_samples == 0:
            raise DataError("no samples left to evaluate; give more data or a smaller --calib-count")
        return {f: a.result() for f, a in accs.items()}, metrics, None if margins is None else margins.result()


def _repros(findings, diagnosis, probes, quant_bytes) -> tuple:
    """A one-op reproduction of the worst op of each kernel-defect finding."""
    from quantdoctor.diagnose.results import Repro

    out = []
    for f in findings:
        if f.mechanism != "kernel_defect":
            continue
        layer = next((l for l in diagnosis.layers if l.label == f.evidence.get("worst_layer")), None)
        inputs = probes.inputs_of(layer.position) if layer is not None and probes is not None else ()
        if inputs:
            out.append(Repro(layer.position, layer.op_type, quant_bytes, inputs))
    return tuple(out)


def _keras_input_shape(model) -> tuple[int, ...]:
    from quantdoctor.errors import ModelLoadError

    shape = model.input_shape
    if isinstance(shape, list):
        if len(shape) != 1:
            raise ModelLoadError(f"the model has {len(shape)} inputs; quantdoctor supports single-input models for now")
        shape = shape[0]
    return tuple(int(s) for s in shape[1:])


def _check_float(data: bytes, path: Path) -> None:
    from quantdoctor.backends.tflite.runner import TfliteRunner
    from quantdoctor.errors import ModelLoadError

    g = TfliteRunner(data, 1).graph
    integer = [t for t in g.tensors.values() if t.dtype in ("int8", "uint8", "int16") and t.is_constant]
    if integer:
        raise ModelLoadError(
            f"{path} already holds quantized weights ({integer[0].name}); give the float model and pass this file as --quantized"
        )


def _short_list(idx) -> str:
    idx = [int(i) for i in idx]
    return ", ".join(map(str, idx)) if len(idx) <= 12 else ", ".join(map(str, idx[:10])) + f", ... ({len(idx)} in all)"
