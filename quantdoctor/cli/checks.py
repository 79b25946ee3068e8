"""Checks the command line runs before any heavy work: option values, and output paths that can be written and are
not the user's inputs.

A bad command line is a user error like any other: exit 1 and one line (argparse's own exit 2 and usage block would
read as an internal error, which 2 means here).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from quantdoctor.errors import UsageError, UserInputError

MAX_BATCH = 1024  # samples per interpreter call: more only costs memory (every tensor of the batch is kept)


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with errors raised as `UsageError` ("what is wrong; see `quantdoctor diagnose --help`")."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message}; see `{self.prog} --help`")


def whole(low: int = 1, high: int | None = None) -> Callable[[str], int]:
    """An argparse `type`: a whole number in [low, high]."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < low or (high is not None and value > high):
            bounds = f"from {low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"must be {bounds}, got {value}")
        return value

    return parse


def finite(low: float, high: float) -> Callable[[str], float]:
    """An argparse `type`: a finite number in [low, high] (argparse's float() takes 'nan' and 'inf')."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a number from {low:g} to {high:g}, got {text}")
        return value

    return parse


def input_paths(args: argparse.Namespace) -> list:
    """Every file or folder a command reads (its model, data, calibration and quantized arguments), so that no output
    lands on one of them."""
    names = ("model", "model_a", "model_b", "data", "data_b", "calib", "quantized", "quantized_a", "quantized_b", "recipe")
    paths = [getattr(args, n, None) for n in names]
    return [getattr(p, "path", p) for p in paths if p is not None]  # a ModelSource stands for its path


def check_output_dir(path: str | os.PathLike[str], option: str, inputs: Iterable, writes: Iterable[str]) -> Path:
    """Refuse an output folder that is a file, cannot be written, or would overwrite an input with one of `writes`.

    The folder is created if missing and removed again: the check leaves nothing behind.

    Raises:
        UserInputError: what is wrong with the folder, naming the option.
    """
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{option} {out} is a file; give a folder (it is created if missing)")
    _refuse_inputs([out / name for name in writes], option, inputs)
    _probe_writable(out, option)
    return out


def check_output_file(path: str | os.PathLike[str], option: str, inputs: Iterable, suffix: str) -> Path:
    """Refuse an output file that is a folder, is one of the inputs, has another suffix than the model it will hold
    (so a .keras or .npz the user keeps is never overwritten), or whose folder cannot be written.

    Raises:
        UserInputError: what is wrong with the path, naming the option.
    """
    out = Path(path).expanduser()
    if out.is_dir():
        raise UserInputError(f"{option} {out} is a folder; give a file name ending in {suffix}")
    _refuse_inputs([out], option, inputs)
    if out.suffix.lower() != suffix:
        raise UserInputError(f"{option} {out}: the repaired model is a {suffix} file; give a name ending in {suffix}")
    _probe_writable(out.parent, option)
    return out


def _refuse_inputs(outputs: list[Path], option: str, inputs: Iterable) -> None:
    given = [Path(p).expanduser() for p in inputs if isinstance(p, (str, os.PathLike))]
    for out in outputs:
        for source in given:
            if _same_file(out, source):
                raise UserInputError(
                    f"{option} would overwrite the input {source}; write the output somewhere else"
                )


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


def _probe_writable(folder: Path, option: str) -> None:
    """Create `folder` (and missing parents), write and delete a probe file in it, then remove what was created."""
    created: list[Path] = []
    try:
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        for parent in reversed(missing):
            if parent.parent.exists() and not parent.parent.is_dir():
                raise UserInputError(f"{option} {folder}: {parent.parent} is a file, not a folder; give another path")
            parent.mkdir()
            created.append(parent)
        fd, probe = tempfile.mkstemp(prefix=".quantdoctor-probe-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserInputError(f"{option} {folder} cannot be written ({reason}); give a folder you can write to") from None
    finally:
        for made in reversed(created):
            try:
                made.rmdir()
            except OSError:
                pass
