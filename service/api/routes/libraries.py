"""Block libraries: upload (ours or NVlabs), list, get; synchronous frontier and solve over a stored one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Literal, TypeVar

import anyio
from anyio import to_thread
from fastapi import APIRouter, Query, Request, Response

from service import crud, libraries, search
from service.api.deps import LibraryIdPath, SessionDep, SettingsDep
from service.api.openapi import Message
from service.errors import ConflictError
from service.schemas import (
    Constraint as ConstraintText,
)
from service.schemas import (
    FrontierPublic,
    LibrariesPublic,
    LibraryCreate,
    LibraryPublic,
    SolutionPublic,
    SolveRequest,
)

T = TypeVar("T")

router = APIRouter(prefix="/libraries", tags=["libraries"])


@router.post(
    "",
    status_code=201,
    response_model=LibraryPublic,
    responses={
        200: {"description": "the same library was already stored under this name"},
        409: {"model": Message, "description": "the name is taken by a library with other content"},
    },
)
def upload_library(
    body: LibraryCreate, session: SessionDep, settings: SettingsDep, request: Request, response: Response
) -> LibraryPublic:
    """Store a block library (``format`` puzzle or nvlabs). Its name is a label, never a path."""
    libraries.sweep_scratch(settings)
    library = libraries.parse_upload(body.format, body.data, scratch=libraries.scratch_dir(settings))
    digest = library.digest()
    existing = crud.get_library_by_name(session, name=body.name)
    if existing is not None:
        if existing.digest != digest:
            raise ConflictError(f"a library named {body.name!r} already exists with other content; choose another name")
        response.status_code = 200
        response.headers["Location"] = str(request.url_for("get_library", library_id=existing.id).path)
        return LibraryPublic.model_validate(existing)
    libraries.lock_digest(session, digest)  # held until commit / rollback: no sweep of this digest meanwhile
    path = libraries.store(settings, library)
    try:
        row = crud.create_library(
            session,
            name=body.name,
            fmt=body.format,
            digest=digest,
            path=path,
            n_layers=library.n_layers,
            n_variants=library.n_variants,
            summary=libraries.summary(library),
        )
        session.commit()
    except ConflictError:
        libraries.drop_if_unused(settings, session, digest)  # a racing upload took the name: no orphan folder
        raise
    response.headers["Location"] = str(request.url_for("get_library", library_id=row.id).path)
    return LibraryPublic.model_validate(row)


@router.get("", response_model=LibrariesPublic)
def list_libraries(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> LibrariesPublic:
    rows, next_cursor = crud.list_libraries(session, limit=limit, cursor=cursor)
    return LibrariesPublic(data=[LibraryPublic.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get("/{library_id}", response_model=LibraryPublic)
def get_library(library_id: LibraryIdPath, session: SessionDep) -> LibraryPublic:
    return LibraryPublic.model_validate(crud.get_library(session, library_id=library_id))


@router.get(
    "/{library_id}/frontier",
    response_class=Response,
    responses={200: {"model": FrontierPublic, "description": "Pareto frontier, points sorted by the axis"}},
)
async def get_frontier(
    library_id: LibraryIdPath,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    axis: Annotated[str, Query(min_length=1, max_length=200, description="cost to sweep, e.g. runtime_ms")],
    objective: Annotated[str, Query(min_length=1, max_length=200)] = "kl_div",
    scenario: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    lo: Annotated[float | None, Query(allow_inf_nan=False, description="smallest axis value to include")] = None,
    hi: Annotated[float | None, Query(allow_inf_nan=False, description="largest axis value to include")] = None,
    view: Annotated[
        Literal["points", "columns"], Query(description="points: objects with costs and choices; columns: plot arrays")
    ] = "points",
    constraint: Annotated[
        list[ConstraintText] | None, Query(max_length=32, description="extra bounds, e.g. num_params<=60%")
    ] = None,
) -> Response:
    """The Pareto frontier of objective vs ``axis`` (cached per library and query; an expensive read: see
    docs/access.md). Stops when the client goes away or after ``PUZZLE_SYNC_TIME_LIMIT_S``."""
    query = {
        "objective": objective,
        "axis": axis,
        "scenario": scenario,
        "lo": lo,
        "hi": hi,
        "constraints": list(constraint or ()),
    }
    budget = search.Budget(settings.sync_time_limit_s)

    def compute() -> tuple[bytes, bytes]:
        row = crud.get_library(session, library_id=library_id)
        return search.frontier_json(settings, session, row, query, view=view, budget=budget)

    try:
        raw, compressed = await bounded(request, budget, compute)
    except search.ClientGone:
        return Response(status_code=499)  # nobody is listening
    if "gzip" in request.headers.get("accept-encoding", ""):
        return Response(
            compressed, media_type="application/json", headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
        )
    return Response(raw, media_type="application/json", headers={"Vary": "Accept-Encoding"})


@router.post("/{library_id}/solve", response_model=SolutionPublic)
async def solve_library(
    library_id: LibraryIdPath, body: SolveRequest, request: Request, session: SessionDep, settings: SettingsDep
) -> SolutionPublic | Response:
    """Best architecture under ad-hoc constraints, solved now (422 with the binding constraint if infeasible;
    an expensive read: see docs/access.md). Each solver run is limited to ``PUZZLE_SYNC_TIME_LIMIT_S``."""
    budget = search.Budget(settings.sync_time_limit_s)

    def compute() -> SolutionPublic:
        return search.solve_now(settings, crud.get_library(session, library_id=library_id), body, budget)

    try:
        return await bounded(request, budget, compute)
    except search.ClientGone:
        return Response(status_code=499)


async def bounded(request: Request, budget: search.Budget, work: Callable[[], T]) -> T:
    """``work()`` in a worker thread while this watches the client: when it goes away, ``budget`` tells the
    work to stop at its next check (``ClientGone``)."""

    done = anyio.Event()

    async def watch() -> None:
        while not done.is_set():
            if await request.is_disconnected():
                budget.gone.set()
                return
            await anyio.sleep(0.2)

    error: Exception | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        try:
            value = await to_thread.run_sync(work)
        except Exception as exc:  # raised after the group: a group would wrap it in an ExceptionGroup
            error = exc
        done.set()
        group.cancel_scope.cancel()
    if error is not None:
        raise error
    return value
