"""The job kinds a worker runs, each a thin adapter over ``puzzle`` (the job context is the progress sink).

    search    ``puzzle.search.run_search`` over a stored library
    pipeline  ``puzzle.pipeline.stages.run_pipeline`` in the job's work folder, on Ray (``PUZZLE_RAY_ADDRESS``
              joins a cluster, else a local one is started); the built library is stored like an upload
              (``job.library_id``) before the search; each exported point is served by ``GET /jobs/{id}/export``
    elastic   ``puzzle.pipeline.elastic.run_elastic`` in the job's work folder, in the worker's process: the
              family per budget is the result, each budget's slice is served by ``GET /jobs/{id}/export?budget=``

A job's spec is the JSON its REST body was validated into; it becomes puzzle's request with one ``from_dict``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from puzzle.pipeline.request import PipelineRequest
from puzzle.search.request import SearchRequest
from service import crud, db, elastic, pipelines
from service import libraries as library_store
from service.errors import ConflictError

if TYPE_CHECKING:
    from puzzle.library import BlockLibrary
    from workers.runner import JobContext


def run_search_job(ctx: JobContext) -> dict[str, Any]:
    """A ``search`` job: solve / frontier / diverse over a stored library."""
    from puzzle.search import run_search

    with ctx.sessions() as session:
        row = crud.get_library(session, library_id=int(ctx.spec["library_id"]))
        library = library_store.load(ctx.settings.artifacts, row.path, row.digest)
    ctx.check()
    request = SearchRequest.from_dict(ctx.spec)
    # a diverse pool is persisted as it grows (one ``solution`` event per solution) and a re-run of the job
    # continues from the solutions an interrupted attempt had found
    previous = _found_solutions(ctx) if request.mode == "diverse" else []

    def found(solution: Any) -> None:
        ctx.log(SOLUTION_EVENT, choices=[int(j) for j in solution.choices])

    return run_search(library, request, progress=ctx, check=ctx.check, previous=previous, on_new=found).to_dict()


SOLUTION_EVENT = "solution"


def _found_solutions(ctx: JobContext) -> list[list[int]]:
    """The choices of the solutions earlier attempts of this job logged, in order."""
    with ctx.sessions() as session:
        events = crud.list_events(session, job_id=ctx.job_id, limit=100_000)
    return [e.data["choices"] for e in events if e.type == "log" and e.data.get("message") == SOLUTION_EVENT]


def run_pipeline_job(ctx: JobContext) -> dict[str, Any]:
    """A ``pipeline`` job: resumes from the job's work folder (``service.pipelines`` lays it out)."""
    from puzzle.library.executor import make_executor
    from puzzle.pipeline.stages import run_pipeline

    request = PipelineRequest.from_dict(ctx.spec)
    work = pipelines.work_dir(ctx.settings, ctx.job_id)
    address = ctx.settings.ray_address or os.environ.get("RAY_ADDRESS") or None
    with make_executor("ray", address=address) as executor:
        result = run_pipeline(
            request,
            work,
            parent_dir=None if request.is_preset else pipelines.parent_dir(ctx.settings, request.parent),
            corpus=pipelines.corpus_path(ctx.settings, request.corpus),
            executor=executor,
            progress=ctx,
            check=ctx.check,
            on_library=lambda library: _register(ctx, library, work / "library"),
            extra={"job_id": ctx.job_id},
            status=ctx.log,
        )
    return result.to_dict(relative=lambda path: pipelines.relative(ctx.settings, path))


def run_elastic_job(ctx: JobContext) -> dict[str, Any]:
    """An ``elastic`` job: resumes from the job's work folder (``service.elastic`` lays it out)."""
    from puzzle.pipeline.elastic import run_elastic
    from puzzle.presets import PRESETS

    run = run_elastic(
        elastic.request(ctx.settings, ctx.spec, ctx.job_id),
        pipelines.work_dir(ctx.settings, ctx.job_id),
        preset=PRESETS.get(ctx.spec["parent"]),
        train_steps=ctx.spec.get("train_steps"),
        export=ctx.spec.get("export", True),
        progress=ctx,
        check=ctx.check,
        status=ctx.log,
    )
    return run.to_dict(relative=lambda path: pipelines.relative(ctx.settings, path))


def _register(ctx: JobContext, library: BlockLibrary, folder: Path) -> dict[str, Any]:
    """Store the built library like an upload (frontier, solve and the dashboard work on it); sets job.library_id."""
    digest = library.digest()
    name = f"job{ctx.job_id}-{digest[:12]}"
    path = pipelines.relative(ctx.settings, folder)
    with db.session_scope(ctx.sessions) as session:
        row = crud.get_library_by_name(session, name=name)
        if row is None:
            row = crud.create_library(
                session,
                name=name,
                fmt="puzzle",
                digest=digest,
                path=path,
                n_layers=library.n_layers,
                n_variants=library.n_variants,
                summary=library_store.summary(library),
            )
        elif row.digest != digest or row.path != path:
            raise ConflictError(f"library {name!r} exists with other content; cannot register job {ctx.job_id}'s")
        crud.attach_library(session, job_id=ctx.job_id, worker_id=ctx.worker_id, library_id=row.id)
        return {"library_id": row.id, "library_name": name, "library_digest": digest}


RUNNERS: dict[str, Callable[[JobContext], dict[str, Any]]] = {
    "search": run_search_job,
    "pipeline": run_pipeline_job,
    "elastic": run_elastic_job,
}
