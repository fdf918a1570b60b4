"""Block libraries: upload (ours or NVlabs), list, get; synchronous frontier and solve over a stored one."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request, Response

from service import crud, libraries, search
from service.api.deps import LibraryIdPath, SessionDep, SettingsDep, WriteAccess
from service.artifacts import inside
from service.errors import ConflictError
from service.schemas import FrontierPublic, LibrariesPublic, LibraryCreate, LibraryPublic, SolutionPublic, SolveRequest

router = APIRouter(prefix="/libraries", tags=["libraries"])


@router.post(
    "",
    status_code=201,
    dependencies=[WriteAccess],
    response_model=LibraryPublic,
    responses={200: {"description": "the same library was already stored under this name"}},
)
def upload_library(
    body: LibraryCreate, session: SessionDep, settings: SettingsDep, request: Request, response: Response
) -> LibraryPublic:
    """Store a block library (``format`` puzzle or nvlabs). Its name is a label, never a path."""
    library = libraries.parse_upload(body.format, body.data, scratch=inside(settings.artifacts, "tmp"))
    digest = library.digest()
    existing = crud.get_library_by_name(session, name=body.name)
    if existing is not None:
        if existing.digest != digest:
            raise ConflictError(f"a library named {body.name!r} already exists with other content; choose another name")
        response.status_code = 200
        response.headers["Location"] = str(request.url_for("get_library", library_id=existing.id).path)
        return LibraryPublic.model_validate(existing)
    path = libraries.store(settings.artifacts, library)
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
def get_frontier(
    library_id: LibraryIdPath,
    request: Request,
    session: SessionDep,
    settings: SettingsDep,
    axis: Annotated[str, Query(min_length=1, max_length=200, description="cost to sweep, e.g. runtime_ms")],
    objective: Annotated[str, Query(min_length=1, max_length=200)] = "kl_div",
    scenario: Annotated[str | None, Query(min_length=1, max_length=200)] = None,
    lo: Annotated[float | None, Query(description="smallest axis value to include")] = None,
    hi: Annotated[float | None, Query(description="largest axis value to include")] = None,
    view: Annotated[
        Literal["points", "columns"], Query(description="points: objects with costs and choices; columns: plot arrays")
    ] = "points",
    constraint: Annotated[
        list[str] | None, Query(max_length=32, description="extra bounds, e.g. num_params<=60%")
    ] = None,
) -> Response:
    """The Pareto frontier of objective vs ``axis`` (cached per library and query)."""
    row = crud.get_library(session, library_id=library_id)
    query = {
        "objective": objective,
        "axis": axis,
        "scenario": scenario,
        "lo": lo,
        "hi": hi,
        "constraints": list(constraint or ()),
    }
    raw, compressed = search.frontier_json(settings, session, row, query, view=view)
    if "gzip" in request.headers.get("accept-encoding", ""):
        return Response(
            compressed, media_type="application/json", headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"}
        )
    return Response(raw, media_type="application/json", headers={"Vary": "Accept-Encoding"})


@router.post("/{library_id}/solve", response_model=SolutionPublic)
def solve_library(
    library_id: LibraryIdPath, body: SolveRequest, session: SessionDep, settings: SettingsDep
) -> SolutionPublic:
    """Best architecture under ad-hoc constraints, solved now (422 with the binding constraint if infeasible)."""
    row = crud.get_library(session, library_id=library_id)
    library = search.load_library(settings, row)
    return search.solve_now(library, body, library_id=row.id)
