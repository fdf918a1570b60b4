"""The service's glue around ``puzzle.search``: requests validated once (and remembered), the DB-backed frontier
cache, and the architecture archive a finished search job serves. No search logic lives here: requests are
``puzzle.search.SearchRequest``s run by ``puzzle.search.run_search``; views come from ``puzzle.search.views``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
from cachetools import LRUCache
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from puzzle.library import BlockLibrary
from puzzle.search import RequestError, SearchRequest, run_search
from puzzle.search.views import architecture_view, axis_key, frontier_points
from service import libraries
from service.errors import InfeasibleInputError, InvalidInputError
from service.models import FrontierCache, Library
from service.schemas import ArchitecturePublic, PointPublic, SolutionPublic, SolveRequest
from service.settings import Settings

_LOCK = threading.Lock()  # guards the in-process caches below
# validated requests per (library, body): values keep their library alive, so its id() is never reused meanwhile
_VALIDATED: LRUCache[tuple[int, str, str], tuple[BlockLibrary, SearchRequest | InvalidInputError]] = LRUCache(4096)
# frontier bodies (JSON, gzip) per query hash, bounded by their size in bytes
_FRONTIERS: LRUCache[str, tuple[bytes, bytes]] = LRUCache(
    256 * 1024 * 1024, getsizeof=lambda entry: len(entry[0]) + len(entry[1])
)
FRONTIER_CHUNK = 2000  # points built between two budget checks
_FRONTIER_LOCKS: dict[str, threading.Lock] = {}  # one computation per query hash, however many clients ask


def load_library(settings: Settings, row: Library) -> BlockLibrary:
    return libraries.load(settings.artifacts, row.path, row.digest)


def search_request(library: BlockLibrary, data: Mapping[str, Any], *, where: list[str | int]) -> SearchRequest:
    """``data`` (a validated body) as puzzle's request, checked against ``library``: every problem at once
    (InvalidInputError at ``where + loc``), then the constraints' feasibility (InfeasibleInputError with the
    binding constraint): the same checks for a job submission and a synchronous solve or frontier. Outcomes
    are remembered since building a 70B problem costs ~15 ms."""
    key = (id(library), json.dumps(where), json.dumps(dict(data), sort_keys=True, default=str))
    with _LOCK:
        hit = _VALIDATED.get(key)
    if hit is None:
        outcome: SearchRequest | InvalidInputError
        try:
            outcome = SearchRequest.from_dict(data, library=library)
            found = outcome.infeasibility(library)
            if found is not None:
                loc, error = found
                outcome = InfeasibleInputError(
                    [*where, *loc], str(error), constraint=error.constraint, minimum=error.minimum
                )
        except RequestError as exc:
            outcome = InvalidInputError([([*where, *loc], msg) for loc, msg in exc.problems])
        hit = (library, outcome)
        with _LOCK:
            _VALIDATED[key] = hit
    if isinstance(hit[1], InvalidInputError):
        raise hit[1]
    return hit[1]


def solve_now(settings: Settings, row: Library, body: SolveRequest, budget: Budget) -> SolutionPublic:
    """A solve now, on a library within the size limit, each solver run within the synchronous time limit."""
    check_size(settings, row)
    library = load_library(settings, row)
    data = {**body.model_dump(mode="json"), "time_limit": budget.seconds}
    request = search_request(library, data, where=["body"])
    budget.check()
    result = run_search(library, request, check=budget.check)
    library_id = row.id
    return SolutionPublic(
        library_id=library_id,
        objective_name=request.objective,
        point=PointPublic(**result.points[0].to_dict()),
        solver=result.solutions[0].solver,
    )


def architecture(
    library: BlockLibrary, result: dict[str, Any], *, point: int, library_id: int, job_id: int | None
) -> ArchitecturePublic:
    """Per-layer view of point ``point`` of a stored search result."""
    points = result.get("points") or []
    if not 0 <= point < len(points):
        raise InvalidInputError([(["query", "point"], f"point {point} out of range: this result has {len(points)}")])
    view = architecture_view(library, points[point])
    return ArchitecturePublic(
        library_id=library_id, job_id=job_id, point=point, objective_name=result["objective_name"], **view
    )


def export_archive(arch: ArchitecturePublic, result: dict[str, Any], *, point: int) -> bytes:
    """tar.gz of the architecture JSON, its ``block_configs`` and the search that chose it (no weights yet)."""
    search_info = {k: v for k, v in result.items() if k != "points"}
    files = {
        "architecture.json": arch.model_dump(mode="json"),
        "block_configs.json": arch.block_configs,
        "solution.json": {**search_info, "point": point, **(result.get("points") or [{}])[point]},
        "README.txt": "Architecture chosen by a Puzzle search. Weights are not included: a pipeline job exports its "
        "points as Hugging Face directories (config.json with block_configs, safetensors, tokenizer, "
        "puzzle_manifest.json), served by the same endpoint.\n",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else json.dumps(content, indent=1).encode()
            info = tarfile.TarInfo(f"puzzle-architecture/{name}")
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class ClientGone(Exception):
    """The client of a synchronous search went away: the work stops at the next check."""


class Budget:
    """What a synchronous search may spend: ``seconds`` of wall time, until its client goes away."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.gone = threading.Event()

    def check(self) -> None:
        if self.gone.is_set():
            raise ClientGone()
        if time.monotonic() > self.deadline:
            raise InvalidInputError(
                [
                    (
                        ["query"],
                        f"this search runs longer than the synchronous limit of {self.seconds:g} s "
                        "(PUZZLE_SYNC_TIME_LIMIT_S); submit it as a search job (POST /api/v1/jobs)",
                    )
                ]
            )


