"""One conformance suite run against every executor (local in-process and a real local Ray cluster)."""

from __future__ import annotations

import pytest

from puzzle.library.executor import Executor, LocalExecutor, RayExecutor, Task, TaskFailed
from puzzle.library.store import ResultStore
from tests.library import tasks
from tests.progress import RecordingProgress


@pytest.fixture(scope="module")
def ray_executor():
    executor = RayExecutor(num_cpus=2, max_retries=2)
    yield executor
    executor.close()


@pytest.fixture(params=["local", "ray"])
def executor(request) -> Executor:
    if request.param == "local":
        return LocalExecutor(max_retries=2)
    return request.getfixturevalue("ray_executor")


def test_runs_every_task_and_stores_results(executor: Executor, tmp_path) -> None:
    store = ResultStore(tmp_path / "store")
    progress = RecordingProgress()
    work = [Task(f"sq/{i}", tasks.square, (i, str(tmp_path))) for i in range(5)]
    results = executor.run(work, store, stage="square", progress=progress)
    assert list(results) == [f"sq/{i}" for i in range(5)]
    assert [r["square"] for r in results.values()] == [0, 1, 4, 9, 16]
    assert sorted(store.keys()) == sorted(results)
    assert progress.totals["square"] == 5 and progress.done["square"] == 5
    assert progress.finished == ["square"]


def test_stored_keys_are_skipped_not_recomputed(executor: Executor, tmp_path) -> None:
    store = ResultStore(tmp_path / "store")
    store.put("sq/3", {"x": 3, "square": -1})  # an earlier (interrupted) run finished this one
    results = executor.run([Task(f"sq/{i}", tasks.square, (i, str(tmp_path))) for i in range(4)], store)
    assert results["sq/3"]["square"] == -1
    assert not (tmp_path / "calls-3").exists()
    assert (tmp_path / "calls-2").read_text() == "."
    again = executor.run([Task(f"sq/{i}", tasks.square, (i, str(tmp_path))) for i in range(4)], store)
    assert again == results
    assert (tmp_path / "calls-2").read_text() == "."  # not run twice


def test_task_that_raises_once_is_retried(executor: Executor, tmp_path) -> None:
    store = ResultStore(tmp_path / "store")
    marker = tmp_path / "marker"
    results = executor.run([Task("flaky", tasks.fail_once, (str(marker), 7))], store)
    assert marker.read_text() == "failed once"
    assert results["flaky"] == {"value": 7} == store.get("flaky")


def test_task_that_always_fails_names_its_key(executor: Executor, tmp_path) -> None:
    store = ResultStore(tmp_path / "store")
    with pytest.raises(TaskFailed, match="broken"):
        executor.run([Task("broken", tasks.always_fail)], store)
    assert "broken" not in store


def test_ray_task_whose_worker_dies_is_retried(ray_executor: RayExecutor, tmp_path) -> None:
    store = ResultStore(tmp_path / "store")
    marker = tmp_path / "marker"
    results = ray_executor.run([Task("crashy", tasks.die_once, (str(marker), 11))], store)
    assert marker.read_text() == "died once"
    assert results["crashy"]["value"] == 11
    assert store.get("crashy")["value"] == 11
