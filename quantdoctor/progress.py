"""Progress display for long steps (conversions, passes over the data); silent unless enabled."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator


class Progress:
    """Rich progress bars on stderr when enabled and stderr is a terminal; records how long each step took either way.

    A log file or a pipe gets no bars (they would land there as stray lines before an error message).
    """

    def __init__(self, enabled: bool = False) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.seconds: dict[str, float] = {}
        self._progress = None

    def __enter__(self) -> "Progress":
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TextColumn, TimeElapsedColumn

            self._progress = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            if exc[0] is not None:  # a failed run: take the bars off the screen so its error line stands alone
                self._progress.live.transient = True
            self._progress.__exit__(*exc)
            self._progress = None

    @contextlib.contextmanager
    def step(self, name: str, description: str, total: int | None = None) -> Iterator["_Step"]:
        """Time a step under `name`; show `description` with a bar of `total` units (a spinner if None)."""
        task = None
        if self._progress is not None:
            task = self._progress.add_task(description, total=total)
        start = time.perf_counter()
        s = _Step(self._progress, task)
        try:
            yield s
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
            if self._progress is not None and task is not None:
                self._progress.update(task, completed=total if total is not None else 1, total=total or 1)


class _Step:
    def __init__(self, progress, task) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)
