from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from puzzle.errors import ConfigError, InfeasibleError
from puzzle.search import SOLVER_NAMES, build_problem, diverse, frontier, greedy, parse_constraint, solve
from tests.search.synthetic import decoupled_library, random_library

REPO = Path(__file__).resolve().parents[2]

CASES = [
    ["runtime_ms<=60%"],
    ["runtime_ms<=55%", "memory_mib<=70%"],
    ["memory_mib@dec<=12", "num_params>=150"],
    ["runtime_ms<=25", "attention_layers>=2"],
    ["throughput>=150%", "ffn_layers<=3"],
    ["runtime_ms@dec<=70%", "memory_mib@dec<=80%", "parent_layers>=1"],
    ["num_params<=60%", "num_params>=40%"],
]


def brute_force(lib, objective: str, constraints: list[str], scenario=None) -> float | None:
    """Exhaustive: the best objective over every architecture (same tolerance as the problem)."""
    problem = build_problem(lib, objective, constraints, scenario=scenario)
    best = None
    tol = problem.tolerance
    for choice in itertools.product(*(range(len(w)) for w in problem.weights)):
        totals = problem.block_totals(choice)
        if np.all(totals <= problem.upper + tol) and np.all(totals >= problem.lower - tol):
            value = problem.value(choice)
            best = value if best is None else min(best, value)
    return None if best is None else problem.objective.sign * best


@pytest.mark.parametrize("solver", SOLVER_NAMES)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_conformance_against_brute_force(solver: str, case: int) -> None:
    constraints = CASES[case]
    for seed in range(2):
        lib = random_library(4, 4, seed=seed + 10 * case)
        expected = brute_force(lib, "kl_div", constraints)
        if expected is None:
            with pytest.raises(InfeasibleError):
                solve(lib, "kl_div", constraints, solver=solver)
            continue
        sol = solve(lib, "kl_div", constraints, solver=solver)
        assert sol.status == "optimal"
        assert sol.objective == pytest.approx(expected, rel=1e-9, abs=1e-9)
        assert sol.solver == solver and len(sol.layers) == 4


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_maximised_metric_and_scenario(solver: str) -> None:
    lib = random_library(4, 3, seed=3)
    expected = brute_force(lib, "cosine", ["runtime_ms<=60%"], scenario="dec")
    sol = solve(lib, "cosine", ["runtime_ms<=60%"], scenario="dec", solver=solver)
    assert sol.objective == pytest.approx(expected, rel=1e-9)
    assert sol.scenario == "dec" and sol.totals["runtime_ms"] <= 0.6 * sol.parent_totals["runtime_ms"] + 1e-9


def test_percent_budget_includes_non_block_part() -> None:
    lib = random_library(3, 3, seed=1)  # prefill runtime has a non-block part of 1.0
    sol = solve(lib, "kl_div", ["runtime_ms<=70%"])
    assert sol.parent_totals["runtime_ms"] == pytest.approx(
        sum(layer.parent.scenario_costs["pre"]["runtime_ms"] for layer in lib.layers) + 1.0
    )
    assert sol.totals["runtime_ms"] <= 0.7 * sol.parent_totals["runtime_ms"] + 1e-9


@pytest.mark.parametrize("seed", range(3))
def test_dp_agrees_with_highs_on_larger_libraries(seed: int) -> None:
    lib = decoupled_library(24, 3, 5, seed=seed)
    for constraints in (["runtime_ms<=50%", "memory_mib<=60%"], ["runtime_ms@decode<=40%", "attention_layers>=10"]):
        a = solve(lib, "kl_div", constraints, solver="dp")
        b = solve(lib, "kl_div", constraints, solver="highs")
        assert a.objective == pytest.approx(b.objective, rel=1e-7, abs=1e-9)


def test_infeasible_names_binding_constraint_and_minimum() -> None:
    lib = random_library(4, 4, seed=5)
    problem = build_problem(lib, "kl_div", ["runtime_ms<=0.5"])
    smallest = sum(float(w.min()) for w in (c[:, 0] for c in problem.costs)) + 1.0  # + non-block part
    with pytest.raises(InfeasibleError) as err:
        solve(lib, "kl_div", ["memory_mib<=100%", "runtime_ms<=0.5"])
    assert err.value.constraint == "runtime_ms<=0.5"
    assert err.value.minimum == pytest.approx(smallest)
    assert "runtime_ms<=0.5" in str(err.value) and "smallest" in str(err.value)


def test_infeasible_combination_reports_minimum_subject_to_earlier() -> None:
    lib = random_library(4, 4, seed=6)
    with pytest.raises(InfeasibleError) as err:
        solve(lib, "kl_div", ["num_params>=95%", "runtime_ms<=30%"])
    # The smallest runtime among architectures meeting num_params>=95%, found by enumeration.
    problem = build_problem(lib, "kl_div", ["num_params>=95%", "runtime_ms<=30%"])
    params, runtime = problem.rows[0], problem.rows[1]
    best = math.inf
    for choice in itertools.product(*(range(len(w)) for w in problem.weights)):
        t = problem.block_totals(choice)
        if t[0] >= params.lower - 1e-6:
            best = min(best, t[1] + runtime.offset)
    assert err.value.constraint == "runtime_ms<=30%"
    assert err.value.minimum == pytest.approx(best)


