"""The job runner on real PostgreSQL: lifecycle, failures, cancel, heartbeats, stale-job recovery, and
workers (threads and processes) racing for jobs."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any

from fastapi.testclient import TestClient

from service import crud, db
from service.settings import Settings
from tests.service.fixtures import REPO, make_library, search_job
from workers.runner import Worker


def _sessions(settings: Settings) -> Any:
    return db.session_factory(db.engine_for(db.normalise_url(settings.database_url)))


def _queue(settings: Settings, library_id: int, n: int = 1, **params: Any) -> list[int]:
    """Queue jobs straight through the job store (what POST /jobs does after validation)."""
    ids = []
    with db.session_scope(_sessions(settings)) as session:
        for _ in range(n):
            spec = search_job(library_id, **params)
            job, _ = crud.submit_job(
                session,
                kind="search",
                spec=spec,
                library_id=library_id,
                max_attempts=params.pop("max_attempts", 3) if "max_attempts" in params else 3,
            )
            ids.append(job.id)
    return ids


def _events(client: TestClient, job_id: int) -> list[dict[str, Any]]:
    return client.get(f"/api/v1/jobs/{job_id}/events").json()["data"]


def test_frontier_job_lifecycle_and_result_matches_the_search_engine(
    client: TestClient, settings: Settings, small_library: dict
) -> None:
    body = search_job(small_library["id"], mode="frontier", axis="runtime_ms")
    job_id = client.post("/api/v1/jobs", json=body).json()["id"]
    worker = Worker(settings, worker_id="w-life")
    assert worker.run_once() == job_id
    job = client.get(f"/api/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded" and job["attempts"] == 1 and job["worker_id"] == "w-life"
    assert job["progress"]["done"] == job["progress"]["total"] and job["finished_at"] and job["has_result"]
    types = [(e["type"], e["data"].get("state")) for e in _events(client, job_id)]
    assert types[:2] == [("state", "queued"), ("state", "running")] and types[-1] == ("state", "succeeded")
    assert ("progress", None) in types
    result = client.get(f"/api/v1/jobs/{job_id}/result").json()
    from puzzle import search

    reference = search.frontier(make_library(), "kl_div", "runtime_ms", ()).to_dict()["points"]
    assert [p["choices"] for p in result["points"]] == [list(s["choices"]) for s in reference]
    assert [p["objective"] for p in result["points"]] == [s["objective"] for s in reference]
    assert worker.run_once() is None  # queue empty


def test_search_jobs_report_progress_per_step(client: TestClient, settings: Settings, small_library: dict) -> None:
    """A diverse pool reports each solution as it is found; a frontier its engine, totals and points steps."""
    from puzzle import search

    diverse = client.post(
        "/api/v1/jobs", json=search_job(small_library["id"], mode="diverse", n=3, d=2, constraints=["num_params<=80%"])
    ).json()["id"]
    frontier = client.post("/api/v1/jobs", json=search_job(small_library["id"], mode="frontier", axis="runtime_ms"))
    worker = Worker(settings, worker_id="w-steps")
    assert worker.run_once() == diverse and worker.run_once() == frontier.json()["id"]

    def steps(job_id: int) -> list[tuple[str, int, int]]:
        return [
            (e["data"]["stage"], e["data"]["done"], e["data"]["total"])
            for e in _events(client, job_id)
            if e["type"] == "progress"
        ]

    pool = search.diverse(make_library(), "kl_div", ["num_params<=80%"], 3, 2)
    assert len(pool) == 3 and len(client.get(f"/api/v1/jobs/{diverse}/result").json()["points"]) == 3
    assert steps(diverse) == [("diverse", 0, 3), ("diverse", 1, 3), ("diverse", 2, 3), ("diverse", 3, 3)]
    assert steps(frontier.json()["id"]) == [("frontier", i, 3) for i in range(4)]


def test_failure_is_stored_with_its_message(client: TestClient, settings: Settings, small_library: dict) -> None:
    # submissions refuse infeasible constraints now (422); a job queued without that check (an older server's)
    # still fails in the worker with its message
    body = search_job(small_library["id"], constraints=["runtime_ms<=1%"])
    with db.session_scope(db.session_factory(db.engine_for(db.normalise_url(settings.database_url)))) as session:
        job_id = crud.submit_job(session, kind="search", spec=body, library_id=small_library["id"], max_attempts=1)[
            0
        ].id
    Worker(settings).run_once()
    job = client.get(f"/api/v1/jobs/{job_id}").json()
    assert job["state"] == "failed" and "runtime_ms" in job["error"]
    assert _events(client, job_id)[-1]["data"] == {"state": "failed", "error": job["error"]}


def test_cancel_while_running_stops_at_the_next_check(
    client: TestClient, settings: Settings, small_library: dict
) -> None:
    job_id = client.post("/api/v1/jobs", json=search_job(small_library["id"])).json()["id"]
    worker = Worker(settings, worker_id="w-cancel")
    job = worker.claim()
    assert job is not None and job.id == job_id
    r = client.post(f"/api/v1/jobs/{job_id}/cancel")
    assert r.status_code == 202 and r.json()["state"] == "running" and r.json()["cancel_requested"]
    assert worker.execute(job) == "cancelled"
    final = client.get(f"/api/v1/jobs/{job_id}").json()
    assert final["state"] == "cancelled" and final["result"] if "result" in final else final["state"] == "cancelled"
    assert [e["type"] for e in _events(client, job_id)][-2:] == ["cancel_requested", "state"]


def test_heartbeat_carries_cancel_to_a_running_job(settings: Settings, small_library: dict) -> None:
    (job_id,) = _queue(settings, small_library["id"])
    worker = Worker(settings, worker_id="w-beat")
    job = worker.claim()
    assert job is not None
    sessions = _sessions(settings)
    with db.session_scope(sessions) as s:
        before = crud.get_job(s, job_id=job_id).heartbeat_at
    time.sleep(0.05)
    with db.session_scope(sessions) as s:
        assert crud.heartbeat(s, job_id=job_id, worker_id="w-beat") is False
    with db.session_scope(sessions) as s:
        assert crud.get_job(s, job_id=job_id).heartbeat_at > before
        crud.cancel_job(s, job_id=job_id)
    with db.session_scope(sessions) as s:
        assert crud.heartbeat(s, job_id=job_id, worker_id="w-beat") is True


def test_stale_running_job_is_requeued_and_run_again(
    client: TestClient, settings: Settings, small_library: dict
) -> None:
    job_id = client.post("/api/v1/jobs", json=search_job(small_library["id"])).json()["id"]
    ghost = Worker(settings, worker_id="ghost")
    assert ghost.claim() is not None  # ... and then it dies without a heartbeat
    quick = settings.model_copy(update={"stale_after_s": 0.3})
    rescuer = Worker(quick, worker_id="rescuer")
    assert rescuer.recover() == []  # still fresh
    time.sleep(0.4)
    assert rescuer.run_once() == job_id
    job = client.get(f"/api/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded" and job["attempts"] == 2 and job["worker_id"] == "rescuer"
    events = _events(client, job_id)
    requeued = [e for e in events if e["type"] == "requeued"]
    assert len(requeued) == 1 and requeued[0]["data"]["worker"] == "ghost" and requeued[0]["data"]["attempt"] == 1
    assert [e["data"]["attempt"] for e in events if e["type"] == "state" and e["data"]["state"] == "running"] == [1, 2]
    # the ghost comes back: it no longer owns the job and cannot overwrite it
    with db.session_scope(_sessions(settings)) as s:
        assert crud.finish_job(s, job_id=job_id, worker_id="ghost", state="failed", error="late") is False
    assert client.get(f"/api/v1/jobs/{job_id}").json()["state"] == "succeeded"


def test_stale_job_fails_after_its_last_attempt(client: TestClient, settings: Settings, small_library: dict) -> None:
    job_id = client.post("/api/v1/jobs", json={**search_job(small_library["id"]), "max_attempts": 1}).json()["id"]
    assert Worker(settings, worker_id="ghost").claim() is not None
    time.sleep(0.4)
    rescuer = Worker(settings.model_copy(update={"stale_after_s": 0.3}))
    assert rescuer.recover() == [job_id]
    job = client.get(f"/api/v1/jobs/{job_id}").json()
    assert job["state"] == "failed" and job["attempts"] == 1
    assert "worker lost 1 time(s)" in job["error"] and "max_attempts=1" in job["error"]
    assert rescuer.run_once() is None


def test_many_threads_claim_one_job_exactly_once(settings: Settings, small_library: dict) -> None:
    (job_id,) = _queue(settings, small_library["id"])
    barrier = threading.Barrier(8)
    won: list[int] = []

    def claim(i: int) -> None:
        worker = Worker(settings, worker_id=f"t{i}")
        barrier.wait()
        job = worker.claim()
        if job is not None:
            won.append(job.id)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert won == [job_id]


def test_threads_draining_a_queue_claim_each_job_once(settings: Settings, small_library: dict) -> None:
    ids = _queue(settings, small_library["id"], n=30)
    claimed: list[int] = []
    lock = threading.Lock()

    def drain(i: int) -> None:
        worker = Worker(settings, worker_id=f"d{i}")
        while (job := worker.claim()) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=drain, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == ids


def test_two_worker_processes_run_each_job_once(client: TestClient, settings: Settings, small_library: dict) -> None:
    ids = [
        client.post(
            "/api/v1/jobs", json=search_job(small_library["id"], constraints=[f"runtime_ms<={60 + i}%"])
        ).json()["id"]
        for i in range(6)
    ]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PUZZLE_DATABASE_URL": settings.database_url,
        "PUZZLE_ARTIFACTS": str(settings.artifacts),
        "PUZZLE_POLL_S": "0.05",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "puzzle", "worker", "--exit-when-idle", "--id", f"proc{i}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    ran = sum(int(out.split("ran ")[1].split()[0]) for out, _ in outs)
    assert ran == len(ids)
    for job_id in ids:
        job = client.get(f"/api/v1/jobs/{job_id}").json()
        assert job["state"] == "succeeded" and job["attempts"] == 1
        starts = [e for e in _events(client, job_id) if e["type"] == "state" and e["data"]["state"] == "running"]
        assert len(starts) == 1 and starts[0]["data"]["worker"] == job["worker_id"]


def _run_search(library: Any, spec: dict[str, Any]) -> dict[str, Any]:
    """What a search job stores for ``spec`` (puzzle's one dispatcher over the spec's request)."""
    from puzzle.search import SearchRequest, run_search

    return run_search(library, SearchRequest.from_dict(spec)).to_dict()


def test_search_result_shape_for_solve_and_diverse(settings: Settings, small_library: dict) -> None:
    library = make_library()
    solved = _run_search(library, search_job(small_library["id"], constraints=["runtime_ms<=60%"]))
    assert len(solved["points"]) == 1 and len(solved["points"][0]["choices"]) == library.n_layers
    diverse = _run_search(
        library, search_job(small_library["id"], mode="diverse", n=3, d=2, constraints=["runtime_ms<=60%"])
    )
    assert len(diverse["points"]) == 3
    for a in diverse["points"]:
        for b in diverse["points"]:
            if a is not b:
                assert sum(x != y for x, y in zip(a["choices"], b["choices"], strict=True)) >= 2


def test_a_rerun_diverse_job_continues_from_the_solutions_it_had_logged(
    client: TestClient, settings: Settings, small_library: dict
) -> None:
    """Each pool member is logged as found; a re-queued job passes them back and computes only the rest."""
    from puzzle import search

    reference = search.diverse(make_library(), "kl_div", ["num_params<=80%"], 4, 2)
    assert len(reference) == 4
    spec = search_job(small_library["id"], mode="diverse", n=4, d=2, constraints=["num_params<=80%"])
    with db.session_scope(_sessions(settings)) as session:  # queued, with what an interrupted attempt had logged
        job_id = crud.submit_job(session, kind="search", spec=spec, library_id=small_library["id"], max_attempts=3)[
            0
        ].id
        for s in reference[:2]:
            crud.log(session, job_id=job_id, message="solution", data={"choices": list(s.choices)})
    assert Worker(settings, worker_id="w-resume").run_once() == job_id
    result = client.get(f"/api/v1/jobs/{job_id}/result").json()
    assert [p["choices"] for p in result["points"]] == [list(s.choices) for s in reference]
    logged = [e["data"]["choices"] for e in _events(client, job_id) if e["data"].get("message") == "solution"]
    assert logged == [list(s.choices) for s in reference]  # the two resumed, then only the two new ones
