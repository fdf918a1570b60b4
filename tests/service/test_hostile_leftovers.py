"""Hostile inputs (issue 13), continued: leftovers, retention, limits seen from a real server, and what a
submission checks before a pipeline runs. Each asserts the status, the message, and that nothing was
written or left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from service import db
from service.main import create_app
from service.settings import Settings
from tests.service.fixtures import make_library, upload
from tests.service.test_hostile import API, count, frontier, leftovers

# --- leftovers -------------------------------------------------------------------------------------------


def test_concurrent_uploads_of_one_name_leave_no_orphans(client: TestClient, settings: Settings) -> None:
    contents = [make_library(3, seed=100 + i) for i in range(6)]
    statuses: list[int] = []

    def one(i: int) -> None:
        r = client.post(f"{API}/libraries", json={"name": "racy", "format": "puzzle", "data": contents[i].to_dict()})
        statuses.append(r.status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(contents))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [201] + [409] * (len(contents) - 1)
    stored = [lib.digest() for lib in contents if (settings.artifacts / "libraries" / lib.digest()).exists()]
    with db.engine_for(db.normalise_url(settings.database_url)).connect() as conn:
        winner = conn.execute(text("SELECT digest FROM libraries WHERE name = 'racy'")).scalar_one()
    assert stored == [winner]
    assert leftovers(settings) == []


def test_scratch_is_swept_on_start(settings: Settings) -> None:
    from service.libraries import scratch_prefix

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host_pid = scratch_prefix("nvlabs").rsplit("-", 2)[0]  # nvlabs-<host>
    scratch = settings.artifacts / "tmp"
    old, fresh = scratch / "nvlabs-killed", scratch / "nvlabs-running"
    killed = scratch / f"{host_pid}-{dead.pid}-abc123"  # fresh, but its process is gone (kill -9 mid-upload)
    alive = scratch / f"{host_pid}-{os.getppid()}-abc123"  # another live process's upload in flight
    for folder in (old, fresh, killed, alive):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "block_library.json").write_text("{}")
    then = time.time() - 3600
    os.utime(old, (then, then))
    with TestClient(create_app(settings)):
        pass
    assert not old.exists() and not killed.exists() and fresh.exists() and alive.exists()
    import shutil

    shutil.rmtree(fresh)
    shutil.rmtree(alive)


def test_work_folders_follow_the_retention_rule(client: TestClient, settings: Settings) -> None:
    from datetime import timedelta

    from service.models import utcnow
    from workers.runner import Worker

    body = {"kind": "pipeline", "parent": "tiny-llama", "build": {"space": "tiny"}}
    ids = [client.post(f"{API}/jobs", json=body).json()["id"] for _ in range(4)]
    cancelled, failed_old, failed_new, queued = ids
    assert client.post(f"{API}/jobs/{cancelled}/cancel").status_code == 202
    with db.engine_for(db.normalise_url(settings.database_url)).begin() as conn:
        for job_id, age in ((failed_old, 8), (failed_new, 1)):
            conn.execute(
                text("UPDATE jobs SET state = 'failed', finished_at = :at WHERE id = :id"),
                {"at": utcnow() - timedelta(days=age), "id": job_id},
            )
    work = settings.artifacts / "pipelines"
    for job_id in (*ids, 999_999):
        (work / f"job-{job_id}").mkdir(parents=True, exist_ok=True)
    worker = Worker(settings.model_copy(update={"failed_work_retention_days": 7}), kinds=["search"])
    worker.run(exit_when_idle=True)
    left = sorted(p.name for p in work.iterdir())
    assert left == sorted([f"job-{failed_new}", f"job-{queued}"])


def test_synchronous_searches_stop_at_their_time_limit(app_with: Any, client: TestClient, settings: Settings) -> None:
    row = upload(client, make_library(5, seed=33), "time-limit-5")
    c = app_with(sync_time_limit_s=1e-6)
    rows = count(settings, "frontier_cache")
    r = c.get(frontier(row["id"], constraint="num_params<=77%"))
    assert r.status_code == 422 and "PUZZLE_SYNC_TIME_LIMIT_S" in r.json()["detail"][0]["msg"]
    assert count(settings, "frontier_cache") == rows


def test_a_synchronous_search_stops_when_its_client_goes_away() -> None:
    import anyio
    from starlette.requests import Request

    from service.api.routes.libraries import bounded
    from service.search import Budget, ClientGone

    async def gone() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    request = Request({"type": "http", "method": "GET", "path": "/", "headers": []}, receive=gone)
    budget = Budget(60.0)
    checks = []

    def work() -> None:  # a long search that checks its budget between steps
        while True:
            checks.append(time.monotonic())
            budget.check()
            time.sleep(0.05)

    started = time.monotonic()
    with pytest.raises(ClientGone):
        anyio.run(bounded, request, budget, work)
    assert time.monotonic() - started < 2.0 and budget.gone.is_set()


def test_chunked_upload_over_the_limit_on_a_real_server(pg_url: str, tmp_path: Path, settings: Settings) -> None:
    import httpx

    from tests.service.live import serve

    libraries = count(settings, "libraries")
    env = {"PUZZLE_MAX_UPLOAD_BYTES": "65536"}
    sent = []

    def chunks() -> Iterator[bytes]:
        yield b'{"name": "chunked-live", "format": "puzzle", "data": {"x": "'
        for _ in range(1000):  # 16 MB, never announced in a Content-Length
            sent.append(1)
            yield b"a" * 16384
        yield b'"}}'

    with serve(pg_url, tmp_path, workers=0, extra_env=env) as base:
        r = httpx.post(f"{base}{API}/libraries", content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and "PUZZLE_MAX_UPLOAD_BYTES=65536" in r.json()["detail"]
    assert count(settings, "libraries") == libraries
    assert not (tmp_path / "tmp").exists() or not list((tmp_path / "tmp").iterdir())


def test_pipeline_diversity_over_the_parents_layers_is_refused(client: TestClient, settings: Settings) -> None:
    from puzzle.pipeline.request import parent_layers

    layers = parent_layers("tiny-llama", settings.artifacts / "parents")
    assert layers is not None
    search = {"mode": "diverse", "n": 2, "d": layers + 1}
    r = client.post(f"{API}/jobs", json={"kind": "pipeline", "parent": "tiny-llama", "search": search})
    assert r.status_code == 422, r.text
    problem = r.json()["detail"][0]
    assert problem["loc"] == ["body", "search", "d"] and f"{layers} layers" in problem["msg"]
    assert "--" not in problem["msg"] and count(settings, "jobs") == 0
