"""The executor protocol, the per-worker method it can map, and the registry of executors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, TypeVar

from quantdoctor.errors import UserInputError
from quantdoctor.registry import Registry

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True, eq=False)  # compared by identity: an executor keeps one set of workers per WorkerMethod
class WorkerMethod:
    """`method` of an object each worker makes once with `factory(*args)`, called once per item.

    The arguments are sent to the workers once (Ray: one `ray.put` each, read by every actor from the object store), so
    what is costly to make — a builder with its calibrated float model, the float model's outputs, the preprocessed
    batches — is made once in the driver and never again per item.
    """

    factory: Callable[..., Any]
    args: tuple[Any, ...]
    method: str


@dataclass
class Profile:
    """Where an executor's time went, in seconds (wall time in the driver)."""

    startup: float = 0.0  # starting workers: the cluster, the actors, each factory call
    transfer: float = 0.0  # sending the factory arguments (Ray: ray.put)
    mapping: float = 0.0  # map() calls: the items' work and its results' way back
    items: int = 0
    extra: dict[str, float] = field(default_factory=dict)  # map time per worker method ("run", ...), "merge", ...

    def line(self) -> str:
        return (f"start-up {self.startup:.2f} s, transfer {self.transfer:.2f} s, "
                f"map {self.mapping:.2f} s over {self.items} item(s)")


class Executor(Protocol):
    """Runs independent items; `map` returns one result per item, in the items' order.

    An exception raised by an item propagates from `map` (the first in item order); work whose failures are expected
    returns them as values instead (as `repair.search.CandidateWorker` does).
    """

    name: str
    profile: Profile

    @property
    def workers(self) -> int: ...

    def map(self, fn: Callable[[T], R] | WorkerMethod, items: Sequence[T]) -> list[R]: ...

    def close(self) -> None:
        """Release the workers; shut down only what this executor started."""


EXECUTORS: Registry[Callable[..., Executor]] = Registry("executor")

_WORKER_THREADS: int | None = None  # set in a worker process by its executor


def worker_threads() -> int | None:
    """Threads a runner made in this process should use: 1 in an executor's worker process (the workers share the
    cores; LiteRT and ONNX Runtime would each start one thread per core), None (every core) elsewhere."""
    return _WORKER_THREADS


def mark_worker(threads: int = 1) -> None:
    """Declare this process an executor's worker whose runners use `threads` threads (see `worker_threads`)."""
    global _WORKER_THREADS
    _WORKER_THREADS = threads


def make_executor(name: str = "local", workers: int | None = None, address: str | None = None) -> Executor:
    """The executor `name` with checked options (before any heavy work: nothing starts until the first `map`).

    Args:
        name: a name in `EXECUTORS` ("local" or "ray").
        workers: worker count (≥ 1); None = 1 for "local", one per CPU for "ray".
        address: a Ray cluster to join ("auto" or "ray://host:port"); only with "ray".

    Raises:
        UnknownNameError: an unknown executor.
        UserInputError: workers < 1, an address for an executor other than ray, or Ray not installed.
    """
    check_options(name, workers, address)
    return EXECUTORS.get(name)(workers=workers, address=address)


def check_options(name: str, workers: int | None = None, address: str | None = None) -> None:
    """Check executor options without starting (or importing) anything; the errors are those of `make_executor`.

    Raises:
        UnknownNameError: an unknown executor.
        UserInputError: workers < 1, several workers or an address for the local executor.
    """
    EXECUTORS.get(name)
    if workers is not None and workers < 1:
        raise UserInputError(f"--workers must be 1 or more, got {workers}")
    if address is not None and name != "ray":
        raise UserInputError(f"--ray-address needs --executor ray (the executor is '{name}')")
    if name == "local" and workers is not None and workers != 1:
        raise UserInputError(f"--workers {workers} needs --executor ray (the local executor runs one item at a time)")
