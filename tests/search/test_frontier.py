"""The exact frontier (relaxed staircase + bounded window DP) against brute force and independent solves."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from puzzle.errors import ConfigError, InfeasibleError
from puzzle.library import import_nvlabs
from puzzle.search import build_problem, frontier, solve
from puzzle.search.pareto import frontier as pareto_front
from puzzle.search.pareto.staircase import staircase_dp, suffix_tables
from puzzle.search.problem import cost_column
from puzzle.search.solvers import dp_states as pareto
from tests.search.synthetic import decoupled_library, random_library
from tests.shared_data import shared_data_dir

BOUNDS = [
    [],
    ["memory_mib<=60%"],
    ["memory_mib<=70%", "num_params>=40%"],
    ["num_params>=60%"],  # the fastest architectures break it: the first relaxed point is infeasible
    ["runtime_ms@dec<=50%", "memory_mib<=80%"],
    ["runtime_ms<=60%"],  # a bound on the axis itself
    ["memory_mib@dec<=55%", "num_params>=30%", "num_params<=80%"],
]


def brute_frontier(lib, objective: str, axis: str, constraints: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The step function f(B) = min W over every feasible architecture with axis <= B, by enumeration."""
    problem = build_problem(lib, objective, constraints)
    _, _, cols, offset = cost_column(lib, axis, problem.scenario)
    grid = np.array(list(itertools.product(*(range(len(w)) for w in problem.weights))))
    layers = range(problem.n_layers)
    w = sum(problem.weights[i][grid[:, i]] for i in layers)
    axis_vals = sum(cols[i][grid[:, i]] for i in layers) + offset
    totals = sum(problem.costs[i][grid[:, i]] for i in layers)
    tol = problem.tolerance
    ok = np.all(totals <= problem.upper + tol, axis=1) & np.all(totals >= problem.lower - tol, axis=1)
    axis_vals, w = axis_vals[ok], w[ok]
    order = np.lexsort((w, axis_vals))
    axis_vals, w = axis_vals[order], w[order]
    keep = np.ones(len(w), dtype=bool)
    keep[1:] = w[1:] < np.minimum.accumulate(w)[:-1]
    return axis_vals[keep], problem.objective.sign * w[keep]


