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
from typing import Any

from cachetools import LRUCache
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from puzzle.library import BlockLibrary
from puzzle.search import RequestError, SearchRequest, run_search
from puzzle.search.views import architecture_view, axis_key
from service import libraries
from service.errors import InvalidInputError
from service.models import FrontierCache, Library
from service.schemas import ArchitecturePublic, PointPublic, SolutionPublic, SolveRequest
from service.settings import Settings

_LOCK = threading.Lock()  # guards the in-process caches below
# validated requests per (library, body): values keep their library alive, so its id() is never reused meanwhile
_VALIDATED: LRUCache[tuple[int, str, str], tuple[BlockLibrary, SearchRequest | RequestError]] = LRUCache(4096)
_FRONTIERS: LRUCache[str, tuple[bytes, bytes]] = LRUCache(32)  # frontier bodies (JSON, gzip) per query hash
_FRONTIER_LOCKS: dict[str, threading.Lock] = {}  # one computation per query hash, however many clients ask


def load_library(settings: Settings, row: Library) -> BlockLibrary:
    return libraries.load(settings.artifacts, row.path, row.digest)


def search_request(library: BlockLibrary, data: Mapping[str, Any], *, where: list[str | int]) -> SearchRequest:
    """``data`` (a validated body) as puzzle's request, checked against ``library``: every problem at once
    (InvalidInputError at ``where + loc``). Outcomes are remembered since building a 70B problem costs ~15 ms."""
    key = (id(library), json.dumps(where), json.dumps(dict(data), sort_keys=True, default=str))
    with _LOCK:
        hit = _VALIDATED.get(key)
    if hit is None:
        try:
            outcome: SearchRequest | RequestError = SearchRequest.from_dict(data, library=library)
        except RequestError as exc:
            outcome = exc
        hit = (library, outcome)
        with _LOCK:
            _VALIDATED[key] = hit
    if isinstance(hit[1], RequestError):
        raise InvalidInputError([([*where, *loc], msg) for loc, msg in hit[1].problems])
    return hit[1]


def solve_now(library: BlockLibrary, body: SolveRequest, *, library_id: int) -> SolutionPublic:
    request = search_request(library, body.model_dump(mode="json"), where=["body"])
    result = run_search(library, request)
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


def frontier_json(
    settings: Settings, session: Session, row: Library, query: dict[str, Any], *, view: str = "points"
) -> tuple[bytes, bytes]:
    """The frontier response body (``FrontierPublic``; ``view`` points: one object per point; columns: parallel
    arrays of axis value, objective and summary, what a plot needs, ~5x smaller) as (JSON, gzip of it), computed
    once per (library digest, query): in-process LRU, then the ``frontier_cache`` table (shared by every API
    process), then the search. A 20k-point frontier is megabytes of JSON: the pre-compressed copy costs no CPU
    per request. ``query``: objective, axis, scenario, lo, hi, constraints."""
    key = hashlib.sha256(json.dumps({"digest": row.digest, "view": view, **query}, sort_keys=True).encode()).hexdigest()
    with _LOCK:
        if key in _FRONTIERS:
            return _FRONTIERS[key]
        lock = _FRONTIER_LOCKS.setdefault(key, threading.Lock())
    with lock:
        with _LOCK:
            if key in _FRONTIERS:
                return _FRONTIERS[key]
        cached = session.get(FrontierCache, (row.id, key))
        if cached is not None:
            body = cached.result.encode()
        else:
            body = _compute_frontier(settings, session, row, query, key=key, view=view)
        entry = (body, gzip.compress(body, compresslevel=6))
        with _LOCK:
            _FRONTIERS[key] = entry
            _FRONTIER_LOCKS.pop(key, None)
    return entry


def _compute_frontier(
    settings: Settings, session: Session, row: Library, query: dict[str, Any], *, key: str, view: str
) -> bytes:
    library = load_library(settings, row)
    request = search_request(library, {**query, "mode": "frontier"}, where=["query"])
    result = run_search(library, request)
    payload: dict[str, Any] = {
        "library_id": row.id,
        "objective_name": request.objective,
        "axis": request.axis,
        "scenario": result.scenario,
        "constraints": list(query.get("constraints") or ()),
    }
    if view == "columns":
        column = axis_key(library, request.axis or "", request.scenario)
        payload["axis_values"] = [p.costs[column] for p in result.points]
        payload["objectives"] = [p.objective for p in result.points]
        payload["summaries"] = [p.summary for p in result.points]
    else:
        payload["points"] = [p.to_dict() for p in result.points]
    text = json.dumps(payload, separators=(",", ":"))
    session.add(FrontierCache(library_id=row.id, query_hash=key, result=text))
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
    return text.encode()
