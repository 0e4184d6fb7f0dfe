"""Ray plumbing shared by sweeps and distributed exact scoring: connecting, and a pool of model actors.

Ray is imported only inside these functions, so ``import circuitfind`` never imports it.

* :func:`connect`: join the cluster at ``address`` (or ``$RAY_ADDRESS``), else start Ray in this process (nothing
  to start by hand); a Ray already initialised by the caller is used as is. Ray started here stops at the end.
* :class:`ActorPool`: at most ``slots`` :class:`~circuitfind.sweeps.cell.ModelWorker` actors, one model each;
  work for a model goes to an idle actor of that model, an actor whose model has no work left is released for
  another model, and a dead actor's work is handed back to the caller (to retry or to record).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from circuitfind.errors import ConfigError

__all__ = ["ActorPool", "Done", "connect", "import_ray", "is_worker_death"]

K = TypeVar("K", bound=Hashable)  # what groups jobs onto actors (e.g. model and resources)


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "sweeps run on Ray, which is not installed: pip install 'circuitfind[ray]' (or pip install ray)"
        ) from None
    return ray


@contextlib.contextmanager
def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None) -> Iterator[Any]:
    """Ray, connected for the duration of the block; yields the ``ray`` module.

    ``address`` (else ``$RAY_ADDRESS``) joins that cluster; without one, a local Ray starts in this process with
    ``num_cpus`` (default: all) and no dashboard, its workers importing this same circuitfind. A Ray the caller
    initialised is used as is and left running.

    Example:
        >>> with connect() as ray:  # doctest: +SKIP
        ...     print(ray.cluster_resources()["CPU"])
    """
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        package_root = str(Path(__file__).resolve().parents[2])  # workers import the driver's circuitfind
        path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        ray.init(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": path}},
        )
    try:
        yield ray
    finally:
        ray.shutdown()


def is_worker_death(ray: Any, err: BaseException) -> bool:
    """The worker process died (killed, OOM, node lost): the work itself may well succeed on a retry.

    Example:
        >>> is_worker_death(ray, ray.exceptions.ActorDiedError())  # doctest: +SKIP
        True
    """
    ex = ray.exceptions
    kinds = tuple(
        getattr(ex, n)
        for n in ("RayActorError", "WorkerCrashedError", "ActorUnavailableError", "OutOfMemoryError", "NodeDiedError")
        if hasattr(ex, n)
    )
    return isinstance(err, kinds)


@dataclass
class Done:
    """A finished call: its ``job`` (what was submitted), the ``result`` or the ``error``, and whether the worker
    died (``error`` is then Ray's error; the job did not run to its end)."""

    job: Any
    result: Any = None
    error: BaseException | None = None
    died: bool = False


@dataclass
class _Actor(Generic[K]):
    handle: Any
    key: K
    job: Any = None


@dataclass
class ActorPool(Generic[K]):
    """Actors that keep one model each; jobs are grouped by key (model and resources).

    Args:
        ray: the connected ``ray`` module.
        slots: actors alive at once.
        make: ``key -> actor handle`` (creates a new actor for that key).
        call: ``(actor handle, job) -> ObjectRef`` (submits a job to an actor).

    Example:
        >>> make = lambda key: Worker.remote(key)  # doctest: +SKIP
        >>> pool = ActorPool(ray, 2, make=make, call=lambda actor, job: actor.run.remote(job))  # doctest: +SKIP
        >>> pool.submit(key, job); done = pool.wait()  # doctest: +SKIP
    """

    ray: Any
    slots: int
    make: Callable[[K], Any]
    call: Callable[[Any, Any], Any]
    queues: dict[K, list[Any]] = field(default_factory=dict)
    actors: list[_Actor[K]] = field(default_factory=list)
    running: dict[Any, _Actor[K]] = field(default_factory=dict)
    started: dict[Any, float] = field(default_factory=dict)  # call -> time.monotonic() at submission

    def submit(self, key: K, job: Any, *, first: bool = False) -> None:
        """Queue ``job`` for an actor of ``key`` (``first``: ahead of the others, e.g. a retry)."""
        queue = self.queues.setdefault(key, [])
        queue.insert(0, job) if first else queue.append(job)

    @property
    def pending(self) -> int:
        return sum(len(q) for q in self.queues.values()) + len(self.running)

    @property
    def busy(self) -> int:
        return len(self.running)

    def running_jobs(self) -> list[tuple[Any, float]]:
        """The jobs running now and the seconds since each was submitted."""
        now = time.monotonic()
        return [(a.job, now - self.started[ref]) for ref, a in self.running.items()]

    def _schedule(self) -> None:
        # release idle actors whose key has no work left: their slot may serve another model
        for a in [a for a in self.actors if a.job is None and not self.queues.get(a.key)]:
            self.ray.kill(a.handle)
            self.actors.remove(a)
        # start actors for keys with more queued work than idle actors, the longest queue first
        while len(self.actors) < self.slots:
            idle = {k: sum(a.job is None for a in self.actors if a.key == k) for k in self.queues}
            wanting = [k for k, q in self.queues.items() if len(q) > idle[k]]
            if not wanting:
                break
            key = max(wanting, key=lambda k: len(self.queues[k]) - idle[k])
            self.actors.append(_Actor(self.make(key), key))
        for a in self.actors:
            queue = self.queues.get(a.key)
            if a.job is None and queue:
                a.job = queue.pop(0)
                ref = self.call(a.handle, a.job)
                self.running[ref] = a
                self.started[ref] = time.monotonic()

    def wait(self, timeout: float | None = None) -> list[Done]:
        """Start what can start, then wait up to ``timeout`` seconds for calls to finish; returns those that did."""
        self._schedule()
        if not self.running:
            return []
        ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=timeout)
        done = []
        for ref in ready:
            actor = self.running.pop(ref)
            self.started.pop(ref, None)
            job, actor.job = actor.job, None
            try:
                done.append(Done(job, result=self.ray.get(ref)))
            except Exception as e:
                died = is_worker_death(self.ray, e)
                if died:  # the process is gone; a new actor takes its slot
                    self.actors.remove(actor)
                    with contextlib.suppress(Exception):
                        self.ray.kill(actor.handle)
                done.append(Done(job, error=e, died=died))
        return done

    def close(self) -> None:
        """Kill every actor (on a shared cluster, their resources go back at once)."""
        for a in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(a.handle)
        self.actors.clear()
        self.running.clear()
        self.started.clear()