def check_size(settings: Settings, row: Library) -> None:
    """Synchronous searches run on libraries up to the configured size (InvalidInputError at the path's id)."""
    if row.n_layers > settings.max_search_layers or row.n_variants > settings.max_search_variants:
        raise InvalidInputError(
            [
                (
                    ["path", "library_id"],
                    f"library {row.id} has {row.n_layers} layers and {row.n_variants} variants; synchronous "
                    f"frontier and solve take at most {settings.max_search_layers} layers and "
                    f"{settings.max_search_variants} variants (PUZZLE_MAX_SEARCH_LAYERS / _VARIANTS): "
                    "submit a search job (POST /api/v1/jobs) instead",
                )
            ]
        )


def _key(row: Library, view: str, query: dict[str, Any]) -> str:
    text = json.dumps({"digest": row.digest, "view": view, **query}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _remember(key: str, body: bytes) -> tuple[bytes, bytes]:
    entry = (body, gzip.compress(body, compresslevel=6))
    with _LOCK:
        if len(body) * 2 < _FRONTIERS.maxsize:
            _FRONTIERS[key] = entry
    return entry


def frontier_json(
    settings: Settings, session: Session, row: Library, query: dict[str, Any], *, view: str, budget: Budget
) -> tuple[bytes, bytes]:
    """The frontier response body (``FrontierPublic``; ``view`` points: one object per point; columns: parallel
    arrays of axis value, objective and summary, what a plot needs, ~5x smaller) as (JSON, gzip of it).

    The request is validated first (nothing is cached for an invalid one). The whole frontier (no ``lo`` /
    ``hi``) is computed once per (library digest, query) and kept in this process's memory (LRU, bounded in
    bytes) and in the ``frontier_cache`` table (``PUZZLE_FRONTIER_CACHE_ROWS`` rows, oldest evicted); a
    ``lo`` / ``hi`` window is cut from it, never stored as a row of its own. ``query``: objective, axis,
    scenario, lo, hi, constraints."""
    check_size(settings, row)
    library = load_library(settings, row)
    request = search_request(library, {**query, "mode": "frontier"}, where=["query"])
    key = _key(row, view, query)
    with _LOCK:
        hit = _FRONTIERS.get(key)
    if hit is not None:
        return hit
    whole_key = _key(row, view, {**query, "lo": None, "hi": None})
    with _LOCK:
        lock = _FRONTIER_LOCKS.setdefault(whole_key, threading.Lock())
    try:
        return _frontier_locked(settings, session, row, library, request, query, view, budget, lock)
    finally:
        with _LOCK:
            _FRONTIER_LOCKS.pop(whole_key, None)


def _frontier_locked(
    settings: Settings,
    session: Session,
    row: Library,
    library: BlockLibrary,
    request: SearchRequest,
    query: dict[str, Any],
    view: str,
    budget: Budget,
    lock: threading.Lock,
) -> tuple[bytes, bytes]:
    """``frontier_json`` past the first cache look-up: one computation per whole frontier at a time."""
    key, whole = _key(row, view, query), {**query, "lo": None, "hi": None}
    whole_key = _key(row, view, whole)
    with lock:
        with _LOCK:
            hit = _FRONTIERS.get(key)
            whole_hit = _FRONTIERS.get(whole_key)
        if hit is not None:
            return hit
        if whole_hit is not None:
            payload = json.loads(whole_hit[0])
        else:
            cached = session.get(FrontierCache, (row.id, whole_key))
            payload = json.loads(cached.result) if cached is not None else None
        if payload is None:
            payload, complete = _compute_frontier(settings, library, row, request, query, view=view, budget=budget)
            if complete:
                _store(settings, session, row, whole_key, payload)
        elif whole_hit is None:
            _remember(whole_key, json.dumps(payload, separators=(",", ":")).encode())
        budget.check()
        body = json.dumps(_window(library, request, payload, view), separators=(",", ":")).encode()
    return _remember(key, body)


def _window(library: BlockLibrary, request: SearchRequest, payload: dict[str, Any], view: str) -> dict[str, Any]:
    """``payload`` with only the points whose axis value is within the request's ``lo`` / ``hi``."""
    lo, hi = request.lo, request.hi
    if lo is None and hi is None:
        return payload

    def inside(value: float) -> bool:
        return (lo is None or value >= lo) and (hi is None or value <= hi)

    if view == "columns":
        keep = [i for i, v in enumerate(payload["axis_values"]) if inside(v)]
        columns = {k: [payload[k][i] for i in keep] for k in ("axis_values", "objectives", "summaries")}
        return {**payload, **columns}
    column = axis_key(library, request.axis or "", request.scenario)
    return {**payload, "points": [p for p in payload["points"] if inside(p["costs"][column])]}


def _compute_frontier(
    settings: Settings,
    library: BlockLibrary,
    row: Library,
    request: SearchRequest,
    query: dict[str, Any],
    *,
    view: str,
    budget: Budget,
) -> tuple[dict[str, Any], bool]:
    """The frontier's payload: the whole frontier when it is within ``PUZZLE_MAX_FRONTIER_CELLS`` (True), else
    only the request's window (False), else InvalidInputError asking for a narrower window."""
    budget.check()
    result = run_search(library, replace(request, lo=None, hi=None), points=False, check=budget.check)
    front = result.frontier
    assert front is not None
    budget.check()
    axis_values = np.asarray(front.axis_values, dtype=float)
    choices = np.asarray(front.choices, dtype=np.int64).reshape(-1, library.n_layers)
    objectives = np.asarray(front.objectives, dtype=float)
    keep = np.ones(len(axis_values), dtype=bool)
    complete = len(axis_values) * library.n_layers <= settings.max_frontier_cells
    if not complete:
        if request.lo is not None:
            keep &= axis_values >= request.lo
        if request.hi is not None:
            keep &= axis_values <= request.hi
        if int(keep.sum()) * library.n_layers > settings.max_frontier_cells:
            raise InvalidInputError(
                [
                    (
                        ["query", "lo"],
                        f"this frontier has {int(keep.sum())} points of {library.n_layers} layers in the window "
                        f"asked, over the answer limit of {settings.max_frontier_cells} point-layers "
                        "(PUZZLE_MAX_FRONTIER_CELLS); narrow it with lo / hi, or submit a frontier search job",
                    )
                ]
            )
    points = []
    idx = np.flatnonzero(keep)
    for start in range(0, len(idx), FRONTIER_CHUNK):
        part = idx[start : start + FRONTIER_CHUNK]
        points += frontier_points(
            library,
            choices[part],
            objectives[part],
            axis_values[part],
            axis=request.axis or "",
            scenario=result.scenario,
        )
        budget.check()
    payload: dict[str, Any] = {
        "library_id": row.id,
        "objective_name": request.objective,
        "axis": request.axis,
        "scenario": result.scenario,
        "constraints": list(query.get("constraints") or ()),
    }
    if view == "columns":
        column = axis_key(library, request.axis or "", request.scenario)
        payload["axis_values"] = [p.costs[column] for p in points]
        payload["objectives"] = [p.objective for p in points]
        payload["summaries"] = [p.summary for p in points]
    else:
        payload["points"] = [p.to_dict() for p in points]
    return payload, complete


def _store(settings: Settings, session: Session, row: Library, key: str, payload: dict[str, Any]) -> None:
    """One ``frontier_cache`` row, then the oldest rows beyond ``PUZZLE_FRONTIER_CACHE_ROWS`` evicted."""
    text = json.dumps(payload, separators=(",", ":"))
    _remember(key, text.encode())
    session.add(FrontierCache(library_id=row.id, query_hash=key, result=text))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        return
    keep = (
        select(FrontierCache.query_hash).order_by(FrontierCache.created_at.desc()).limit(settings.frontier_cache_rows)
    )
    session.execute(delete(FrontierCache).where(FrontierCache.query_hash.not_in(keep.scalar_subquery())))
    session.commit()
