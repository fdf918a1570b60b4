"""The service's bridge to ``puzzle.search``: validate search requests against a library, run them, and turn
their solutions into the API's shapes (points, per-layer views, export archives).

A *point* is one architecture: ``{"objective", "costs", "choices", "summary"}`` where ``choices[i]`` is the
index of the variant chosen for layer i and ``costs`` are whole-model totals. Every search result stored on a
job is ``{"mode", "objective_name", "axis", "scenario", "constraints", "points": [...], "search": {...}}``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from puzzle.arch import to_block_configs
from puzzle.errors import ConfigError
from puzzle.library import BlockLibrary, Variant
from service import libraries
from service.errors import InvalidInputError, NotAvailableError
from service.models import FrontierCache, Library
from service.schemas import ArchitecturePublic, LayerView, PointPublic, SearchParams, SolutionPublic, SolveRequest
from service.settings import Settings

FRONTIER_RESPONSE: dict[str, Any] = {
    "description": "Pareto frontier: points sorted by the axis, each {objective, costs, choices, summary}",
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "library_id": {"type": "integer"},
                    "objective_name": {"type": "string"},
                    "axis": {"type": "string"},
                    "scenario": {"type": ["string", "null"]},
                    "points": {"type": "array", "items": {"type": "object"}},
                },
            }
        }
    },
}

_FRONTIERS_LOCK = threading.Lock()  # guards the in-process caches below

ProgressFn = Callable[[str, int, int], None]
StopFn = Callable[[], None]


def invalid(loc: str, msg: str) -> InvalidInputError:
    return InvalidInputError([(["body", loc], msg)])


def load_library(settings: Settings, row: Library) -> BlockLibrary:
    return libraries.load(settings.artifacts, row.path, row.digest)


# --- validation -----------------------------------------------------------------------------------------


# values keep their library alive, so the id() in the key can never be reused by another library
_VALIDATED: OrderedDict[tuple[Any, ...], tuple[BlockLibrary, list[tuple[list[str | int], str]]]] = OrderedDict()
_VALIDATED_SIZE = 4096


def validate_params(library: BlockLibrary, params: SearchParams | SolveRequest, *, where: str = "body") -> None:
    """Every problem of a search request against ``library`` at once (InvalidInputError), before queueing.

    Outcomes are remembered per (library, request) since building a 70B problem costs ~15 ms."""
    key = (
        id(library),
        where,
        params.objective,
        getattr(params, "scenario", None),
        getattr(params, "axis", None),
        tuple(params.constraints),
    )
    with _FRONTIERS_LOCK:
        hit = _VALIDATED.get(key)
    if hit is not None:
        problems = hit[1]
    else:
        problems = _problems(library, params, where=where)
        with _FRONTIERS_LOCK:
            _VALIDATED[key] = (library, problems)
            while len(_VALIDATED) > _VALIDATED_SIZE:
                _VALIDATED.popitem(last=False)
    if problems:
        raise InvalidInputError(problems)


def _problems(
    library: BlockLibrary, params: SearchParams | SolveRequest, *, where: str
) -> list[tuple[list[str | int], str]]:
    """The search engine's own parser resolves the objective and each constraint separately."""
    from puzzle.search.problem import build_problem

    problems: list[tuple[list[str | int], str]] = []
    scenario = getattr(params, "scenario", None)
    try:
        library.resolve_scenario(scenario)
    except ConfigError as exc:
        problems.append(([where, "scenario"], str(exc)))
        scenario = None
    objective = params.objective
    try:
        build_problem(library, objective, (), scenario=scenario)
    except ConfigError as exc:
        problems.append(([where, "objective"], str(exc)))
        objective = library.metric_keys[0]
    axis = getattr(params, "axis", None)
    if axis:
        try:
            library.resolve_cost_key(axis, scenario)
        except ConfigError as exc:
            problems.append(([where, "axis"], str(exc)))
    for i, text in enumerate(params.constraints):
        try:
            build_problem(library, objective, (text,), scenario=scenario)
        except ConfigError as exc:
            problems.append(([where, "constraints", i], str(exc)))
    return problems


# --- points and views -----------------------------------------------------------------------------------


def _attention(v: Variant) -> dict[str, Any] | None:
    if v.spec is None:
        return None
    a = v.spec.attention
    if a.kind == "gqa":
        return {"kind": "gqa", "n_heads": a.n_heads, "n_kv_heads": a.n_kv_heads, "head_dim": a.head_dim}
    return {"kind": a.kind}


def _ffn(v: Variant, parent: Variant) -> dict[str, Any] | None:
    if v.spec is None:
        return None
    f = v.spec.ffn
    if f.kind == "mlp":
        out: dict[str, Any] = {"kind": "mlp", "intermediate_size": f.intermediate_size, "activation": f.activation}
        if parent.spec is not None and parent.spec.ffn.kind == "mlp" and parent.spec.ffn.intermediate_size:
            out["percent_of_parent"] = round(100.0 * f.intermediate_size / parent.spec.ffn.intermediate_size, 1)
        return out
    return {"kind": f.kind}


def _mamba(v: Variant) -> dict[str, Any] | None:
    if v.spec is None or v.spec.mamba.kind == "no_op":
        return None
    m = v.spec.mamba
    return {"kind": "mamba", "n_heads": m.n_heads, "head_dim": m.head_dim, "n_groups": m.n_groups}


def summarise(library: BlockLibrary, choices: Sequence[int]) -> str:
    """One line: how many layers keep attention (and KV heads), FFN width, what was removed."""
    kv: Counter[int] = Counter()
    linear_att = no_att = ffn_removed = ffn_linear = 0
    ffn_pct: list[float] = []
    for layer, j in zip(library.layers, choices, strict=True):
        v = layer.variants[j]
        att, ffn = _attention(v), _ffn(v, layer.parent)
        if att is None or ffn is None:
            return f"{sum(1 for lay, j in zip(library.layers, choices, strict=True) if lay.variants[j].is_parent)}/{library.n_layers} parent layers"
        if att["kind"] == "gqa":
            kv[att["n_kv_heads"]] += 1
        elif att["kind"] == "linear":
            linear_att += 1
        else:
            no_att += 1
        if ffn["kind"] == "mlp":
            ffn_pct.append(ffn.get("percent_of_parent", 100.0))
        elif ffn["kind"] == "linear":
            ffn_linear += 1
        else:
            ffn_removed += 1
    n = library.n_layers
    heads = ", ".join(f"{k}kv x{c}" for k, c in sorted(kv.items(), reverse=True))
    parts = [f"attention {sum(kv.values())}/{n}" + (f" ({heads})" if heads else "")]
    if linear_att:
        parts.append(f"{linear_att} linear attn")
    if no_att:
        parts.append(f"{no_att} no attn")
    mean = sum(ffn_pct) / len(ffn_pct) if ffn_pct else 0.0
    parts.append(f"ffn {len(ffn_pct)}/{n} at {mean:.0f}% mean width")
    if ffn_linear:
        parts.append(f"{ffn_linear} linear ffn")
    if ffn_removed:
        parts.append(f"{ffn_removed} no ffn")
    return "; ".join(parts)


def point_from_solution(library: BlockLibrary, solution: dict[str, Any]) -> dict[str, Any]:
    choices = [int(j) for j in solution["choices"]]
    return {
        "objective": float(solution["objective"]),
        "costs": {k: float(v) for k, v in solution["totals"].items()},
        "choices": choices,
        "summary": summarise(library, choices),
    }


def architecture(
    library: BlockLibrary, result: dict[str, Any], *, point: int, library_id: int, job_id: int | None
) -> ArchitecturePublic:
    points = result.get("points") or []
    if not 0 <= point < len(points):
        raise InvalidInputError([(["query", "point"], f"point {point} out of range: this result has {len(points)}")])
    return view(
        library,
        points[point],
        objective_name=result["objective_name"],
        library_id=library_id,
        job_id=job_id,
        point=point,
    )