@pytest.mark.parametrize("case", range(len(BOUNDS)))
def test_frontier_is_the_brute_force_step_function(case: int) -> None:
    constraints = BOUNDS[case]
    checked = 0
    for seed, objective in itertools.product(range(4), ("kl_div", "cosine")):
        lib = random_library(7, 4, seed=seed + 7 * case)
        expected_axis, expected_obj = brute_frontier(lib, objective, "runtime_ms", constraints)
        if len(expected_axis) == 0:
            with pytest.raises(InfeasibleError):
                frontier(lib, objective, "runtime_ms", constraints)
            continue
        front = frontier(lib, objective, "runtime_ms", constraints)
        # Every point, nothing missing, nothing dominated: the whole step function is the same.
        assert len(front) == len(expected_axis), (seed, objective)
        np.testing.assert_allclose(front.axis_values, expected_axis, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(front.objectives, expected_obj, rtol=1e-12, atol=1e-12)
        problem = build_problem(lib, objective, constraints)
        for p in range(len(front)):
            assert problem.is_feasible(front.choices[p])
            assert problem.objective.sign * problem.value(front.choices[p]) == pytest.approx(front.objectives[p])
        checked += 1
    assert checked >= 4


def test_window_subwindows_and_first_point_infeasible_against_highs() -> None:
    # Identical costs in every layer (as in real libraries): many ties, several sub-windows.
    lib = decoupled_library(10, 3, 4, seed=3)
    for constraints in (["num_params>=60%"], ["memory_mib<=75%", "num_params>=45%"]):
        front = frontier(lib, "kl_div", "runtime_ms", constraints)
        assert len(front) > 20
        assert np.all(np.diff(front.axis_values) > 0) and np.all(np.diff(front.objectives) < 0)
        tol = build_problem(lib, "kl_div", ["runtime_ms<=1"]).tolerance[0]
        picks = sorted({*range(0, len(front), max(1, len(front) // 8)), len(front) - 1, len(front) - 2})
        for p in picks:
            for budget in (float(front.axis_values[p]), float(front.axis_values[p]) - 1e-6):
                cons = [*constraints, f"runtime_ms<={budget!r}"]
                q = front.best_within(budget + tol)  # the solver's bound has the same tolerance
                if q is None:
                    with pytest.raises(InfeasibleError):
                        solve(lib, "kl_div", cons, solver="highs")
                    continue
                sol = solve(lib, "kl_div", cons, solver="highs")
                assert sol.objective == pytest.approx(front.objectives[q], rel=1e-7, abs=1e-9), (constraints, p)


def test_state_limit_gives_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = random_library(7, 4, seed=1)
    monkeypatch.setattr(pareto_front, "MAX_STATES", 2)
    with pytest.raises(ConfigError, match="grew past 2 partial architectures"):
        frontier(lib, "kl_div", "runtime_ms", ["memory_mib<=65%"])
    monkeypatch.setattr(pareto_front, "MAX_STATES", 400_000)
    assert len(frontier(lib, "kl_div", "runtime_ms", ["memory_mib<=65%"])) > 5


@pytest.mark.parametrize("ties", [False, True])
def test_two_dim_dominance_filter_is_exact(ties: bool) -> None:
    rng = np.random.default_rng(1)
    n = 3000  # above the pairwise limit: the sweep
    if ties:
        w, d = rng.integers(0, 30, n).astype(float), rng.integers(0, 30, (n, 2)).astype(float)
    else:
        w, d = rng.uniform(0, 1, n), rng.uniform(0, 1, (n, 2))
        d[:, 1] = 1 - d[:, 0] + 0.3 * rng.uniform(0, 1, n)  # correlated costs, like runtime and memory
    kept = pareto.nondominated(w, d)
    pts = np.column_stack([w, d])
    le = np.all(pts[:, None, :] <= pts[None, :, :], axis=2)  # le[a, b]: a no worse than b everywhere
    lt = le & np.any(pts[:, None, :] < pts[None, :, :], axis=2)
    dominated = lt.any(axis=0)
    assert set(kept.tolist()) & set(np.nonzero(dominated)[0].tolist()) == set()
    # Of each group of equal points exactly one is kept, and every non-dominated point is represented.
    _, group = np.unique(pts, axis=0, return_inverse=True)
    expected_groups = set(group[~dominated].tolist())
    assert sorted(group[kept].tolist()) == sorted(expected_groups)


def test_suffix_tables_are_exact_lower_bounds() -> None:
    rng = np.random.default_rng(2)
    x, w = rng.uniform(0, 5, (5, 3)), rng.uniform(0, 2, (5, 3))
    valid = np.ones((5, 3), dtype=bool)
    tables = suffix_tables(x, w, valid)
    for start in range(6):
        grid = list(itertools.product(range(3), repeat=5 - start))
        xs = np.array([sum(x[start + i, j] for i, j in enumerate(g)) for g in grid])
        ws = np.array([sum(w[start + i, j] for i, j in enumerate(g)) for g in grid])
        for budget in np.linspace(-1, 26, 40):
            fits = xs <= budget
            expected = ws[fits].min() if fits.any() else np.inf
            assert tables[start].best_within(np.array([budget]))[0] == pytest.approx(expected, rel=1e-12)
    full = staircase_dp(x, w, valid)  # forwards: the same frontier as the backward table of all layers
    np.testing.assert_allclose(full.final.x, tables[0].x, rtol=1e-12)
    np.testing.assert_allclose(full.final.w, tables[0].w, rtol=1e-12)
    chosen = full.choices()
    np.testing.assert_allclose(x[np.arange(5), chosen].sum(axis=1), full.final.x, rtol=1e-12)


@pytest.mark.skipif(
    not (shared_data_dir() and (shared_data_dir() / "nvlabs-puzzle-llama-3.3-70b").is_dir()),
    reason="shared NVlabs 70B library not present",
)
def test_memory_bounded_frontier_on_the_70b_library() -> None:
    lib = import_nvlabs(shared_data_dir() / "nvlabs-puzzle-llama-3.3-70b")
    relaxed = frontier(lib, "kl_div", "runtime_ms")
    front = frontier(lib, "kl_div", "runtime_ms", ["memory_mib<=80%"])
    assert len(front) > 10_000 and np.all(np.diff(front.objectives) < 0)
    tol = build_problem(lib, "kl_div", ["runtime_ms<=1"]).tolerance[0]
    # The relaxed frontier is a lower bound everywhere and equal below the first memory-infeasible point.
    for percent in (30, 50, 70, 80.5, 81.2, 81.8, 82.2, 90, 100):
        budget = percent / 100 * front.parent_axis
        p, r = front.best_within(budget + tol), relaxed.best_within(budget + tol)
        sol = solve(lib, "kl_div", ["memory_mib<=80%", f"runtime_ms<={budget!r}"])
        assert sol.objective == pytest.approx(front.objectives[p], rel=1e-9), percent
        assert relaxed.objectives[r] <= front.objectives[p] + 1e-9
        if percent <= 80:
            assert relaxed.objectives[r] == pytest.approx(front.objectives[p], rel=1e-12)
