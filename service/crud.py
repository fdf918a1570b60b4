"""Every read and write of the job store (keyword-only functions over a ``Session``).

Job state machine: queued -> running -> succeeded | failed | cancelled. A running job belongs to the worker
that claimed it (``worker_id``); every write a worker makes checks it still owns the job, so a job that was
re-queued after its worker went silent can never be finished twice. Events are only ever inserted.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, String, Update, and_, insert, literal, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.crud_libraries import (  # noqa: F401  (the job store's one face: crud.get_library, ...)
    create_library,
    get_library,
    get_library_by_name,
    library_ref,
    list_libraries,
)
from service.encoding import body_hash, decode_cursor, encode_cursor
from service.errors import ConflictError, NotFoundError
from service.models import TERMINAL_STATES, IdempotencyKey, Job, JobEvent, utcnow

# ETA is reported once this many units are done and this much of the stage has elapsed.
ETA_MIN_UNITS = 2
ETA_MIN_SECONDS = 1.0


class LostJobError(RuntimeError):
    """The worker no longer owns the job (re-queued after a missed heartbeat, or finished elsewhere)."""


def _updated(session: Session, statement: Update) -> int:
    """Rows an UPDATE changed."""
    result = session.execute(statement)
    assert isinstance(result, CursorResult)
    return result.rowcount


# --- jobs: submit, read, cancel ------------------------------------------------------------------------------


def add_event(session: Session, *, job_id: int, type: str, data: dict[str, Any] | None = None) -> JobEvent:
    event = JobEvent(job_id=job_id, type=type, data=data or {}, at=utcnow())
    session.add(event)
    return event


def submit_job(
    session: Session,
    *,
    kind: str,
    spec: dict[str, Any],
    library_id: int | None,
    max_attempts: int,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Create a queued job; with an idempotency key a replay returns the first job. Returns (job, replayed).

    The caller commits. Raises ConflictError when the key was used with another body.
    """
    digest = body_hash({"kind": kind, "spec": spec})
    if session.get_bind().dialect.name == "postgresql":
        return _submit_one_statement(
            session,
            kind=kind,
            spec=spec,
            library_id=library_id,
            max_attempts=max_attempts,
            idempotency_key=idempotency_key,
            digest=digest,
        )
    if idempotency_key is not None:
        existing = _job_for_key(session, key=idempotency_key, digest=digest, spec=spec, max_attempts=max_attempts)
        if existing is not None:
            return existing, True
    job = Job(
        kind=kind,
        state="queued",
        spec=spec,
        library_id=library_id,
        max_attempts=max_attempts,
        attempts=0,
        cancel_requested=False,
        progress_done=0,
        progress_total=0,
        created_at=utcnow(),
    )
    session.add(job)
    session.flush()
    add_event(session, job_id=job.id, type="state", data={"state": "queued"})
    if idempotency_key is not None:
        session.add(IdempotencyKey(key=idempotency_key, request_hash=digest, job_id=job.id, created_at=utcnow()))
        try:
            session.flush()
        except IntegrityError:
            # Another request with the same key won the race: return its job.
            session.rollback()
            existing = _job_for_key(session, key=idempotency_key, digest=digest, spec=spec, max_attempts=max_attempts)
            assert existing is not None
            return existing, True
    return job, False


def _submit_one_statement(
    session: Session,
    *,
    kind: str,
    spec: dict[str, Any],
    library_id: int | None,
    max_attempts: int,
    idempotency_key: str | None,
    digest: str,
) -> tuple[Job, bool]:
    """PostgreSQL: the job, its 'queued' event and its idempotency key in one round trip (data-modifying CTEs);
    a key already taken fails the statement as a whole, and the first job is returned instead."""
    now = utcnow()
    values = {
        "kind": kind,
        "state": "queued",
        "spec": spec,
        "library_id": library_id,
        "max_attempts": max_attempts,
        "attempts": 0,
        "cancel_requested": False,
        "progress_done": 0,
        "progress_total": 0,
        "created_at": now,
    }
    job_cte = insert(Job).values(**values).returning(Job.id).cte("new_job")
    event_cte = (
        insert(JobEvent)
        .from_select(
            ["job_id", "type", "data", "at"],
            select(
                job_cte.c.id,
                literal("state", String()),
                literal({"state": "queued"}, JobEvent.__table__.c.data.type),
                literal(now, JobEvent.__table__.c.at.type),
            ),
        )
        .cte("new_event")
    )
    query = select(job_cte.c.id).add_cte(event_cte)
    if idempotency_key is not None:
        key_cte = (
            insert(IdempotencyKey)
            .from_select(
                ["key", "request_hash", "job_id", "created_at"],
                select(
                    literal(idempotency_key, String()),
                    literal(digest, String()),
                    job_cte.c.id,
                    literal(now, IdempotencyKey.__table__.c.created_at.type),
                ),
            )
            .cte("new_key")
        )
        query = query.add_cte(key_cte)
        try:
            job_id = session.execute(query).scalar_one()
        except IntegrityError:
            session.rollback()  # the statement made nothing; the caller had only read before it
            existing = _job_for_key(session, key=idempotency_key, digest=digest, spec=spec, max_attempts=max_attempts)
            assert existing is not None
            return existing, True
    else:
        job_id = session.execute(query).scalar_one()
    job = Job(id=job_id, **values)
    return job, False


