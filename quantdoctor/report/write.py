"""Write a `Diagnosis` to a folder as `report.json` and `report.html`."""

from __future__ import annotations

import os
from pathlib import Path

from quantdoctor.diagnose.results import Diagnosis
from quantdoctor.errors import UserInputError
from quantdoctor.files import atomic_write_text

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
        atomic_write_text(written[key], text)
    for repro in diagnosis.repros:
        folder = out / "repro" / f"op_{repro.op_index}_{repro.op_type.lower()}"
        if repro.runtime == "onnx":  # the op with its QDQ neighbourhood: ORT's fused kernel vs onnx.reference
            from quantdoctor.backends.onnx.repro import write_repro as write_onnx_repro

            write_onnx_repro(repro.model, repro.op_index, list(repro.inputs), folder)
        else:
            from quantdoctor.backends.tflite.extract import write_repro

            write_repro(repro.model, repro.op_index, list(repro.inputs), folder)
        written[f"repro:{repro.op_index}"] = folder
    return written