def view(
    library: BlockLibrary,
    p: dict[str, Any],
    *,
    objective_name: str,
    library_id: int,
    job_id: int | None = None,
    point: int | None = None,
) -> ArchitecturePublic:
    choices = p["choices"]
    if len(choices) != library.n_layers:
        raise ConfigError(f"an architecture of this library needs {library.n_layers} choices, got {len(choices)}")
    layers = []
    blocks = []
    for layer, j in zip(library.layers, choices, strict=True):
        if not 0 <= j < len(layer.variants):
            raise ConfigError(f"layer {layer.index}: variant index {j} out of range 0..{len(layer.variants) - 1}")
        v = layer.variants[j]
        layers.append(
            LayerView(
                index=layer.index,
                variant=v.name,
                is_parent=v.is_parent,
                attention=_attention(v),
                ffn=_ffn(v, layer.parent),
                mamba=_mamba(v),
                costs=v.flat_costs(),
                metrics=dict(v.metrics),
            )
        )
        blocks.append(v.spec)
    block_configs = None
    if library.hidden_size and all(b is not None for b in blocks):
        # to_block_configs reads only .blocks and .hidden_size: the library has no vocabulary to build an ArchSpec.
        shape = type("_Blocks", (), {"blocks": tuple(blocks), "hidden_size": library.hidden_size})()
        block_configs = to_block_configs(cast(Any, shape))
    return ArchitecturePublic(
        library_id=library_id,
        job_id=job_id,
        point=point,
        objective_name=objective_name,
        objective=p["objective"],
        costs=p["costs"],
        summary=p.get("summary") or summarise(library, choices),
        layers=layers,
        block_configs=block_configs,
    )


def export_archive(arch: ArchitecturePublic, result: dict[str, Any], *, point: int) -> bytes:
    """tar.gz of the architecture JSON, its ``block_configs`` and the search that chose it (no weights yet)."""
    search_info = {k: v for k, v in result.items() if k != "points"}
    files = {
        "architecture.json": arch.model_dump(mode="json"),
        "block_configs.json": arch.block_configs,
        "solution.json": {**search_info, "point": point, **(result.get("points") or [{}])[point]},
        "README.txt": "Architecture chosen by a Puzzle search. Weights are not included: the Hugging Face export "
        "(config.json with block_configs, safetensors, tokenizer, puzzle_manifest.json) comes with the export "
        "stage of the pipeline.\n",
    }
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, content in files.items():
            data = content.encode() if isinstance(content, str) else json.dumps(content, indent=1).encode()
            info = tarfile.TarInfo(f"puzzle-architecture/{name}")
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --- running searches -----------------------------------------------------------------------------------


@contextmanager
def _available(what: str) -> Iterator[None]:
    """A part of the search engine missing from this installation is a clear 422, not a crash."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("puzzle.search"):
            raise
        raise NotAvailableError(
            f"{what} search is not available in this installation ({exc.name} is missing)", loc=("body", "mode")
        ) from exc


def _no_progress(_stage: str, _done: int, _total: int) -> None:
    return None


def _no_stop() -> None:
    return None


def run_search(
    library: BlockLibrary,
    params: dict[str, Any],
    *,
    progress: ProgressFn = _no_progress,
    check_stop: StopFn = _no_stop,
) -> dict[str, Any]:
    """Run a search job's params (``SearchParams`` as a dict) and return the stored result shape."""
    from puzzle import search

    mode, objective = params["mode"], params["objective"]
    constraints = tuple(params.get("constraints") or ())
    scenario = params.get("scenario")
    started = time.perf_counter()
    base = {
        "mode": mode,
        "objective_name": objective,
        "axis": params.get("axis"),
        "scenario": library.resolve_scenario(scenario),
        "constraints": list(constraints),
    }
    if mode == "solve":
        progress("solve", 0, 1)
        solution = search.solve(library, objective, constraints, scenario=scenario, solver=params.get("solver"))
        progress("solve", 1, 1)
        sols = [solution.to_dict()]
        points = [point_from_solution(library, s) for s in sols]
        return {
            **base,
            "points": points,
            "search": {"solver": sols[0].get("solver"), "seconds": time.perf_counter() - started},
        }
    if mode == "diverse":
        n = int(params.get("n", 5))
        progress("diverse", 0, n)
        with _available("diverse"):
            solutions = search.diverse(
                library,
                objective,
                constraints,
                n,
                int(params.get("d", 1)),
                scenario=scenario,
                solver=params.get("solver"),
            )
        progress("diverse", n, n)
        points = [point_from_solution(library, s.to_dict()) for s in solutions]
        return {**base, "points": points, "search": {"seconds": time.perf_counter() - started}}
    points = frontier_points(
        library,
        objective=objective,
        axis=params["axis"],
        scenario=scenario,
        constraints=constraints,
        lo=params.get("lo"),
        hi=params.get("hi"),
        progress=progress,
        check_stop=check_stop,
    )
    return {**base, "points": points, "search": {"seconds": time.perf_counter() - started}}


