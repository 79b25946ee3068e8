"""The in-process executor: items run one after the other in this process (the default; needs no Ray)."""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

from quantdoctor.errors import UserInputError
from quantdoctor.executors.base import EXECUTORS, Profile, WorkerMethod


@EXECUTORS.register("local")
class LocalExecutor:
    """Runs `map` in this process; a `WorkerMethod`'s object is made once, from the caller's own arguments (no copy).

    Raises:
        UserInputError: more than one worker (in-process work is sequential; use --executor ray).
    """

    name = "local"

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        if workers is not None and workers != 1:
            raise UserInputError(f"--workers {workers} needs --executor ray (the local executor runs one item at a time)")
        if address is not None:
            raise UserInputError("--ray-address needs --executor ray")
        self.profile = Profile()
        self._objects: dict[int, tuple[WorkerMethod, Any]] = {}  # the WorkerMethod is kept so its id stays unique

    @property
    def workers(self) -> int:
        return 1

    def map(self, fn: Callable[[Any], Any] | WorkerMethod, items: Sequence[Any]) -> list[Any]:
        if isinstance(fn, WorkerMethod):
            if id(fn) not in self._objects:
                start = time.perf_counter()
                self._objects[id(fn)] = (fn, fn.factory(*fn.args))
                self.profile.startup += time.perf_counter() - start
            key, fn = fn.method, getattr(self._objects[id(fn)][1], fn.method)
        else:
            key = "function"
        start = time.perf_counter()
        out = [fn(item) for item in items]
        self.profile.mapping += time.perf_counter() - start
        self.profile.extra[key] = self.profile.extra.get(key, 0.0) + time.perf_counter() - start
        self.profile.items += len(items)
        return out

    def close(self) -> None:
        self._objects.clear()

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