def _job_for_key(session: Session, *, key: str, digest: str, spec: dict[str, Any], max_attempts: int) -> Job | None:
    """The job a replay of ``key`` returns; ConflictError naming the fields that differ from its first body."""
    row = session.get(IdempotencyKey, key)
    if row is None:
        return None
    job = session.get(Job, row.job_id)
    assert job is not None
    differ = (
        [] if row.request_hash == digest else sorted(k for k in {*spec, *job.spec} if spec.get(k) != job.spec.get(k))
    )
    if row.request_hash != digest and not differ:
        differ = ["kind"]
    if job.max_attempts != max_attempts:
        differ.append(f"max_attempts (first {job.max_attempts}, now {max_attempts})")
    if differ:
        raise ConflictError(
            f"Idempotency-Key {key!r} was already used for job {job.id} with a different request body "
            f"(differs in: {', '.join(differ)}); use a new key for a new request"
        )
    return job


def get_job(session: Session, *, job_id: int) -> Job:
    job = session.get(Job, job_id)
    if job is None:
        raise NotFoundError(f"no job with id {job_id}")
    return job


def list_jobs(
    session: Session,
    *,
    limit: int,
    cursor: str | None = None,
    states: list[str] | None = None,
    kinds: list[str] | None = None,
) -> tuple[list[Job], str | None]:
    """Newest first; ``next_cursor`` is None on the last page."""
    query = select(Job).order_by(Job.id.desc()).limit(limit + 1)
    if cursor:
        query = query.where(Job.id < decode_cursor(cursor))
    if states:
        query = query.where(Job.state.in_(states))
    if kinds:
        query = query.where(Job.kind.in_(kinds))
    rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].id) if more else None


def cancel_job(session: Session, *, job_id: int) -> Job:
    """Queued -> cancelled now; running -> cancel requested (the worker stops at its next check)."""
    now = utcnow()
    done = _updated(
        session,
        update(Job)
        .where(Job.id == job_id, Job.state == "queued")
        .values(state="cancelled", finished_at=now, cancel_requested=True),
    )
    if done:
        add_event(session, job_id=job_id, type="state", data={"state": "cancelled", "reason": "cancelled while queued"})
        session.flush()
        return get_job(session, job_id=job_id)
    asked = _updated(
        session,
        update(Job)
        .where(Job.id == job_id, Job.state == "running", Job.cancel_requested.is_(False))
        .values(cancel_requested=True),
    )
    if asked:
        add_event(session, job_id=job_id, type="cancel_requested", data={})
        session.flush()
    job = get_job(session, job_id=job_id)
    session.refresh(job)
    if job.state in TERMINAL_STATES:
        raise ConflictError(f"job {job_id} already {job.state}; only queued or running jobs can be cancelled")
    return job


def list_events(session: Session, *, job_id: int, after: int = 0, limit: int = 1000) -> list[JobEvent]:
    query = select(JobEvent).where(JobEvent.job_id == job_id, JobEvent.id > after).order_by(JobEvent.id).limit(limit)
    return list(session.scalars(query))


# --- jobs: the worker side -----------------------------------------------------------------------------------


def claim_job(session: Session, *, worker_id: str, kinds: list[str] | None = None) -> Job | None:
    """Take the oldest queued job: ``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL, so concurrent workers
    never block on or share a job; on SQLite (one writer at a time) the guarded UPDATE below does the same.
    The caller commits."""
    query = select(Job.id).where(Job.state == "queued").order_by(Job.id).limit(1)
    if kinds:
        query = query.where(Job.kind.in_(kinds))
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    job_id = session.scalar(query)
    if job_id is None:
        return None
    now = utcnow()
    claimed = _updated(
        session,
        update(Job)
        .where(Job.id == job_id, Job.state == "queued")
        .values(
            state="running",
            worker_id=worker_id,
            attempts=Job.attempts + 1,
            started_at=now,
            heartbeat_at=now,
            stage=None,
            stage_started_at=None,
            progress_done=0,
            progress_total=0,
            eta_s=None,
        ),
    )
    if not claimed:
        return None
    job = get_job(session, job_id=job_id)
    session.refresh(job)
    add_event(
        session, job_id=job_id, type="state", data={"state": "running", "worker": worker_id, "attempt": job.attempts}
    )
    return job