@pytest.mark.parametrize(
    "text",
    ["runtime_ms<50%", "runtime_ms<=abc", "runtime_ms<=-1", "<=5", "runtime_ms<=inf"],
)
def test_malformed_constraints(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_constraint(text)


def test_unknown_keys_and_scenarios() -> None:
    lib = random_library(2, 2)
    for bad in (["latency<=5"], ["runtime_ms@gpu<=5"], ["memory_mib@b99<=5"], ["runtime_ms<=5", "runtime_ms>=6"]):
        with pytest.raises(ConfigError):
            build_problem(lib, "kl_div", bad)
    with pytest.raises(ConfigError):
        build_problem(lib, "accuracy", [])


def test_frontier_points_are_exact_and_non_dominated() -> None:
    lib = decoupled_library(6, 3, 4, seed=2)
    for constraints in ([], ["memory_mib<=70%"]):
        front = frontier(lib, "kl_div", "runtime_ms", constraints)
        assert len(front) > 5
        assert np.all(np.diff(front.axis_values) > 0) and np.all(np.diff(front.objectives) < 0)
        for p in range(0, len(front), max(1, len(front) // 12)):
            budget = float(front.axis_values[p])
            sol = solve(lib, "kl_div", [*constraints, f"runtime_ms<={budget!r}"], solver="highs")
            assert sol.objective == pytest.approx(front.objectives[p], rel=1e-7, abs=1e-9)


def test_diverse_pool_distance() -> None:
    lib = decoupled_library(8, 3, 3, seed=4)
    pool = diverse(lib, "kl_div", ["runtime_ms<=60%"], 4, 3)
    assert len(pool) == 4
    best = solve(lib, "kl_div", ["runtime_ms<=60%"])
    assert pool[0].objective == pytest.approx(best.objective)
    for a, b in itertools.combinations(pool, 2):
        assert sum(x != y for x, y in zip(a.choices, b.choices, strict=True)) >= 3
    assert all(p.objective >= best.objective - 1e-9 for p in pool)


def test_greedy_is_feasible_and_no_better_than_optimum() -> None:
    lib = decoupled_library(16, 3, 5, seed=1)
    g = greedy(lib, "kl_div", ["runtime_ms<=60%"])
    best = solve(lib, "kl_div", ["runtime_ms<=60%"])
    assert g.totals["runtime_ms"] <= 0.6 * g.parent_totals["runtime_ms"] + 1e-6
    assert g.objective >= best.objective - 1e-9


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "puzzle", *args], capture_output=True, text=True, timeout=120, cwd=REPO, env=env
    )


def test_cli_search_frontier_and_errors(tmp_path: Path) -> None:
    import json

    lib = decoupled_library(6, 3, 3, seed=0)
    lib.save(tmp_path / "lib")
    ok = _cli("search", "--library", str(tmp_path / "lib"), "--max", "runtime_ms=60%", "--json")
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert {"status", "objective", "totals", "layers", "solver", "seconds"} <= set(data)
    assert data["objective"] == pytest.approx(solve(lib, "kl_div", ["runtime_ms<=60%"]).objective)
    for bad in (
        ["--max", "latency=5"],
        ["--max", "runtime_ms=abc"],
        ["--max", "runtime_ms=-5"],
        ["--scenario", "gpu"],
        ["--max", "runtime_ms=0.001"],
    ):
        res = _cli("search", "--library", str(tmp_path / "lib"), *bad)
        assert res.returncode == 2, (bad, res.stderr)
        assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.stderr
    plot = tmp_path / "f.html"
    res = _cli("frontier", "--library", str(tmp_path / "lib"), "--axis", "runtime_ms", "--plot", str(plot))
    assert res.returncode == 0, res.stderr
    html = plot.read_text()
    assert "Plotly.newPlot" in html and len(html) > 1_000_000  # plotly.js inlined
    assert '<script src="http' not in html and '<script src="http' not in html
    csv = _cli("frontier", "--library", str(tmp_path / "lib"), "--axis", "runtime_ms", "--csv")
    assert csv.returncode == 0 and csv.stdout.splitlines()[0].startswith("runtime_ms")


def test_entry_points_stay_callable_after_their_modules_load() -> None:
    # Regression: a submodule named like a package function used to replace it on first use.
    import puzzle.search as search

    lib = random_library(4, 4, seed=3)
    for _ in range(2):
        front = search.frontier(lib, "kl_div", "runtime_ms")
        base = search.greedy(lib, "kl_div", ["runtime_ms<=70%"])
        pool = search.diverse(lib, "kl_div", ["runtime_ms<=90%"], 2, 1)
    assert front.to_dict()["points"] and base.layers and len(pool) == 2
    assert callable(search.frontier) and callable(search.greedy) and callable(search.diverse)


def test_diverse_pool_resumes_from_its_finished_solutions() -> None:
    from puzzle.search.pool import diverse_solutions

    lib = decoupled_library(8, 3, 3, seed=4)
    full = diverse(lib, "kl_div", ["runtime_ms<=60%"], 4, 3)
    calls: list[tuple[int, int]] = []
    resumed = diverse_solutions(
        lib,
        "kl_div",
        ["runtime_ms<=60%"],
        4,
        3,
        previous=[full[0], full[1].choices],
        on_solution=lambda *a: calls.append(a),
    )
    assert calls == [(3, 4), (4, 4)]  # only the missing ones are solved
    assert [s.choices for s in resumed] == [s.choices for s in full]
    assert resumed[0] is not full[0] and resumed[0].objective == pytest.approx(full[0].objective)
    # Earlier solutions that do not fit the request are refused, not trusted.
    with pytest.raises(ConfigError, match="earlier solution 1 does not belong to this pool"):
        diverse_solutions(lib, "kl_div", ["runtime_ms<=20%"], 4, 3, previous=[full[0]])
    with pytest.raises(ConfigError, match="earlier solution 2 does not belong"):
        diverse_solutions(lib, "kl_div", ["runtime_ms<=60%"], 4, 3, previous=[full[0], full[0]])