def frontier_points(
    library: BlockLibrary,
    *,
    objective: str,
    axis: str,
    scenario: str | None,
    constraints: tuple[str, ...],
    lo: float | None,
    hi: float | None,
    progress: ProgressFn = _no_progress,
    check_stop: StopFn = _no_stop,
) -> list[dict[str, Any]]:
    from puzzle import search

    progress("frontier", 0, 1)
    with _available("frontier"):
        front = search.frontier(library, objective, axis, constraints, scenario=scenario)
    check_stop()
    raw = front.to_dict()["points"]
    points = []
    for i, s in enumerate(raw):
        p = point_from_solution(library, s)
        value = p["costs"].get(axis)
        if (lo is not None and value is not None and value < lo) or (
            hi is not None and value is not None and value > hi
        ):
            continue
        points.append(p)
        if i % 2000 == 1999:
            check_stop()
    progress("frontier", 1, 1)
    return points


def solve_now(library: BlockLibrary, body: SolveRequest, *, library_id: int) -> SolutionPublic:
    from puzzle import search

    validate_params(library, body)
    solution = search.solve(
        library, body.objective, tuple(body.constraints), scenario=body.scenario, solver=body.solver
    ).to_dict()
    return SolutionPublic(
        library_id=library_id,
        objective_name=body.objective,
        point=PointPublic(**point_from_solution(library, solution)),
        solver=solution.get("solver"),
    )


# --- frontier cache -------------------------------------------------------------------------------------

_FRONTIERS: OrderedDict[str, tuple[bytes, bytes]] = OrderedDict()
_FRONTIER_LOCKS: dict[str, threading.Lock] = {}
_FRONTIER_CACHE_SIZE = 32


def frontier_json(
    settings: Settings,
    session: Session,
    row: Library,
    *,
    objective: str,
    axis: str,
    scenario: str | None,
    lo: float | None,
    hi: float | None,
    constraints: tuple[str, ...],
) -> tuple[bytes, bytes]:
    """The frontier response body as (JSON, gzip of it), computed once per (library digest, query): in-process
    LRU, then the ``frontier_cache`` table (shared by every API process), then ``puzzle.search.frontier``.
    A 20k-point frontier is megabytes of JSON: serving the pre-compressed copy costs no CPU per request."""
    query = {
        "objective": objective,
        "axis": axis,
        "scenario": scenario,
        "lo": lo,
        "hi": hi,
        "constraints": list(constraints),
    }
    key = hashlib.sha256(json.dumps({"digest": row.digest, **query}, sort_keys=True).encode()).hexdigest()
    with _FRONTIERS_LOCK:
        if key in _FRONTIERS:
            _FRONTIERS.move_to_end(key)
            return _FRONTIERS[key]
        lock = _FRONTIER_LOCKS.setdefault(key, threading.Lock())
    with lock:  # one computation per key, however many clients ask at once
        with _FRONTIERS_LOCK:
            if key in _FRONTIERS:
                return _FRONTIERS[key]
        cached = session.get(FrontierCache, (row.id, key))
        if cached is not None:
            body = cached.result.encode()
        else:
            library = load_library(settings, row)
            if lo is not None and hi is not None and lo > hi:
                raise InvalidInputError([(["query", "lo"], f"lo ({lo}) must not exceed hi ({hi})")])
            params = SearchParams(
                mode="frontier",
                objective=objective,
                axis=axis,
                scenario=scenario,
                lo=lo,
                hi=hi,
                constraints=list(constraints),
            )
            validate_params(library, params, where="query")
            points = frontier_points(
                library, objective=objective, axis=axis, scenario=scenario, constraints=constraints, lo=lo, hi=hi
            )
            payload = {
                "library_id": row.id,
                "objective_name": objective,
                "axis": axis,
                "scenario": library.resolve_scenario(scenario),
                "constraints": list(constraints),
                "points": points,
            }
            text = json.dumps(payload, separators=(",", ":"))
            session.add(FrontierCache(library_id=row.id, query_hash=key, result=text))
            try:
                session.commit()
            except IntegrityError:
                session.rollback()
            body = text.encode()
        entry = (body, gzip.compress(body, compresslevel=6))
        with _FRONTIERS_LOCK:
            _FRONTIERS[key] = entry
            while len(_FRONTIERS) > _FRONTIER_CACHE_SIZE:
                _FRONTIERS.popitem(last=False)
            _FRONTIER_LOCKS.pop(key, None)
    return entry
