"""Jobs: submit, list, get, cancel, events (JSON polling and SSE), result, architecture, export."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from anyio import to_thread
from fastapi import APIRouter, Body, Header, Query, Request, Response
from fastapi.responses import FileResponse, StreamingResponse

from service import crud, elastic, libraries, pipelines, search
from service.api.deps import MAX_ID, JobIdPath, SessionDep, SettingsDep
from service.api.openapi import Message
from service.artifacts import inside
from service.errors import ConflictError, invalid
from service.models import TERMINAL_STATES, Job
from service.schemas import (
    ArchitecturePublic,
    ElasticJobCreate,
    JobCreate,
    JobEventPublic,
    JobEventsPublic,
    JobKind,
    JobPublic,
    JobsPublic,
    JobState,
    PipelineJobCreate,
)

router = APIRouter(prefix="/jobs", tags=["jobs"])

SSE_POLL_S = 0.25
SSE_KEEPALIVE_S = 15.0


@router.post(
    "",
    status_code=202,
    response_model=JobPublic,
    responses={409: {"model": Message, "description": "Idempotency-Key reused with another body"}},
)
def submit_job(
    body: Annotated[JobCreate, Body()],
    session: SessionDep,
    settings: SettingsDep,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header(min_length=1, max_length=255)] = None,
) -> JobPublic:
    """Queue a job (202 + Location). A replay with the same Idempotency-Key and body returns the same job.

    The body is validated once into puzzle's request (a pipeline's, an elastic family's, or a search's against
    its library); the stored spec is the body's JSON, which the worker turns back into the request with one
    ``from_dict``."""
    spec = body.model_dump(mode="json", exclude={"max_attempts"})
    library_id = None
    if isinstance(body, PipelineJobCreate):
        pipelines.validate(settings, body)
    elif isinstance(body, ElasticJobCreate):
        elastic.validate(settings, body)
    else:
        ref = crud.library_ref(session, library_id=body.library_id)
        if ref is None:
            raise invalid(
                ["body", "library_id"], f"no library with id {body.library_id}; upload one with POST /api/v1/libraries"
            )
        search.search_request(libraries.load(settings.artifacts, *ref), spec, where=["body"])
        library_id = body.library_id
    job, replayed = crud.submit_job(
        session,
        kind=body.kind,
        spec=spec,
        library_id=library_id,
        max_attempts=body.max_attempts or settings.job_max_attempts,
        idempotency_key=idempotency_key,
    )
    session.commit()
    response.headers["Location"] = str(request.url_for("get_job", job_id=job.id).path)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return JobPublic.model_validate(job)


@router.get("", response_model=JobsPublic)
def list_jobs(
    session: SessionDep,
    state: Annotated[list[JobState] | None, Query()] = None,
    kind: Annotated[list[JobKind] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> JobsPublic:
    """Jobs, newest first; pass ``next_cursor`` back as ``cursor`` for the next page."""
    rows, next_cursor = crud.list_jobs(
        session, limit=limit, cursor=cursor, states=list(state or []), kinds=list(kind or [])
    )
    return JobsPublic(data=[JobPublic.model_validate(j) for j in rows], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: JobIdPath, session: SessionDep) -> JobPublic:
    return JobPublic.model_validate(crud.get_job(session, job_id=job_id))


@router.post(
    "/{job_id}/cancel",
    response_model=JobPublic,
    status_code=202,
    responses={409: {"model": Message, "description": "the job already finished"}},
)
def cancel_job(job_id: JobIdPath, session: SessionDep) -> JobPublic:
    """Cancel a queued job now, or ask a running one to stop at its next check (409 once finished)."""
    job = crud.cancel_job(session, job_id=job_id)
    session.commit()
    return JobPublic.model_validate(job)


@router.get("/{job_id}/events", response_model=JobEventsPublic)
def list_job_events(
    job_id: JobIdPath,
    session: SessionDep,
    after: Annotated[int, Query(ge=0, le=MAX_ID, description="only events with a larger id")] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 500,
) -> JobEventsPublic:
    """The job's event log in order; poll with ``after=<last_id>``."""
    crud.get_job(session, job_id=job_id)
    events = crud.list_events(session, job_id=job_id, after=after, limit=limit)
    return JobEventsPublic(
        data=[JobEventPublic.model_validate(e) for e in events], last_id=events[-1].id if events else after
    )


