"""Time limits and numerical safety of every backend: time-outs are never 'infeasible', outliers never break a bound."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from puzzle.errors import InfeasibleError, PuzzleError, SolverError, SolveTimeout, VerificationError
from puzzle.library import BlockLibrary, Layer
from puzzle.search import SOLVER_NAMES, build_problem, frontier, solve, solve_problem
from puzzle.search.solution import make_solution
from puzzle.search.solvers import Solver
from tests.search.synthetic import decoupled_library, random_library

HARD = ["runtime_ms<=45%", "memory_mib@decode<=55%", "num_params>=35%"]


@pytest.fixture(scope="module")
def hard_library() -> BlockLibrary:
    return decoupled_library(40, 6, 30, seed=3)  # 180 variants per layer, three interacting rows


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_time_limit_raises_solve_timeout_not_infeasible(solver: str, hard_library: BlockLibrary) -> None:
    with pytest.raises(SolveTimeout) as info:
        solve(hard_library, "kl_div", HARD, solver=solver, time_limit=1e-3)
    err = info.value
    assert not isinstance(err, InfeasibleError)
    assert err.solver == solver and err.time_limit == 1e-3
    assert str(err).startswith(f"time-out: solver {solver} reached 0.001 s time limit")
    assert ("best bound on the objective so far" in str(err)) == (err.bound is not None)
    if err.bound is not None:  # a valid bound: the optimum (kl_div, minimised) is no better
        assert err.bound <= solve(hard_library, "kl_div", HARD).objective + 1e-9


def _with_outlier(lib: BlockLibrary, layer: int, j: int, *, runtime: float, kl: float | None = None) -> BlockLibrary:
    layers = list(lib.layers)
    variants = list(layers[layer].variants)
    v = variants[j]
    scenario_costs = {s: dict(c) for s, c in v.scenario_costs.items()}
    scenario_costs["pre"]["runtime_ms"] = runtime
    metrics = dict(v.metrics) | ({"kl_div": kl} if kl is not None else {})
    variants[j] = dataclasses.replace(v, scenario_costs=scenario_costs, metrics=metrics)
    layers[layer] = Layer(layer, tuple(variants))
    return dataclasses.replace(lib, layers=tuple(layers))


def _without(lib: BlockLibrary, layer: int, j: int) -> BlockLibrary:
    layers = list(lib.layers)
    layers[layer] = Layer(layer, tuple(v for k, v in enumerate(layers[layer].variants) if k != j))
    return dataclasses.replace(lib, layers=tuple(layers))


@pytest.mark.parametrize("solver", SOLVER_NAMES)
@pytest.mark.parametrize("outlier", [1e12, 1e15])
def test_outlier_costs_never_break_a_bound(solver: str, outlier: float) -> None:
    base = random_library(6, 5, seed=4)
    lib = _with_outlier(base, 2, 3, runtime=outlier, kl=0.0)  # tempting (no KL) but far too slow
    lib = _with_outlier(lib, 4, 1, runtime=outlier / 3)
    reference = _without(_without(base, 4, 1), 2, 3)  # the outliers can never be chosen: same optimum
    for constraints in (["runtime_ms<=50%"], ["runtime_ms<=30", "memory_mib<=70%"], ["runtime_ms>=20%"]):
        sol = solve(lib, "kl_div", constraints, solver=solver)
        expected = solve(reference, "kl_div", constraints, solver="dp")
        problem = build_problem(lib, "kl_div", constraints)
        for row in problem.rows:
            total = sol.totals[row.unit]
            assert total <= row.upper + row.offset + 1e-6 and total >= row.lower + row.offset - 1e-6
        if constraints != ["runtime_ms>=20%"]:
            assert sol.choices[2] != 3 and sol.choices[4] != 1
            assert sol.objective == pytest.approx(expected.objective, rel=1e-9, abs=1e-9)
        assert float(np.max(problem.tolerance)) < 1e-3  # the outlier does not widen the tolerance


def test_highs_never_crashes_on_a_1e308_coefficient() -> None:
    """HiGHS took a 1e308 coefficient to an OR-Tools status error that itself failed to format (AttributeError).

    Libraries refuse such values and ``build_problem`` caps outliers, so only a hand-made problem gets there:
    in the objective HiGHS copes, in a cost row it is a SolverError (a PuzzleError), never an AttributeError.
    """
    lib = random_library(4, 4, seed=1)
    problem = build_problem(lib, "kl_div", ["runtime_ms<=60%"])
    weights = [w.copy() for w in problem.weights]
    weights[1][2] = 1e308
    assert solve_problem(problem.with_weights(tuple(weights), problem.objective), "highs").choices[1] != 2
    costs = [c.copy() for c in problem.costs]
    costs[1][2, 0] = 1e308
    with pytest.raises(SolverError, match=r"^highs failed on this problem"):
        solve_problem(problem.with_rows(problem.rows, tuple(costs)), "highs")


def test_diagnosis_reports_the_librarys_own_minimum_despite_capping() -> None:
    lib = _with_outlier(random_library(4, 4, seed=2), 1, 2, runtime=1e12)
    with pytest.raises(InfeasibleError) as info:
        solve(lib, "kl_div", ["runtime_ms<=1"])
    exact = sum(min(v.cost("runtime_ms", "pre") for v in layer.variants) for layer in lib.layers) + 1.0
    assert info.value.minimum == pytest.approx(exact)


class _Liar(Solver):
    """A broken backend: returns the parent whatever the bounds."""

    name = "liar"

    def solve(self, problem):  # type: ignore[no-untyped-def]
        return make_solution(
            problem,
            [layer.parent_index for layer in problem.library.layers],
            status="optimal",
            solver=self.name,
            seconds=0.0,
        )


def test_a_solution_that_breaks_a_bound_is_an_internal_error_never_returned() -> None:
    lib = random_library(4, 4, seed=0)
    with pytest.raises(VerificationError) as info:
        solve(lib, "kl_div", ["runtime_ms<=50%"], solver=_Liar())
    assert isinstance(info.value, PuzzleError) and not isinstance(info.value, InfeasibleError)
    assert "breaks runtime_ms<=50%" in str(info.value)


@pytest.mark.parametrize("axis", ["runtime_ms", "memory_mib"])
def test_frontier_with_outliers_keeps_every_point_within_the_bounds(axis: str) -> None:
    lib = _with_outlier(random_library(6, 5, seed=4), 2, 3, runtime=1e12, kl=0.0)
    constraints = ["runtime_ms<=60%", "memory_mib<=80%"]
    front = frontier(lib, "kl_div", axis, constraints)
    problem = build_problem(lib, "kl_div", constraints)
    assert len(front.choices) >= 2
    for choices in front.choices:
        assert choices[2] != 3  # the outlier breaks runtime_ms<=60% wherever it is used
        sol = solve(lib, "kl_div", [*constraints, f"{axis}<=100%"], solver="highs")
        assert sol.objective <= problem.objective.sign * problem.value(tuple(choices)) + 1e-9
        for row in problem.rows:
            total = (
                sum(lib.layers[i].variants[j].cost(row.unit, problem.scenario) for i, j in enumerate(choices))
                + row.offset
            )
            assert total <= row.upper + row.offset + 1e-6


def test_frontier_points_are_verified_like_solutions() -> None:
    from puzzle.search.verify import verify_points

    lib = random_library(4, 4, seed=0)
    problem = build_problem(lib, "kl_div", ["runtime_ms<=50%"])
    cheapest = [int(np.argmin([v.cost("runtime_ms", "pre") for v in layer.variants])) for layer in lib.layers]
    parent = [layer.parent_index for layer in lib.layers]
    verify_points(problem, np.array([cheapest]))
    with pytest.raises(VerificationError, match=r"point 1 breaks runtime_ms<=50%"):
        verify_points(problem, np.array([cheapest, parent]))