def _owned(job_id: int, worker_id: str) -> Any:
    return and_(Job.id == job_id, Job.worker_id == worker_id, Job.state == "running")


def heartbeat(session: Session, *, job_id: int, worker_id: str) -> bool:
    """Record that the worker is alive; returns whether a cancel was requested. LostJobError if not owned."""
    done = _updated(session, update(Job).where(_owned(job_id, worker_id)).values(heartbeat_at=utcnow()))
    if not done:
        raise LostJobError(f"job {job_id} is no longer owned by {worker_id}")
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def set_progress(session: Session, *, job_id: int, worker_id: str, stage: str, done: int, total: int) -> float | None:
    """Update stage progress (new stage: restart its clock); returns the ETA in seconds once it is stable."""
    job = session.scalar(select(Job).where(_owned(job_id, worker_id)))
    if job is None:
        raise LostJobError(f"job {job_id} is no longer owned by {worker_id}")
    now = utcnow()
    if job.stage != stage or job.stage_started_at is None:
        job.stage, job.stage_started_at = stage, now
    assert job.stage_started_at is not None
    elapsed = (now - job.stage_started_at).total_seconds()
    eta = None
    if total > 0 and done >= ETA_MIN_UNITS and elapsed >= ETA_MIN_SECONDS:
        eta = max(0.0, elapsed / done * (total - done))
    job.progress_done, job.progress_total, job.eta_s, job.heartbeat_at = done, total, eta, now
    add_event(
        session, job_id=job_id, type="progress", data={"stage": stage, "done": done, "total": total, "eta_s": eta}
    )
    return eta


def attach_library(session: Session, *, job_id: int, worker_id: str, library_id: int) -> None:
    """Record the library an owned running job built (a pipeline job's ``library_id``)."""
    done = _updated(session, update(Job).where(_owned(job_id, worker_id)).values(library_id=library_id))
    if not done:
        raise LostJobError(f"job {job_id} is no longer owned by {worker_id}")
    add_event(session, job_id=job_id, type="log", data={"message": "library stored", "library_id": library_id})


def log(session: Session, *, job_id: int, message: str, data: dict[str, Any] | None = None) -> None:
    add_event(session, job_id=job_id, type="log", data={"message": message, **(data or {})})


def finish_job(
    session: Session,
    *,
    job_id: int,
    worker_id: str,
    state: str,
    result: dict[str, Any] | None = None,
    error: str | None = None,
) -> bool:
    """Move an owned running job to a terminal state; False when the worker had lost it."""
    assert state in TERMINAL_STATES, state
    done = _updated(
        session,
        update(Job)
        .where(_owned(job_id, worker_id))
        .values(state=state, result=result, error=error, finished_at=utcnow(), eta_s=None),
    )
    if not done:
        return False
    data: dict[str, Any] = {"state": state}
    if error:
        data["error"] = error
    add_event(session, job_id=job_id, type="state", data=data)
    return True


def requeue_stale(session: Session, *, stale_after_s: float, now: datetime | None = None) -> list[int]:
    """Running jobs whose heartbeat is older than ``stale_after_s``: re-queue them while attempts remain,
    else fail them. Returns the ids touched. The caller commits."""
    now = now or utcnow()
    threshold = now - timedelta(seconds=stale_after_s)
    query = select(Job).where(Job.state == "running", Job.heartbeat_at < threshold).order_by(Job.id)
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    touched = []
    for job in session.scalars(query):
        lost = {
            "worker": job.worker_id,
            "attempt": job.attempts,
            "heartbeat_at": job.heartbeat_at.isoformat() if job.heartbeat_at else None,
        }
        if job.cancel_requested:
            job.state, job.finished_at = "cancelled", now
            add_event(
                session, job_id=job.id, type="state", data={"state": "cancelled", **lost, "reason": "worker lost"}
            )
        elif job.attempts < job.max_attempts:
            job.state, job.worker_id = "queued", None
            add_event(session, job_id=job.id, type="requeued", data={**lost, "reason": "worker heartbeat stale"})
            add_event(session, job_id=job.id, type="state", data={"state": "queued"})
        else:
            job.state, job.finished_at = "failed", now
            job.error = (
                f"worker lost {job.attempts} time(s) (no heartbeat for {stale_after_s:g} s); "
                f"gave up after max_attempts={job.max_attempts}"
            )
            add_event(session, job_id=job.id, type="state", data={"state": "failed", "error": job.error, **lost})
        touched.append(job.id)
    return touched