@router.get(
    "/{job_id}/events/stream",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-sent events"}},
)
async def stream_job_events(
    job_id: JobIdPath,
    request: Request,
    after: Annotated[int, Query(ge=0, le=MAX_ID)] = 0,
    last_event_id: Annotated[str | None, Header(max_length=40)] = None,
) -> StreamingResponse:
    """Server-sent events (``id`` = event id; reconnect with ``Last-Event-ID`` to resume). Ends after the
    job's final state event."""
    sessions = request.app.state.sessions
    start = after
    if last_event_id:
        try:
            start = max(start, int(last_event_id))
            if start > MAX_ID:
                raise ValueError(last_event_id)
        except ValueError as exc:
            raise invalid(
                ["header", "last-event-id"], f"Last-Event-ID must be an event id (0 to {MAX_ID}), got {last_event_id!r}"
            ) from exc

    def fetch(cursor: int) -> tuple[list[dict[str, Any]], str]:
        with sessions() as session:
            job = crud.get_job(session, job_id=job_id)
            events = crud.list_events(session, job_id=job_id, after=cursor, limit=500)
            return [JobEventPublic.model_validate(e).model_dump(mode="json") for e in events], job.state

    first, _ = await to_thread.run_sync(fetch, start)  # 404 before the stream starts

    async def stream() -> AsyncIterator[str]:
        cursor, batch, idle = start, first, 0.0
        yield "retry: 1000\n\n"
        while True:
            for event in batch:
                cursor = event["id"]
                yield f"id: {cursor}\nevent: {event['type']}\ndata: {json.dumps(event)}\n\n"
            _, state = await to_thread.run_sync(fetch, cursor)
            if state in TERMINAL_STATES:
                rest, _ = await to_thread.run_sync(fetch, cursor)
                if not rest:
                    return
                batch = rest
                continue
            if await request.is_disconnected():
                return
            await asyncio.sleep(SSE_POLL_S)
            idle += SSE_POLL_S
            if idle >= SSE_KEEPALIVE_S:
                idle = 0.0
                yield ": keep-alive\n\n"
            batch, _ = await to_thread.run_sync(fetch, cursor)
            if batch:
                idle = 0.0

    return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


def _succeeded(job: Job) -> dict[str, Any]:
    if job.state != "succeeded" or job.result is None:
        raise ConflictError(f"job {job.id} is {job.state}; results exist once it has succeeded")
    return job.result


NOT_YET: dict[int | str, dict[str, Any]] = {409: {"model": Message, "description": "the job has not succeeded (yet)"}}


@router.get("/{job_id}/result", responses=NOT_YET)
def get_job_result(job_id: JobIdPath, session: SessionDep) -> dict[str, Any]:
    """The job's result: ``points`` (each a whole architecture with objective and costs) and search details."""
    return _succeeded(crud.get_job(session, job_id=job_id))


@router.get("/{job_id}/architecture", response_model=ArchitecturePublic, responses=NOT_YET)
def get_job_architecture(
    job_id: JobIdPath,
    session: SessionDep,
    settings: SettingsDep,
    point: Annotated[int, Query(ge=0, le=10_000_000, description="index into the result's points")] = 0,
) -> ArchitecturePublic:
    """Per-layer view of one architecture of a finished search: which subblocks each layer keeps, at what size."""
    job = crud.get_job(session, job_id=job_id)
    result = _succeeded(job)
    if job.kind == "elastic":
        raise invalid(["path", "job_id"], f"job {job_id} is elastic: its result lists each budget's layers")
    library = search.load_library(settings, crud.get_library(session, library_id=job.library_id or 0))
    return search.architecture(library, result, point=point, library_id=job.library_id or 0, job_id=job.id)


@router.get(
    "/{job_id}/export",
    response_class=Response,
    responses={200: {"content": {"application/gzip": {}}, "description": "tar.gz archive"}, **NOT_YET},
)
def export_job_architecture(
    job_id: JobIdPath,
    session: SessionDep,
    settings: SettingsDep,
    point: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    budget: Annotated[float | None, Query(gt=0, le=1, description="elastic jobs: the budget to download")] = None,
) -> Response:
    """A tar.gz of one point of a finished job, or of one budget of an elastic job.

    A pipeline job's exported point (``export_points``): the Hugging Face directory its export stage wrote
    (``config.json`` with ``block_configs``, safetensors, tokenizer, ``puzzle_manifest.json``). Any other point:
    the architecture only (``architecture.json``, ``block_configs.json``, ``solution.json``; no weights). An
    elastic job's ``budget``: the child sliced out of the family (``config.json``, safetensors, tokenizer)."""
    job = crud.get_job(session, job_id=job_id)
    if job.kind == "elastic":
        path, name = elastic.export_archive(settings, job, _succeeded(job), budget)
        return FileResponse(path, media_type="application/gzip", filename=name)
    if budget is not None:
        raise invalid(["query", "budget"], f"budget applies to elastic jobs; job {job_id} is a {job.kind} job")
    exported = ((_succeeded(job).get("pipeline") or {}).get("exports") or {}).get(str(point))
    if job.kind == "pipeline" and exported:
        path = inside(settings.artifacts, *exported["archive"].split("/"))
        name = f"puzzle-job{job_id}-point{point}-hf.tar.gz"
        return FileResponse(path, media_type="application/gzip", filename=name)
    view = get_job_architecture(job_id, session, settings, point)
    data = search.export_archive(view, job.result or {}, point=point)
    name = f"puzzle-job{job_id}-point{point}.tar.gz"
    return Response(
        data, media_type="application/gzip", headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )
