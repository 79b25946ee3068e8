"""Write a `Diagnosis` to a folder as `report.json` and `report.html`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from quantdoctor.diagnose.results import Diagnosis
from quantdoctor.errors import UserInputError

JSON_NAME = "report.json"
HTML_NAME = "report.html"


def write_outputs(diagnosis: Diagnosis, out_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Write the JSON and HTML reports into `out_dir`, creating it if needed.

    Both documents are rendered before anything is written, and each file is replaced atomically, so a failure never
    leaves a half-written report next to an older complete one.

    Each kernel-defect finding also gets a one-op reproduction in `repro/op_<index>_<type>/` (the op as a .tflite, one
    sample's input as .npy, a README.txt) to attach to an upstream bug report.

    Returns:
        {"json": path of report.json, "html": path of report.html, "repro:<op>": folder of each reproduction}.

    Raises:
        UserInputError: `out_dir` exists and is not a folder.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"output folder {out} is an existing file; pass a folder path (it is created if missing)")
    documents = {"json": (JSON_NAME, diagnosis.to_json() + "\n"), "html": (HTML_NAME, diagnosis.to_html())}
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for key, (name, text) in documents.items():
        written[key] = out / name
        _write_atomic(written[key], text)
    for repro in diagnosis.repros:
        from quantdoctor.backends.tflite.extract import write_repro

        folder = out / "repro" / f"op_{repro.op_index}_{repro.op_type.lower()}"
        write_repro(repro.model, repro.op_index, list(repro.inputs), folder)
        written[f"repro:{repro.op_index}"] = folder
    return written


def _write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename over `path` (a rename within a folder is atomic)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes the file private (0600); a report is meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
