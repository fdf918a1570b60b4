"""Exact Pareto frontier of the objective against one cost axis (optionally under bounds on other costs).

Same model as ``problem.py`` with one extra row a (the axis) that has no bound. The DP of ``pareto.py`` is
run with row a kept in the dominance test and no bound pruning, so after the last layer its states contain,
for every achievable axis value, an optimal architecture. The frontier is the 2D non-dominated subset:
    points (A_p, W_p) sorted by A ascending with W strictly decreasing, where each W_p = min { W(x) :
    x feasible for the other rows, A(x) <= A_p }.
So every point is an exact optimum at its own budget (tests check each against an independent solve), and
no point is dominated. One pass over the layers replaces one cold solve per budget.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from puzzle.errors import ConfigError
from puzzle.library import BlockLibrary
from puzzle.search import pareto
from puzzle.search.problem import Constraint, Objective, Problem, build_problem, cost_column

MAX_STATES = 400_000


@dataclass(frozen=True)
class Frontier:
    """Points sorted by ``axis_values`` ascending; ``objectives`` strictly improving along them."""

    metric: str
    axis: str
    scenario: str | None
    constraints: tuple[str, ...]
    axis_values: np.ndarray = field(repr=False)  # whole-model axis totals (non-block included)
    objectives: np.ndarray = field(repr=False)  # metric sums, in the metric's own sense
    choices: np.ndarray = field(repr=False)  # (P, L)
    names: tuple[tuple[str, ...], ...] = field(repr=False)
    parent_axis: float
    seconds: float

    def __len__(self) -> int:
        return len(self.axis_values)

    def layers(self, p: int) -> list[str]:
        return [self.names[i][j] for i, j in enumerate(self.choices[p])]

    def best_within(self, budget: float) -> int | None:
        """Index of the best point with axis value <= ``budget`` (None if none)."""
        p = int(np.searchsorted(self.axis_values, budget, side="right")) - 1
        return p if p >= 0 else None

    def to_dict(self, *, with_layers: bool = False) -> dict[str, Any]:
        points = []
        for p in range(len(self)):
            point: dict[str, Any] = {
                "axis": float(self.axis_values[p]),
                "percent_of_parent": 100.0 * float(self.axis_values[p]) / self.parent_axis
                if self.parent_axis
                else None,
                "objective": float(self.objectives[p]),
                "choices": [int(j) for j in self.choices[p]],
            }
            if with_layers:
                point["layers"] = self.layers(p)
            points.append(point)
        return {
            "metric": self.metric,
            "axis": self.axis,
            "scenario": self.scenario,
            "constraints": list(self.constraints),
            "parent_axis": self.parent_axis,
            "seconds": self.seconds,
            "points": points,
        }


def frontier_of_problem(problem: Problem, axis: str) -> Frontier:
    start = time.perf_counter()
    lib = problem.library
    full, _, cols, offset = cost_column(lib, axis, problem.scenario)
    parent_axis = sum(float(c[layer.parent_index]) for c, layer in zip(cols, lib.layers, strict=True)) + offset
    k = problem.n_rows
    costs = tuple(np.column_stack([c, col]) for c, col in zip(problem.costs, cols, strict=True))
    lo = np.append(problem.lower, -np.inf)
    hi = np.append(problem.upper, np.inf)
    tol = np.append(problem.tolerance, 0.0)
    a = pareto.prune_variants(pareto.pad(problem.weights, costs, lo, hi, tol), axis=k)
    try:
        res = pareto.run(a, axis=k, keep_all=True, max_states=MAX_STATES)
    except pareto.StateLimit as exc:
        raise ConfigError(
            f"the exact frontier under {', '.join(str(c) for c in problem.constraints)} grew past {MAX_STATES} "
            f"partial architectures ({exc}); drop a bound or solve single budgets with `puzzle search`"
        ) from None
    if res.final_c is None:
        from puzzle.search.diagnose import diagnose

        raise diagnose(problem)
    axis_vals, w = res.final_c[:, k], res.final_w
    order = np.lexsort((w, axis_vals))
    axis_vals, w, choices = axis_vals[order], w[order], res.final_choices[order]
    running = np.minimum.accumulate(w)
    keep = np.ones(len(w), dtype=bool)
    keep[1:] = w[1:] < running[:-1]
    objectives = problem.objective.sign * w[keep]
    return Frontier(
        metric=problem.objective.metric,
        axis=full,
        scenario=problem.scenario,
        constraints=tuple(str(c) for c in problem.constraints),
        axis_values=axis_vals[keep] + offset,
        objectives=objectives,
        choices=choices[keep],
        names=problem.names,
        parent_axis=parent_axis,
        seconds=time.perf_counter() - start,
    )


def compute_frontier(
    library: BlockLibrary,
    objective: str | Objective,
    axis: str,
    constraints: Sequence[str | Constraint] = (),
    *,
    scenario: str | None = None,
) -> Frontier:
    problem = build_problem(library, objective, constraints, scenario=scenario)
    return frontier_of_problem(problem, axis)


__all__ = ["Frontier", "compute_frontier", "frontier_of_problem"]
