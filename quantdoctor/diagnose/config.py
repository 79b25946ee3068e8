"""Options of a diagnose run, as one frozen dataclass."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from quantdoctor.errors import UserInputError


@dataclass(frozen=True)
class DiagnoseConfig:
    """How to build the quantized model and read the data.

    Attributes:
        scheme: quantization scheme to convert with (see `quantdoctor schemes`); or None with `quantized`.
        quantized: path of a quantized .tflite made elsewhere.
        preprocess: preprocessing preset applied to the data.
        resize: how images are brought to the model's input size: "crop" or "stretch".
        calib: calibration data (a path, or a `quantdoctor.data.Dataset` from the API); by default a part of the
            data, disjoint from the evaluated samples.
        calib_count: how many samples of the data calibrate when `calib` is not given.
        batch_size: samples per interpreter call.
        top_k: k of the top-k metrics.
        max_samples: evaluate at most this many samples (None: all).
        onset_drop_db: an op whose output SQNR is this much below its input's may be the error onset...
        onset_below_db: ...if its output SQNR is also below this.
        explain: measure why (activation statistics, grid coverage, isolated/expected error per op, weights,
            margins) and rank findings; False gives the where-only diagnosis, faster.
        explain_samples: evaluated samples each op is run on alone for its isolated and expected error.
        verify: prove the findings with counterfactuals at the output (ops made exact by splicing in the float
            model's values) and locate the ops that carry the loss by group testing; needs `explain`.
        verify_samples: evaluated samples the counterfactuals run on (the first ones).
        force: diagnose a `quantized` model even when its weights say it was made from another float model; the
            mismatch is then the first finding, critical.
        cache: read and write converted models in the user's cache (`quantdoctor.cache`); False never touches it.
        task: how the outputs are judged (`quantdoctor.tasks.TASKS`: classify, regress, segment, detect, custom), or
            "auto" to decide from the outputs.
        task_options: a `quantdoctor.tasks.base.TaskOptions` (class output, detection layout and slices, thresholds,
            a user metric); None = the defaults, with `top_k`.
        executor: where the passes and the counterfactuals run (`quantdoctor.executors.EXECUTORS`): "local" (this
            process) or "ray" (data-parallel on Ray actors, `diagnose/parallel.py`; same results).
        workers: Ray actors (None: one per CPU of the cluster); only with executor "ray".
        ray_address: the Ray cluster to join ("auto" or "ray://host:port"; None: start one); only with "ray".
    """

    scheme: str | None = None
    quantized: str | None = None
    preprocess: str = "none"
    resize: str = "crop"
    calib: Any = None
    calib_count: int = 100
    batch_size: int = 16
    top_k: int = 3
    max_samples: int | None = None
    onset_drop_db: float = 10.0
    onset_below_db: float = 20.0
    explain: bool = True
    explain_samples: int = 16
    verify: bool = True
    verify_samples: int = 256
    force: bool = False
    cache: bool = True
    task: str = "auto"
    task_options: Any = None
    executor: str = "local"
    workers: int | None = None
    ray_address: str | None = None
    version: int = 1

    def __post_init__(self) -> None:
        if (self.scheme is None) == (self.quantized is None):
            raise UserInputError("give exactly one of --scheme NAME (convert for me) or --quantized FILE.tflite")
        if self.batch_size < 1:
            raise UserInputError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.top_k < 1:
            raise UserInputError(f"--top-k must be at least 1, got {self.top_k}")
        if self.calib_count < 1:
            raise UserInputError(f"--calib-count must be at least 1, got {self.calib_count}")
        if self.max_samples is not None and self.max_samples < 1:
            raise UserInputError(f"--max-samples must be at least 1, got {self.max_samples}")
        if self.explain_samples < 1:
            raise UserInputError(f"--explain-samples must be at least 1, got {self.explain_samples}")
        if self.verify_samples < 1:
            raise UserInputError(f"--verify-samples must be at least 1, got {self.verify_samples}")
        from quantdoctor.tasks import TASKS

        if self.task != "auto" and self.task not in TASKS:
            TASKS.get(self.task)  # the registry's message lists the tasks
        if self.resize not in ("crop", "stretch"):
            raise UserInputError(f"--resize must be 'crop' or 'stretch', got '{self.resize}'")
        from quantdoctor.executors.base import check_options

        check_options(self.executor, self.workers, self.ray_address)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DiagnoseConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserInputError(f"unknown diagnose option(s): {', '.join(sorted(unknown))}")
        return cls(**d)
