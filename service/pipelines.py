"""Pipeline jobs on the service side: where their inputs and outputs live under the artifact root (the
settings-dependent half of ``puzzle.pipeline.request``, whose checks a submission passes before it is queued).

Layout under ``PUZZLE_ARTIFACTS`` (every path made by ``artifacts.inside``; clients only ever send names):

    parents/<name>/          Hugging Face parent directories a pipeline (or elastic) job may name as ``parent``
    corpora/<name>           text files or folders a pipeline (or elastic) job may name as ``corpus``
    pipelines/job-<id>/      one job's work: parent/ (a trained preset), library/ (library.json, weights/,
                             work/ for the builder's resumable results), export/point-<k>/ + point-<k>.tar.gz;
                             an elastic job's (``service.elastic``): parent/, elastic/, export/budget-<b>/ + .tar.gz

Retention of work folders (docs/access.md): a succeeded job's is kept (its library and exports are served
from it); a cancelled job's is deleted when the cancel is recorded; a failed job's is kept
``PUZZLE_FAILED_WORK_RETENTION_DAYS`` (default 7) for a look, then deleted; a folder of no job is deleted.
``sweep_work`` applies the rule, at each worker's start.
"""

from __future__ import annotations

import re
import shutil
from datetime import timedelta
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from puzzle.pipeline.request import PipelineRequest, input_problems
from puzzle.search.request import Problems, RequestError
from service.artifacts import inside
from service.errors import InvalidInputError
from service.models import Job, utcnow
from service.schemas import PipelineJobCreate
from service.settings import Settings

WORK_KINDS = ("pipeline", "elastic")  # the job kinds with a work folder


def work_dir(settings: Settings, job_id: int) -> Path:
    return inside(settings.artifacts, "pipelines", f"job-{job_id}")


def relative(settings: Settings, path: Path) -> str:
    """``path`` (under the artifact root) relative to it, with '/' separators, as stored in the database."""
    return path.resolve().relative_to(settings.artifacts.resolve()).as_posix()


def parent_dir(settings: Settings, name: str) -> Path:
    return inside(settings.artifacts, "parents", name)


def corpus_path(settings: Settings, name: str | None) -> Path | None:
    return None if name is None else inside(settings.artifacts, "corpora", name)


def validate(settings: Settings, body: PipelineJobCreate) -> PipelineRequest:
    """The submission as puzzle's request; every problem at once (InvalidInputError -> 422) before queueing."""
    problems: Problems = []
    request = None
    try:
        request = PipelineRequest.from_dict(body.model_dump(mode="json"))
    except RequestError as exc:
        problems += exc.problems
    roots = inside(settings.artifacts, "parents"), inside(settings.artifacts, "corpora")
    problems += input_problems(body.parent, body.corpus, *roots, where="PUZZLE_ARTIFACTS/", request=request)
    if problems or request is None:
        raise InvalidInputError([(["body", *loc], msg) for loc, msg in problems])
    return request


def remove_work(settings: Settings, job_id: int) -> None:
    """Delete a job's work folder (a cancelled pipeline's)."""
    shutil.rmtree(work_dir(settings, job_id), ignore_errors=True)


def sweep_work(settings: Settings, sessions: sessionmaker[Session]) -> list[int]:
    """Apply the retention rule of the module docstring; returns the job ids whose folders were deleted."""
    root = inside(settings.artifacts, "pipelines")
    keep_failed = timedelta(days=settings.failed_work_retention_days)
    removed = []
    for folder in sorted(root.iterdir()) if root.is_dir() else ():
        match = re.fullmatch(r"job-(\d{1,18})", folder.name)
        if not match or not folder.is_dir():
            continue
        job_id = int(match.group(1))
        with sessions() as session:
            job = session.get(Job, job_id)
        expired = job is not None and job.state == "failed" and (job.finished_at or utcnow()) < utcnow() - keep_failed
        if job is None or job.state == "cancelled" or expired:
            remove_work(settings, job_id)
            removed.append(job_id)
    return removed
