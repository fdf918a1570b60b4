"""Elastic jobs on the service side: the submission's checks, the job's request, and the slice a finished job serves.

An elastic job works where a pipeline job does (``service.pipelines``: ``pipelines/job-<id>/``, the same retention
rule): ``parent/`` (a trained preset), ``elastic/`` (the family: shared weights, nested library, ``elastic.json``),
``export/budget-<b>/`` + ``budget-<b>.tar.gz`` (``puzzle.pipeline.elastic`` lays them out).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from puzzle.pipeline.request import PARENT_PRESETS, corpus_problem, input_problems, source_problems
from puzzle.presets import PRESETS
from puzzle.search.request import Problems, RequestError
from service import pipelines
from service.artifacts import inside
from service.errors import ConflictError, InvalidInputError
from service.models import Job
from service.schemas import ElasticJobCreate
from service.settings import Settings

if TYPE_CHECKING:
    from puzzle.elastic import ElasticRequest

ELASTIC_DIR = "elastic"


def request(settings: Settings, spec: Mapping[str, Any], job_id: int) -> ElasticRequest:
    """Job ``job_id``'s spec as puzzle's request: the parent's folder (a preset's is trained in the job's work
    folder), the family's folder there, the corpus under ``corpora/``; a preset's held-out share by default."""
    from puzzle.elastic import ElasticRequest
    from puzzle.pipeline.stages import PARENT_DIR

    work, name = pipelines.work_dir(settings, job_id), spec["parent"]
    preset = name in PARENT_PRESETS
    parent = work / PARENT_DIR if preset else pipelines.parent_dir(settings, name)
    corpus = pipelines.corpus_path(settings, spec.get("corpus"))
    held_out = spec.get("held_out_fraction") or (PRESETS[name].train.held_out_fraction if preset else None)
    paths = {"parent": str(parent), "out": str(work / ELASTIC_DIR), "corpus": None if corpus is None else str(corpus)}
    return ElasticRequest.from_dict({**spec, **paths, "held_out_fraction": held_out})


def validate(settings: Settings, body: ElasticJobCreate) -> None:
    """Every problem of the submission at once (InvalidInputError -> 422) before queueing: its request, its
    named inputs (as a pipeline's), and a corpus the family could not split into training and held-out text."""
    problems: Problems = source_problems(body.parent, body.corpus, body.train_steps)
    fraction = None
    try:
        # the job's id is not known yet: job 0's folder stands in (the request reads no path)
        fraction = request(settings, body.model_dump(mode="json"), 0).held_out_fraction
    except RequestError as exc:
        problems += exc.problems
    corpora = inside(settings.artifacts, "corpora")
    problems += input_problems(
        body.parent, body.corpus, inside(settings.artifacts, "parents"), corpora, where="PUZZLE_ARTIFACTS/"
    )
    if body.corpus is not None and fraction is not None and (corpora / body.corpus).exists():
        problem = corpus_problem(corpora / body.corpus, fraction, knob="held_out_fraction")
        if problem is not None:
            problems.append((("corpus",), problem))
    if problems:
        raise InvalidInputError([(["body", *loc], msg) for loc, msg in problems])


def export_archive(settings: Settings, job: Job, result: dict[str, Any], budget: float | None) -> tuple[Path, str]:
    """The archive of ``budget``'s slice of a finished elastic job, and its download name."""
    budgets = [member["budget"] for member in result["family"]]
    known = ", ".join(f"{b:g}" for b in budgets)
    if budget is None or budget not in budgets:
        what = "name one with ?budget=" if budget is None else f"not {budget:g}"
        raise InvalidInputError([(["query", "budget"], f"job {job.id} built the budgets {known}: {what}")])
    export = result["family"][budgets.index(budget)]["export"]
    if export is None:
        raise ConflictError(f"job {job.id} exported no budget (it was submitted with export: false)")
    return inside(settings.artifacts, *export["archive"].split("/")), f"puzzle-job{job.id}-budget{budget:g}-hf.tar.gz"
