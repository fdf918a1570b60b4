"""Executors: run many independent, keyed tasks (BLD trainings, scorings, profiles) locally or on Ray.

The pipeline hands a list of ``Task`` to ``Executor.run`` together with a ``ResultStore`` and a progress sink.
Every task's result (a JSON-able dict) is written to the store under the task's key *by the task itself*,
atomically, so

* a re-run (after an interruption, even kill -9 of the driver) skips keys already in the store;
* a retried task (Ray re-runs tasks whose worker died, and tasks that raised) overwrites its key with an
  equal record: at-least-once execution is safe.

``LocalExecutor`` runs tasks in-process one after another (retrying exceptions); ``RayExecutor`` submits them
as Ray tasks: ``ray.init()`` starts a local cluster unless ``RAY_ADDRESS`` (or ``address``) names one to join.
Both pass the same conformance tests (``tests/builder/test_executor.py``).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from puzzle.library.store import ResultStore
from puzzle.progress import NullProgress, ProgressSink

TaskFn = Callable[..., dict[str, Any]]


@dataclass(frozen=True)
class Task:
    """``fn(*args, **kwargs) -> dict`` stored under ``key``; ``fn`` must be a module-level (picklable) function.

    ``num_cpus`` / ``num_gpus`` / ``accelerator_type`` are the Ray resources the task asks for (a CPU head can
    drive GPU workers; profiling asks for the target's accelerator type); ``weight`` is how many units of
    progress the task is worth (e.g. the BLD units a layer task trains).
    """

    key: str
    fn: TaskFn
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    accelerator_type: str | None = None
    weight: int = 1


class TaskFailed(RuntimeError):
    """A task still failed after all its retries (a bug or an environment fault, not a user error)."""

    def __init__(self, key: str, cause: BaseException):
        super().__init__(f"task {key!r} failed after retries: {cause!r}")
        self.key = key
        self.cause = cause


def run_and_store(store_root: str, key: str, fn: TaskFn, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict:
    """Run one task and write its result under ``key`` (idempotent; what every executor runs per task)."""
    store = ResultStore(store_root)
    if key in store:  # finished by an earlier attempt whose acknowledgement was lost
        return store.get(key)
    result = fn(*args, **kwargs)
    if not isinstance(result, dict):
        raise TypeError(f"task {key!r} returned {type(result).__name__}; tasks must return a JSON-able dict")
    store.put(key, result)
    return result


class Executor(ABC):
    """Runs keyed tasks, skipping keys already in the store; returns ``{key: result}`` for every task."""

    name: str = "executor"

    @property
    def max_task_cpus(self) -> float:
        """The most CPUs one task may ask for (a task asking this many runs alone: e.g. latency profiling)."""
        return 1.0

    def run(
        self,
        tasks: Sequence[Task],
        store: ResultStore,
        *,
        stage: str = "tasks",
        progress: ProgressSink | None = None,
    ) -> dict[str, dict[str, Any]]:
        progress = progress or NullProgress()
        keys = [t.key for t in tasks]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{stage}: duplicate task keys")
        weights = {t.key: t.weight for t in tasks}
        progress.start(stage, sum(weights.values()))
        results: dict[str, dict[str, Any]] = {}
        pending = []
        for task in tasks:
            if task.key in store:
                results[task.key] = store.get(task.key)
            else:
                pending.append(task)
        if results:
            progress.advance(stage, sum(weights[k] for k in results))

        def done(key: str, result: dict[str, Any]) -> None:
            results[key] = result
            progress.advance(stage, weights[key])

        self._run(pending, str(store.root), done)
        progress.finish(stage)
        return {k: results[k] for k in keys}

    @abstractmethod
    def _run(self, tasks: Sequence[Task], store_root: str, done: Callable[[str, dict], None]) -> None:
        """Run ``tasks`` (none of them stored yet) and call ``done(key, result)`` as each finishes."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources (a Ray cluster this executor started)."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalExecutor(Executor):
    """Runs tasks in this process, in order; a task that raises is retried up to ``max_retries`` times."""

    name = "local"

    def __init__(self, *, max_retries: int = 2):
        self.max_retries = max_retries

    def _run(self, tasks: Sequence[Task], store_root: str, done: Callable[[str, dict], None]) -> None:
        for task in tasks:
            for attempt in range(self.max_retries + 1):
                try:
                    result = run_and_store(store_root, task.key, task.fn, task.args, task.kwargs)
                    break
                except Exception as exc:
                    if attempt == self.max_retries:
                        raise TaskFailed(task.key, exc) from exc
            done(task.key, result)


def _ray_entry(store_root: str, key: str, fn: TaskFn, args: tuple, kwargs: dict, num_threads: int) -> dict:
    import torch

    torch.set_num_threads(max(1, num_threads))
    return run_and_store(store_root, key, fn, args, kwargs)


class RayExecutor(Executor):
    """Submits every task as a Ray task (retried on worker death and on exceptions) and collects as they finish.

    ``address``: a cluster to join (default: ``RAY_ADDRESS`` if set, else a new local cluster with
    ``num_cpus`` CPUs). A cluster this executor started is shut down by ``close()``.
    """

    name = "ray"

    def __init__(self, *, address: str | None = None, num_cpus: int | None = None, max_retries: int = 3):
        import ray

        self.max_retries = max_retries
        self._owns_cluster = False
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or None
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if address is None:
                kwargs["num_cpus"] = num_cpus
                # Workers must import the same `puzzle` (and task modules) as this driver.
                kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.pathsep.join(_import_roots())}}
            ray.init(address=address, **kwargs)
            self._owns_cluster = address is None
        self._ray = ray

    @property
    def max_task_cpus(self) -> float:
        return float(self._ray.cluster_resources().get("CPU", 1.0))

    def _run(self, tasks: Sequence[Task], store_root: str, done: Callable[[str, dict], None]) -> None:
        ray = self._ray
        remote = ray.remote(_ray_entry)
        refs = {}
        for task in tasks:
            resources: dict[str, Any] = {"num_cpus": task.num_cpus, "num_gpus": task.num_gpus}
            if task.accelerator_type:
                resources["accelerator_type"] = task.accelerator_type
            ref = remote.options(
                **resources, max_retries=self.max_retries, retry_exceptions=True, name=task.key[:100]
            ).remote(store_root, task.key, task.fn, task.args, task.kwargs, int(task.num_cpus))
            refs[ref] = task.key
        waiting = list(refs)
        try:
            while waiting:
                ready, waiting = ray.wait(waiting, num_returns=1)
                key = refs[ready[0]]
                try:
                    result = ray.get(ready[0])
                except Exception as exc:
                    raise TaskFailed(key, exc) from exc
                done(key, result)  # may raise too: a progress sink stopping a cancelled job
        except BaseException:
            for ref in waiting:
                ray.cancel(ref)
            raise

    def close(self) -> None:
        if self._owns_cluster and self._ray.is_initialized():
            self._ray.shutdown()
            self._owns_cluster = False


def _import_roots() -> list[str]:
    """This driver's import path entries that hold the ``puzzle`` package (and the current directory)."""
    import puzzle

    root = os.path.dirname(os.path.dirname(os.path.abspath(puzzle.__file__)))
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return list(dict.fromkeys([root, os.getcwd(), *extra]))


def make_executor(kind: str = "local", *, workers: int | None = None, address: str | None = None) -> Executor:
    """``local`` or ``ray`` (``workers`` CPUs for a new local Ray cluster)."""
    if kind == "local":
        return LocalExecutor()
    if kind == "ray":
        return RayExecutor(address=address, num_cpus=workers)
    from puzzle.errors import ConfigError

    raise ConfigError(f"executor must be 'local' or 'ray', got {kind!r}")
