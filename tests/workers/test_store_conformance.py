"""The job store's semantics, run on both backends it supports: PostgreSQL (the service) and SQLite (a
single-user local run). Same tests, same answers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text, update
from sqlalchemy.orm import Session, sessionmaker

from service import crud, db
from service.errors import ConflictError, NotFoundError
from service.models import Job, utcnow


@pytest.fixture(params=["postgresql", "sqlite"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    if request.param == "postgresql":
        url = request.getfixturevalue("pg_url")
        with db.engine_for(db.normalise_url(url)).begin() as conn:
            conn.execute(text("TRUNCATE idempotency_keys, job_events, jobs RESTART IDENTITY CASCADE"))
    else:
        url = f"sqlite:///{tmp_path / 'store.db'}"
        db.upgrade(url)
    yield db.session_factory(db.engine_for(db.normalise_url(url)))


def _submit(sessions: sessionmaker[Session], n: int = 1, **kw: Any) -> list[int]:
    with db.session_scope(sessions) as s:
        return [
            crud.submit_job(s, kind="search", spec={"i": i, **kw}, library_id=None, max_attempts=2)[0].id
            for i in range(n)
        ]


def test_claim_order_ownership_and_finish(sessions: sessionmaker[Session]) -> None:
    a, b = _submit(sessions, 2)
    with db.session_scope(sessions) as s:
        first = crud.claim_job(s, worker_id="w1")
    with db.session_scope(sessions) as s:
        second = crud.claim_job(s, worker_id="w2")
    with db.session_scope(sessions) as s:
        assert crud.claim_job(s, worker_id="w3") is None
    assert (first.id, second.id) == (a, b) and first.attempts == 1 and first.state == "running"
    with db.session_scope(sessions) as s:
        assert crud.finish_job(s, job_id=a, worker_id="w2", state="succeeded", result={}) is False
        assert crud.finish_job(s, job_id=a, worker_id="w1", state="succeeded", result={"ok": 1}) is True
    with db.session_scope(sessions) as s:
        job = crud.get_job(s, job_id=a)
        assert job.state == "succeeded" and job.result == {"ok": 1} and job.finished_at is not None
        assert [e.data.get("state") for e in crud.list_events(s, job_id=a)] == ["queued", "running", "succeeded"]


def test_progress_eta_appears_once_stable(sessions: sessionmaker[Session]) -> None:
    (a,) = _submit(sessions)
    with db.session_scope(sessions) as s:
        crud.claim_job(s, worker_id="w")
    with db.session_scope(sessions) as s:
        assert crud.set_progress(s, job_id=a, worker_id="w", stage="frontier", done=1, total=10) is None
    with db.session_scope(sessions) as s:  # pretend the stage started 4 s ago: 4 units in 4 s -> 6 s left
        s.execute(update(Job).where(Job.id == a).values(stage_started_at=utcnow() - timedelta(seconds=4)))
    with db.session_scope(sessions) as s:
        eta = crud.set_progress(s, job_id=a, worker_id="w", stage="frontier", done=4, total=10)
    assert eta is not None and 5.5 < eta < 7.0
    with db.session_scope(sessions) as s:
        job = crud.get_job(s, job_id=a)
        assert (job.stage, job.progress_done, job.progress_total) == ("frontier", 4, 10) and job.eta_s == eta
        assert crud.set_progress(s, job_id=a, worker_id="w", stage="export", done=0, total=1) is None  # new stage
    with db.session_scope(sessions) as s, pytest.raises(crud.LostJobError):
        crud.set_progress(s, job_id=a, worker_id="intruder", stage="x", done=1, total=1)


def test_cancel_paths(sessions: sessionmaker[Session]) -> None:
    _oldest, running = _submit(sessions, 2)
    with db.session_scope(sessions) as s:
        crud.claim_job(s, worker_id="w")  # takes the oldest
        crud.claim_job(s, worker_id="w")
    (fresh,) = _submit(sessions)
    with db.session_scope(sessions) as s:
        assert crud.cancel_job(s, job_id=fresh).state == "cancelled"
        job = crud.cancel_job(s, job_id=running)
        assert job.state == "running" and job.cancel_requested
        assert crud.heartbeat(s, job_id=running, worker_id="w") is True
    with db.session_scope(sessions) as s:
        crud.finish_job(s, job_id=running, worker_id="w", state="cancelled")
    with db.session_scope(sessions) as s, pytest.raises(ConflictError):
        crud.cancel_job(s, job_id=running)
    with db.session_scope(sessions) as s, pytest.raises(NotFoundError):
        crud.cancel_job(s, job_id=10_000)


def test_stale_jobs_requeue_then_fail(sessions: sessionmaker[Session]) -> None:
    (a,) = _submit(sessions)
    for attempt in (1, 2):
        with db.session_scope(sessions) as s:
            assert crud.claim_job(s, worker_id=f"w{attempt}").attempts == attempt
        with db.session_scope(sessions) as s:
            assert crud.requeue_stale(s, stale_after_s=60) == []
            assert crud.requeue_stale(s, stale_after_s=60, now=utcnow() + timedelta(seconds=61)) == [a]
        with db.session_scope(sessions) as s:
            job = crud.get_job(s, job_id=a)
            assert job.state == ("queued" if attempt == 1 else "failed")
    assert "max_attempts=2" in (job.error or "")
    with db.session_scope(sessions) as s:
        types = [e.type for e in crud.list_events(s, job_id=a)]
    assert types.count("requeued") == 1 and types[-1] == "state"


def test_idempotency_and_pagination(sessions: sessionmaker[Session]) -> None:
    with db.session_scope(sessions) as s:
        one, replay1 = crud.submit_job(
            s, kind="search", spec={"a": 1}, library_id=None, max_attempts=1, idempotency_key="k"
        )
    with db.session_scope(sessions) as s:
        two, replay2 = crud.submit_job(
            s, kind="search", spec={"a": 1}, library_id=None, max_attempts=1, idempotency_key="k"
        )
    assert (replay1, replay2) == (False, True) and one.id == two.id
    with db.session_scope(sessions) as s, pytest.raises(ConflictError):
        crud.submit_job(s, kind="search", spec={"a": 2}, library_id=None, max_attempts=1, idempotency_key="k")
    ids = [one.id, *_submit(sessions, 4)]
    seen, cursor = [], None
    with db.session_scope(sessions) as s:
        while True:
            rows, cursor = crud.list_jobs(s, limit=2, cursor=cursor)
            seen += [r.id for r in rows]
            if cursor is None:
                break
    assert seen == sorted(ids, reverse=True)
