"""Diverse pools: n architectures, each differing from every earlier one in at least d layers.

After solutions y_1..y_m the next one solves the model of ``problem.py`` plus the no-good cuts
    (4)  sum_ij y_m[i,j] x[i,j] <= L - d        for every earlier y_m
i.e. at most L - d layers may repeat y_m's choice. Solved by a MIP backend (the DP cannot take the cuts);
the pool stops early when no further architecture exists. A pool resumes from the solutions an interrupted
run had found (``previous``): they are re-verified, then the cuts continue after them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from puzzle.errors import ConfigError, InfeasibleError, VerificationError
from puzzle.library import BlockLibrary
from puzzle.search.problem import Constraint, Objective, Problem, build_problem
from puzzle.search.solution import Solution, make_solution
from puzzle.search.solvers import Solver, get_solver

DEFAULT_DIVERSE_SOLVER = "highs"


def diverse_solutions(
    library: BlockLibrary,
    objective: str | Objective,
    constraints: Sequence[str | Constraint],
    n: int,
    d: int,
    *,
    scenario: str | None = None,
    solver: str | Solver | None = None,
    on_solution: Callable[[int, int], None] | None = None,
    previous: Sequence[Solution | Sequence[int]] = (),
    on_new: Callable[[Solution], None] | None = None,
) -> list[Solution]:
    """Up to ``n`` solutions, pairwise at least ``d`` layers apart; ``on_solution(found, n)`` after each new one
    (it may raise to stop the search, e.g. on a cancelled job).

    ``previous``: the solutions (or their ``choices``) an interrupted run of the same request had already
    found, in order; they are re-verified against this problem and the pool continues after them instead of
    recomputing them. ``on_new(solution)`` is called with each solution found here (not the resumed ones), so a
    caller can persist the pool as it grows.
    """
    if n < 1:
        raise ConfigError(f"the number of solutions must be at least 1, got {n}")
    if not 1 <= d <= library.n_layers:
        raise ConfigError(f"diversity must be between 1 and the number of layers ({library.n_layers}), got {d}")
    from puzzle.search import solve_problem

    problem = build_problem(library, objective, constraints, scenario=scenario)
    pool = _resumed(problem, previous, n, d)
    if not pool:
        pool.append(solve_problem(problem, solver))  # the optimum (default: the exact dp)
        if on_new is not None:
            on_new(pool[-1])
        if on_solution is not None:
            on_solution(1, n)
    backend = get_solver(solver if solver not in (None, "dp") else DEFAULT_DIVERSE_SOLVER)
    if not backend.supports_exclusions:
        raise ConfigError(f"solver {backend.name} cannot produce diverse pools; use cpsat, scip, highs or cbc")
    while len(pool) < n:
        cut = problem.with_exclusions(tuple(s.choices for s in pool), d)
        try:
            pool.append(backend.solve(cut))
        except InfeasibleError:
            break
        if on_new is not None:
            on_new(pool[-1])
        if on_solution is not None:
            on_solution(len(pool), n)
    return pool


def _resumed(problem: Problem, previous: Sequence[Solution | Sequence[int]], n: int, d: int) -> list[Solution]:
    """``previous`` as verified solutions of ``problem`` (ConfigError when they do not belong to this pool)."""
    if len(previous) > n:
        raise ConfigError(f"{len(previous)} earlier solutions given for a pool of {n}")
    pool: list[Solution] = []
    for k, earlier in enumerate(previous):
        choices = tuple(earlier.choices if isinstance(earlier, Solution) else earlier)
        try:
            verified = make_solution(
                problem.with_exclusions(tuple(s.choices for s in pool), d),
                choices,
                status=earlier.status if isinstance(earlier, Solution) else "feasible",
                solver=earlier.solver if isinstance(earlier, Solution) else "resumed",
                seconds=earlier.seconds if isinstance(earlier, Solution) else 0.0,
            )
        except VerificationError as exc:
            raise ConfigError(f"earlier solution {k + 1} does not belong to this pool: {exc}") from None
        pool.append(verified)
    return pool
