"""The one search dispatcher: a ``SearchRequest`` over a library -> a ``SearchResult`` (CLI, API, jobs, demo).

Progress goes to one ``puzzle.progress.ProgressSink`` under the mode's name: ``solve`` 0..1; ``diverse`` one unit
per pool member (finished early when fewer exist ``d`` layers apart); ``frontier`` three steps (the engine, the
totals, the points), with ``check()`` between them (a job's cancel check).

``SearchResult.to_dict()`` is what a search job stores: ``{"mode", "objective_name", "axis", "scenario",
"constraints", "points": [...], "search": {...}}``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from puzzle.library import BlockLibrary
from puzzle.progress import NullProgress, ProgressSink
from puzzle.search.request import GREEDY, SearchRequest
from puzzle.search.solution import Solution
from puzzle.search.views import Point, frontier_points, point_of_solution

if TYPE_CHECKING:
    from puzzle.search.pareto.frontier import Frontier


@dataclass(frozen=True)
class SearchResult:
    """What a search found: its points, and the solutions or the frontier they came from."""

    request: SearchRequest
    scenario: str | None  # the scenario the search ran in (the library's default when the request has none)
    points: tuple[Point, ...]
    seconds: float
    solutions: tuple[Solution, ...] = ()  # solve, diverse
    frontier: Frontier | None = None  # frontier (before the request's lo / hi window)

    def to_dict(self) -> dict[str, Any]:
        search: dict[str, Any] = {"seconds": self.seconds}
        if self.request.mode == "solve":
            search = {"solver": self.solutions[0].solver, **search}
        return {
            "mode": self.request.mode,
            "objective_name": self.request.objective,
            "axis": self.request.axis,
            "scenario": self.scenario,
            "constraints": self.request.constraint_texts,
            "points": [p.to_dict() for p in self.points],
            "search": search,
        }


def _no_check() -> None:
    return None


def run_search(
    library: BlockLibrary,
    request: SearchRequest,
    *,
    progress: ProgressSink | None = None,
    check: Callable[[], None] = _no_check,
    points: bool = True,
    previous: Sequence[Sequence[int]] = (),
    on_new: Callable[[Solution], None] | None = None,
) -> SearchResult:
    """Run ``request`` over ``library`` (see the module docstring). ``points=False`` leaves a frontier's points
    unbuilt (totals and summaries of every point: a caller that only reads ``frontier`` saves that time).
    ``previous`` / ``on_new``: a diverse pool resumes from the choices an interrupted run had found, and reports
    each solution it finds itself (``puzzle.search.pool.diverse_solutions``)."""
    from puzzle import search

    progress = progress or NullProgress()
    started = time.perf_counter()
    library, r = for_target(library, request)
    scenario = library.resolve_scenario(r.scenario)
    if r.mode == "solve":
        progress.start("solve", 1)
        if r.solver == GREEDY:
            solution = search.greedy(library, r.objective, r.constraints, scenario=r.scenario)
        else:
            solution = search.solve(
                library, r.objective, r.constraints, scenario=r.scenario, solver=r.solver, time_limit=r.time_limit
            )
        progress.advance("solve")
        solutions: tuple[Solution, ...] = (solution,)
    elif r.mode == "diverse":
        progress.start("diverse", r.n)
        if previous:
            progress.advance("diverse", min(len(previous), r.n))
        solutions = tuple(
            search.diverse(
                library,
                r.objective,
                r.constraints,
                r.n,
                r.diversity,
                scenario=r.scenario,
                solver=r.solver,
                on_solution=lambda _found, _total: progress.advance("diverse"),
                previous=previous,
                on_new=on_new,
            )
        )
        progress.finish("diverse")  # the pool may run out of architectures d layers apart before n
    else:
        result = _frontier(library, r, scenario, progress, check, started, points=points)
        return replace(result, request=request)
    points = tuple(point_of_solution(library, s) for s in solutions)
    return SearchResult(request, scenario, points, time.perf_counter() - started, solutions=solutions)


def for_target(library: BlockLibrary, request: SearchRequest) -> tuple[BlockLibrary, SearchRequest]:
    """With a target: the library with its loadability cost and the request bounding it at 0 (choices keep
    the library's indices); without one, both as they are."""
    if request.target is None:
        return library, request
    from puzzle.search.problem import Constraint
    from puzzle.targets import loadability_key, with_loadability

    bound = Constraint(loadability_key(request.target), "<=", 0.0)
    return with_loadability(library, request.target), replace(request, constraints=(*request.constraints, bound))


def _frontier(
    library: BlockLibrary,
    r: SearchRequest,
    scenario: str | None,
    progress: ProgressSink,
    check: Callable[[], None],
    started: float,
    *,
    points: bool,
) -> SearchResult:
    from puzzle import search

    assert r.axis is not None  # SearchRequest: a frontier names its axis
    # the frontier engine reports nothing while it runs: progress in steps of this call (engine, totals, points)
    progress.start("frontier", 3)
    front = search.frontier(library, r.objective, r.axis, r.constraints, scenario=r.scenario)
    progress.advance("frontier")
    check()
    axis_values = np.asarray(front.axis_values, dtype=float)
    keep = np.ones(len(axis_values), dtype=bool)
    if r.lo is not None:
        keep &= axis_values >= r.lo
    if r.hi is not None:
        keep &= axis_values <= r.hi
    choices = np.asarray(front.choices, dtype=np.int64).reshape(-1, library.n_layers)[keep]
    objectives = np.asarray(front.objectives, dtype=float)[keep]
    built = (
        frontier_points(library, choices, objectives, axis_values[keep], axis=r.axis, scenario=scenario)
        if points
        else []
    )
    progress.advance("frontier")
    check()
    progress.advance("frontier")
    return SearchResult(r, scenario, tuple(built), time.perf_counter() - started, frontier=front)
