"""Pipeline jobs on the service side: where their inputs and outputs live under the artifact root (the
settings-dependent half of ``puzzle.pipeline.request``, whose checks a submission passes before it is queued).

Layout under ``PUZZLE_ARTIFACTS`` (every path made by ``artifacts.inside``; clients only ever send names):

    parents/<name>/          Hugging Face parent directories a pipeline may name as ``parent``
    corpora/<name>           text files or folders a pipeline may name as ``corpus``
    pipelines/job-<id>/      one job's work: parent/ (a trained preset), library/ (library.json, weights/,
                             work/ for the builder's resumable results), export/point-<k>/ + point-<k>.tar.gz
"""

from __future__ import annotations

from pathlib import Path

from puzzle.pipeline.request import PipelineRequest, input_problems
from puzzle.search.request import Problems, RequestError
from service.artifacts import inside
from service.errors import InvalidInputError
from service.schemas import PipelineJobCreate
from service.settings import Settings


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
    try:
        request = PipelineRequest.from_dict(body.model_dump(mode="json"))
    except RequestError as exc:
        problems += exc.problems
    roots = inside(settings.artifacts, "parents"), inside(settings.artifacts, "corpora")
    problems += input_problems(body.parent, body.corpus, *roots, where="PUZZLE_ARTIFACTS/")
    if problems:
        raise InvalidInputError([(["body", *loc], msg) for loc, msg in problems])
    return request
