"""The job runner behind ``puzzle worker``.

Loop: re-queue stale jobs -> claim the oldest queued job (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL)
-> run it with a heartbeat thread -> store its result, failure message or cancellation. Any number of workers
can share one database: a job is owned by exactly one worker at a time, and a worker that lost its job (its
heartbeat went stale and another worker took it over) can no longer write to it.

Cancellation is cooperative: the heartbeat thread (and every progress report) reads ``cancel_requested``, and
the job stops at its next ``ctx.check()``. The job context is a ``puzzle.progress.ProgressSink``: stages report
to it directly, and each report is a progress event of the job (then a cancel check).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from puzzle.errors import PuzzleError
from service import crud, db, pipelines
from service.models import Job
from service.settings import Settings
from workers.jobs import RUNNERS

log = logging.getLogger("puzzle.worker")


class JobCancelled(Exception):
    """Raised inside a job at the first check after a cancel was requested."""


class JobLost(Exception):
    """Raised inside a job whose worker no longer owns it."""


@dataclass
class JobContext:
    """What a runner sees of its job: its spec, the cancel check, and progress reporting as a sink.

    ``start / advance / finish(stage)`` record ``(stage, done, total)``; an advance is recorded when each unit is
    at least 1 % of the stage, else at most every ``interval_s`` seconds (and always at the stage's end); a report
    that repeats the last one of its stage is dropped. Every call checks for cancel."""

    job_id: int
    worker_id: str
    spec: dict[str, Any]
    sessions: sessionmaker[Session]
    settings: Settings
    cancel_event: threading.Event = field(default_factory=threading.Event)
    lost_event: threading.Event = field(default_factory=threading.Event)
    interval_s: float = 0.25
    _stages: dict[str, list[int]] = field(default_factory=dict, init=False, repr=False)  # [done, total, reported]
    _last: float = field(default=0.0, init=False, repr=False)

    def check(self) -> None:
        """Stop here if the job was cancelled or lost."""
        if self.lost_event.is_set():
            raise JobLost(f"job {self.job_id} was taken from {self.worker_id}")
        if self.cancel_event.is_set():
            raise JobCancelled(f"job {self.job_id} cancelled")

    def progress(self, stage: str, done: int, total: int) -> None:
        """Record stage progress (an event, the job's progress fields and ETA), then check for cancel."""
        try:
            with db.session_scope(self.sessions) as session:
                crud.set_progress(
                    session, job_id=self.job_id, worker_id=self.worker_id, stage=stage, done=done, total=total
                )
                if crud.get_job(session, job_id=self.job_id).cancel_requested:
                    self.cancel_event.set()
        except crud.LostJobError:
            self.lost_event.set()
        self.check()

    def _report(self, stage: str, *, force: bool) -> None:
        state = self._stages[stage]
        done, total, last = state
        now = time.monotonic()
        if done != last and (force or done >= total or total <= 100 or now - self._last >= self.interval_s):
            state[2], self._last = done, now
            self.progress(stage, done, total)
        else:
            self.check()

    def start(self, stage: str, total: int) -> None:
        self._stages[stage] = [0, total, -1]
        self._report(stage, force=True)

    def advance(self, stage: str, n: int = 1) -> None:
        self._stages.setdefault(stage, [0, 0, -1])[0] += n
        self._report(stage, force=False)

    def finish(self, stage: str) -> None:
        state = self._stages.setdefault(stage, [0, 0, -1])
        state[0] = max(state[0], state[1])
        self._report(stage, force=True)

    def log(self, message: str, **data: Any) -> None:
        with db.session_scope(self.sessions) as session:
            crud.log(session, job_id=self.job_id, message=message, data=data)


Runner = Callable[[JobContext], dict[str, Any]]


def default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """Claims and runs jobs until told to stop."""

    def __init__(self, settings: Settings, *, worker_id: str | None = None, kinds: list[str] | None = None):
        self.settings = settings
        self.worker_id = worker_id or default_worker_id()
        self.kinds = kinds
        self.sessions = db.session_factory(db.engine_for(db.normalise_url(settings.database_url)))

    def recover(self) -> list[int]:
        with db.session_scope(self.sessions) as session:
            touched = crud.requeue_stale(session, stale_after_s=self.settings.stale_after_s)
        if touched:
            log.warning("re-queued or failed stale jobs %s", touched)
        return touched

    def claim(self) -> Job | None:
        with db.session_scope(self.sessions) as session:
            return crud.claim_job(session, worker_id=self.worker_id, kinds=self.kinds)

    def run_once(self) -> int | None:
        """Recover stale jobs, claim one and run it; returns its id (None when the queue was empty)."""
        self.recover()
        job = self.claim()
        if job is None:
            return None
        self.execute(job)
        return job.id

    def execute(self, job: Job) -> str:
        """Run a claimed job to its end; returns the state it ended in ('lost' if another worker took it)."""
        ctx = JobContext(
            job_id=job.id, worker_id=self.worker_id, spec=dict(job.spec), sessions=self.sessions, settings=self.settings
        )
        stop_beat = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(ctx, stop_beat), daemon=True, name=f"heartbeat-{job.id}")
        with ctx.sessions() as session:
            if crud.get_job(session, job_id=job.id).cancel_requested:
                ctx.cancel_event.set()
        beat.start()
        state, result, error = "failed", None, None
        try:
            ctx.check()
            result = RUNNERS[job.kind](ctx)
            ctx.check()
            state = "succeeded"
        except JobCancelled:
            state = "cancelled"
        except JobLost:
            state = "lost"
        except PuzzleError as exc:
            error = str(exc)
        except Exception as exc:  # a worker must survive any job's crash and record it
            error = f"{type(exc).__name__}: {exc}"
            ctx.log("crash", traceback=traceback.format_exc(limit=20))
        finally:
            stop_beat.set()
            beat.join()
        if state == "lost":
            log.warning("job %s was taken over by another worker; dropping its result", job.id)
            return state
        with db.session_scope(self.sessions) as session:
            owned = crud.finish_job(
                session, job_id=job.id, worker_id=self.worker_id, state=state, result=result, error=error
            )
        if owned and state == "cancelled" and job.kind in pipelines.WORK_KINDS:
            pipelines.remove_work(self.settings, job.id)  # the retention rule (service.pipelines)
        return state if owned else "lost"

    def _heartbeat(self, ctx: JobContext, stop: threading.Event) -> None:
        while not stop.wait(self.settings.heartbeat_s):
            try:
                with db.session_scope(self.sessions) as session:
                    if crud.heartbeat(session, job_id=ctx.job_id, worker_id=self.worker_id):
                        ctx.cancel_event.set()
            except crud.LostJobError:
                ctx.lost_event.set()
                return
            except Exception:  # a database hiccup: try again at the next beat
                log.exception("heartbeat of job %s failed", ctx.job_id)

    def run(
        self, stop: threading.Event | None = None, *, max_jobs: int | None = None, exit_when_idle: bool = False
    ) -> int:
        """Work until ``stop`` is set (or ``max_jobs`` ran, or the queue is empty with ``exit_when_idle``)."""
        stop = stop or threading.Event()
        ran = 0
        swept = pipelines.sweep_work(self.settings, self.sessions)
        if swept:
            log.info("deleted the work folders of jobs %s (cancelled, failed long ago, or unknown)", swept)
        while not stop.is_set() and (max_jobs is None or ran < max_jobs):
            job_id = self.run_once()
            if job_id is None:
                if exit_when_idle:
                    break
                stop.wait(self.settings.poll_s)
                continue
            ran += 1
        return ran
