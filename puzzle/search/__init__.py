"""Architecture search over a block library: exact MIP, Pareto frontier, diverse pools, greedy baseline.

    request.py   typed requests: ``SearchRequest`` (parsed once at the edge), ``Architecture`` (choices)
    run.py       the one dispatcher: ``run_search(library, request, progress=...) -> SearchResult``
    views.py     whole-model totals (the one function), summaries, points and per-layer views
    problem.py   the model (variables, objective, numbered constraints) and constraint parsing
    solvers/     backends behind ``Solver.solve(problem) -> Solution`` (dp: the exact default; cpsat, scip,
                 highs, cbc); ``solvers/dp_states.py`` the exact DP shared by the dp solver and the frontier
    pareto/      ``frontier.py`` exact Pareto frontier of the objective against one cost axis;
                 ``staircase.py`` the exact 2-D (one cost, objective) DP: relaxed frontier and suffix bounds
    verify.py    independent re-summing of every solution
    diagnose.py  infeasibility: the binding constraint and its best achievable value
    pool.py      n solutions pairwise at least d layers apart
    greedy_baseline.py the paper's greedy baseline

The functions below take a library, an objective (metric name) and constraints (``Constraint`` objects or
texts such as ``runtime_ms<=50%``); they return frozen results with ``to_dict()``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from puzzle.errors import InfeasibleError
from puzzle.library import BlockLibrary
from puzzle.search.problem import Constraint, Objective, Problem, build_problem, parse_constraint, parse_objective
from puzzle.search.request import SEARCH_MODES, Architecture, RequestError, SearchRequest
from puzzle.search.run import SearchResult, run_search
from puzzle.search.solution import Solution
from puzzle.search.solvers import DEFAULT_SOLVER, SOLVER_NAMES, Solver, get_solver

ConstraintsLike = Sequence[str | Constraint]


def solve_problem(problem: Problem, solver: str | Solver | None = None, *, time_limit: float | None = None) -> Solution:
    """Solve a built problem; infeasibility is diagnosed (binding constraint + best achievable value)."""
    try:
        return get_solver(solver, time_limit=time_limit).solve(problem)
    except InfeasibleError as exc:
        if exc.constraint is not None:
            raise
        from puzzle.search.diagnose import diagnose

        raise diagnose(problem) from None


def solve(
    library: BlockLibrary,
    objective: str | Objective,
    constraints: ConstraintsLike = (),
    *,
    scenario: str | None = None,
    solver: str | Solver | None = None,
    time_limit: float | None = None,
) -> Solution:
    """The best architecture of ``library`` for ``objective`` under ``constraints`` (see ``problem.py``)."""
    return solve_problem(
        build_problem(library, objective, constraints, scenario=scenario), solver, time_limit=time_limit
    )


def frontier(
    library: BlockLibrary,
    objective: str | Objective,
    axis: str,
    constraints: ConstraintsLike = (),
    *,
    scenario: str | None = None,
):
    from puzzle.search.pareto.frontier import compute_frontier

    return compute_frontier(library, objective, axis, constraints, scenario=scenario)


def diverse(
    library: BlockLibrary,
    objective: str | Objective,
    constraints: ConstraintsLike,
    n: int,
    d: int,
    *,
    scenario: str | None = None,
    solver: str | Solver | None = None,
    on_solution: Callable[[int, int], None] | None = None,
    previous: Sequence[Solution | Sequence[int]] = (),
    on_new: Callable[[Solution], None] | None = None,
) -> list[Solution]:
    from puzzle.search.pool import diverse_solutions

    return diverse_solutions(
        library,
        objective,
        constraints,
        n,
        d,
        scenario=scenario,
        solver=solver,
        on_solution=on_solution,
        previous=previous,
        on_new=on_new,
    )


def greedy(
    library: BlockLibrary, objective: str | Objective, constraints: ConstraintsLike = (), *, scenario: str | None = None
) -> Solution:
    from puzzle.search.greedy_baseline import greedy_search

    return greedy_search(build_problem(library, objective, constraints, scenario=scenario))


__all__ = [
    "DEFAULT_SOLVER",
    "SEARCH_MODES",
    "SOLVER_NAMES",
    "Architecture",
    "Constraint",
    "Objective",
    "Problem",
    "RequestError",
    "SearchRequest",
    "SearchResult",
    "Solution",
    "Solver",
    "build_problem",
    "diverse",
    "frontier",
    "get_solver",
    "greedy",
    "parse_constraint",
    "parse_objective",
    "run_search",
    "solve",
    "solve_problem",
]
