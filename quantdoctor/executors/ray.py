"""The Ray executor: items run on Ray actors, one CPU each; results come back in the items' order.

One set of `workers` actors (one CPU each) serves every `map` of an executor, plain functions and `WorkerMethod`s alike:
a second set would wait forever for CPUs the first holds. A `WorkerMethod`'s arguments are put into Ray's object store
once and every actor makes its object from them once, so a worker pays the set-up (reading the builder, the float
outputs, the batches) once and then only the items' own work. Items are handed to whichever actor is free
(`ray.util.ActorPool`), so slow and fast items balance out.

Ray is imported when this executor is made, never by `import quantdoctor`.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Sequence

from quantdoctor.errors import UserInputError
from quantdoctor.executors.base import EXECUTORS, Profile, WorkerMethod

INSTALL_HINT = "pip install 'quantdoctor[ray]'"


def import_ray() -> Any:
    """The `ray` module.

    Raises:
        UserInputError: Ray is not installed (one line that says how to install it).
    """
    try:
        import ray
    except ImportError:
        raise UserInputError(f"--executor ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


class _Worker:
    """The actor: the objects of the `WorkerMethod`s it serves (by key), made once each, and plain function calls."""

    def __init__(self) -> None:
        from quantdoctor.executors.base import mark_worker

        mark_worker(1)  # one CPU per actor: its runners use one thread (`runner_for`, diagnose's shard workers)
        self.objects: dict[int, Any] = {}

    def ready(self) -> int:
        return os.getpid()

    def make(self, key: int, factory: Callable[..., Any], *args: Any) -> None:
        if key not in self.objects:
            self.objects[key] = factory(*args)

    def call(self, key: int, method: str, item: Any) -> Any:
        return getattr(self.objects[key], method)(item)

    def apply(self, fn: Callable[[Any], Any], item: Any) -> Any:
        return fn(item)


@EXECUTORS.register("ray")
class RayExecutor:
    """Runs `map` on Ray.

    Args:
        workers: actors per `WorkerMethod` (one CPU each); None = every CPU of the cluster.
        address: join this cluster ("auto": the one running on this machine, "ray://host:port": a remote one); None =
            join the one this process already connected to, else start a local one with `workers` CPUs. Only a
            cluster started here is shut down by `close`.
    """

    name = "ray"

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        self._ray = import_ray()
        self._requested, self.address = workers, address
        self.started = False
        self.profile = Profile()
        self._actors: list[Any] = []
        self._made: dict[int, WorkerMethod] = {}  # the WorkerMethod is kept so its id stays unique
        self._refs: dict[int, tuple[Any, Any]] = {}  # id(argument) -> (argument, its object ref): put once

    # -- cluster -------------------------------------------------------------------------------------------------------
    def _connect(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            return
        start = time.perf_counter()
        if self.address is not None:
            ray.init(address=self.address, log_to_driver=False, logging_level="WARNING")
        else:
            ray.init(num_cpus=self._requested or os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                     logging_level="WARNING")
            self.started = True
        self.profile.startup += time.perf_counter() - start

    @property
    def workers(self) -> int:
        if self._requested is not None:
            return self._requested
        self._connect()
        return max(1, int(self._ray.cluster_resources().get("CPU", 1)))

    def _start(self) -> list[Any]:
        """The actors, started on first use."""
        if self._actors:
            return self._actors
        ray = self._ray
        self._connect()
        cpus = int(ray.cluster_resources().get("CPU", 0))
        if self.workers > cpus:  # an actor without a free CPU would wait forever
            raise UserInputError(f"--workers {self.workers} is more than the {cpus} CPU(s) of the Ray cluster; "
                                 f"give --workers {max(cpus, 1)} or fewer")
        start = time.perf_counter()
        actors = [ray.remote(num_cpus=1)(_Worker).remote() for _ in range(self.workers)]
        ray.get([a.ready.remote() for a in actors])
        self.profile.startup += time.perf_counter() - start
        self._actors = actors
        return actors

    def _make(self, fn: WorkerMethod) -> None:
        """`fn`'s object on every actor, from arguments put into the object store once."""
        if id(fn) in self._made:
            return
        ray = self._ray
        actors = self._start()
        start = time.perf_counter()
        for a in fn.args:  # once, even when several WorkerMethods share an argument; every actor reads the same object
            if id(a) not in self._refs:
                self._refs[id(a)] = (a, ray.put(a))
        refs = [self._refs[id(a)][1] for a in fn.args]
        self.profile.transfer += time.perf_counter() - start
        start = time.perf_counter()
        ray.get([a.make.remote(id(fn), fn.factory, *refs) for a in actors])  # raises here when a factory fails
        self.profile.startup += time.perf_counter() - start
        self._made[id(fn)] = fn

    # -- work ----------------------------------------------------------------------------------------------------------
    def map(self, fn: Callable[[Any], Any] | WorkerMethod, items: Sequence[Any]) -> list[Any]:
        from ray.util import ActorPool

        if not items:
            return []
        if isinstance(fn, WorkerMethod):
            self._make(fn)
            key, method = id(fn), fn.method

            def submit(actor: Any, item: Any) -> Any:
                return actor.call.remote(key, method, item)
        else:
            def submit(actor: Any, item: Any) -> Any:
                return actor.apply.remote(fn, item)
        pool = ActorPool(self._start())
        start = time.perf_counter()
        out = list(pool.map(submit, list(items)))
        self.profile.mapping += time.perf_counter() - start
        name = fn.method if isinstance(fn, WorkerMethod) else "function"
        self.profile.extra[name] = self.profile.extra.get(name, 0.0) + time.perf_counter() - start
        self.profile.items += len(items)
        return out

    def close(self) -> None:
        ray = self._ray
        if ray.is_initialized():
            for actor in self._actors:
                ray.kill(actor)
        self._actors, self._made, self._refs = [], {}, {}
        if self.started and ray.is_initialized():
            ray.shutdown()
        self.started = False

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
