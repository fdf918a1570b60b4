"""Exact Pareto frontier of the objective against one cost axis (optionally under bounds on other costs).

Model: ``problem.py`` plus one extra row A (the axis) without a bound. With
    f(B) = min { W(x) : x meets the bounds, A(x) <= B }
the frontier is the list of points (A_p, W_p = f(A_p)), A strictly ascending and W strictly decreasing,
one per step of f: every point is an exact optimum at its own budget and no point is dominated.

Relaxed frontier (no bound but the axis): the 2-D DP of ``staircase.py``; its final staircase is f.

Bounded frontier = relaxed frontier + window DP:
  1. R = the relaxed frontier (bounds ignored), R(B) <= f(B). Let p be its first point that breaks a bound
     and B_lo = A_p. For B < B_lo the best relaxed point within B meets the bounds, so f(B) = R(B): the
     points before p are exact, and nothing else is wanted below B_lo.
  2. UB = W_{p-1} (f(B) <= UB for B >= A_{p-1}), so a point wanted at A >= B_lo has W < UB. x* = the bounded
     optimum without an axis limit (one exact solve): W* = min f, and nothing with A > A* = A(x*) is wanted.
     If W* >= UB the points before p are the whole frontier; otherwise the rest lies in the window
     B_lo <= A <= A*, W* <= W < UB.
  3. The window is cut into sub-windows (b_{k-1}, b_k], done left to right by the bounded DP of ``dp_states.py``
     (axis row in the dominance test, axis bound b_k) with bound pruning at UB_k = the best W found so far:
     (P3) Lagrangian and (P4) exact suffix staircases of every bounded row and of the axis. For a budget B in
     (b_{k-1}, b_k] let x be optimal with the smallest A. If W(x) >= UB_k, a point found earlier (A <=
     b_{k-1} < B) is as good; else x survives every pruning rule of sub-window k, which therefore ends with
     a state at least as good. So the union of the final states is exact. Narrow sub-windows keep the
     state sets small (the axis bound is tight there); their width adapts to the state counts seen.
  4. Merge the exact points before p, x* and every sub-window's final states; keep the non-dominated ones.
  If the first relaxed point already breaks a bound, B_lo and UB come from an architecture with the smallest
  axis value that meets the bounds (one exact solve with the axis as the objective): nothing meets the
  bounds below B_lo, and a point wanted at B >= B_lo has W <= UB.
Both DPs add costs layer by layer in the same order, so equal architectures get bit-identical totals.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from puzzle.errors import ConfigError
from puzzle.library import BlockLibrary
from puzzle.search.pareto.staircase import staircase_dp, suffix_tables
from puzzle.search.problem import Constraint, Objective, Problem, build_problem, cost_column
from puzzle.search.solvers import dp_states
from puzzle.search.verify import verify_points

MAX_STATES = 400_000
SUBWINDOWS = 6  # first guess of the number of sub-windows (their width then adapts)
_FEW, _MANY = 1_500, 6_000  # state counts below / above which the next sub-window is made wider / narrower


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
    a = dp_states.pad(problem.weights, costs, lo, hi, tol)
    choices, axis_vals, w = frontier_candidates(a, k, problem)
    order = np.lexsort((w, axis_vals))
    choices, axis_vals, w = choices[order], axis_vals[order], w[order]
    keep = np.ones(len(w), dtype=bool)
    keep[1:] = w[1:] < np.minimum.accumulate(w)[:-1]
    verify_points(problem, choices[keep])  # like every solution: a point that breaks a bound is never returned
    return Frontier(
        metric=problem.objective.metric,
        axis=full,
        scenario=problem.scenario,
        constraints=tuple(str(c) for c in problem.constraints),
        axis_values=axis_vals[keep] + offset,
        objectives=problem.objective.sign * w[keep],
        choices=choices[keep],
        names=problem.names,
        parent_axis=parent_axis,
        seconds=time.perf_counter() - start,
    )


def evaluate(a: dp_states.Arrays, choices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Block totals (P, K) and objectives (P,) of architectures, summed layer by layer like the DPs."""
    totals = np.zeros((len(choices), a.c.shape[2]))
    w = np.zeros(len(choices))
    for i in range(a.w.shape[0]):
        totals += a.c[i, choices[:, i]]
        w += a.w[i, choices[:, i]]
    return totals, w


def meets_bounds(a: dp_states.Arrays, totals: np.ndarray) -> np.ndarray:
    """Which rows of ``totals`` (P, K) meet every bound (with its tolerance), like the DP's final test."""
    hi_t = np.where(np.isfinite(a.hi), a.hi + a.tol, np.inf)
    lo_t = np.where(np.isfinite(a.lo), a.lo - a.tol, -np.inf)
    return np.all(totals <= hi_t, axis=1) & np.all(totals >= lo_t, axis=1)


def frontier_candidates(a: dp_states.Arrays, k: int, problem: Problem) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(choices (P, L), axis totals, objectives) of architectures among which are all frontier points.

    ``a`` holds the problem's rows then the axis (row ``k``, no bound). The module docstring has the method.
    """
    axis_only = dp_states.Arrays(a.w, a.c[:, :, k : k + 1], a.valid, a.lo[k : k + 1], a.hi[k : k + 1], a.tol[k : k + 1])
    relaxed_a = dp_states.prune_variants(axis_only, axis=0)
    relaxed = staircase_dp(relaxed_a.c[:, :, 0], relaxed_a.w, relaxed_a.valid)
    choices, axis_vals, w = relaxed.choices(), relaxed.final.x, relaxed.final.w
    if k == 0:
        return choices, axis_vals, w
    rows = np.arange(k)
    bounded = dp_states.Arrays(a.w, a.c[:, :, rows], a.valid, a.lo[rows], a.hi[rows], a.tol[rows])
    bad = np.nonzero(~meets_bounds(bounded, evaluate(bounded, choices)[0]))[0]
    if bad.size == 0:
        return choices, axis_vals, w
    first = int(bad[0])
    best = _best(problem, a.w.shape[0])  # raises the diagnosed InfeasibleError when nothing meets the bounds
    found = [(choices[:first], axis_vals[:first], w[:first])]
    if first > 0:
        b_lo, ub = float(axis_vals[first]), float(w[first - 1])
    else:
        fastest = _fastest(a, k)
        if fastest is None:  # the exact min-axis solve gave up: start at the relaxed minimum, no bound at first
            b_lo, ub = float(axis_vals[0]), np.inf
        else:
            t, wf = evaluate(a, fastest[None, :])
            found.append((fastest[None, :], t[:, k], wf))
            b_lo, ub = float(t[0, k]), float(wf[0])
    t, wb = evaluate(a, best[None, :])
    found.append((best[None, :], t[:, k], wb))
    if wb[0] < ub:
        found.extend(_window(a, k, b_lo, float(t[0, k]), ub, problem))
    return tuple(np.concatenate(parts) for parts in zip(*found, strict=True))  # type: ignore[return-value]


def _window(
    a: dp_states.Arrays, k: int, b_lo: float, a_star: float, ub: float, problem: Problem
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Final states of the sub-window DPs covering B_lo <= axis <= A* (see the module docstring)."""
    end = a_star + 1e-9 * max(1.0, abs(a_star))  # A* itself must be in: the DP may sum it an ulp higher
    hi = a.hi.copy()
    hi[k] = end
    win = dp_states.prune_variants(dp_states.Arrays(a.w, a.c, a.valid, a.lo, hi, a.tol), axis=k)
    nus = dp_states.dual_ascent(win)[None, :]
    bounds = _suffix_bounds(win, k, ub + 1e-9 * max(1.0, abs(ub)))
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    lo_edge, width = b_lo, (end - b_lo) / SUBWINDOWS
    while lo_edge < end:
        cap = lo_edge + width
        if cap >= end - 0.25 * width:
            cap = end
        hi[k] = cap
        sub = dp_states.Arrays(
            win.w, win.c, win.valid, win.lo, hi.copy(), np.where(np.arange(len(hi)) == k, 0.0, win.tol)
        )
        axis_bound = dp_states.SuffixBound(np.eye(len(hi))[k], cap, bounds[-1].tables)
        try:
            res = dp_states.run(
                sub, axis=k, keep_all=True, ub=ub, nus=nus, max_states=MAX_STATES, suffix=[*bounds[:-1], axis_bound]
            )
        except dp_states.StateLimit as exc:
            if width < (end - b_lo) * 2.0**-12:
                raise ConfigError(
                    f"the exact frontier under {', '.join(str(c) for c in problem.constraints)} grew past "
                    f"{MAX_STATES} partial architectures ({exc}); drop a bound or solve single budgets with "
                    "`puzzle search`"
                ) from None
            width /= 2
            continue
        if res.final_choices is not None:
            found.append((res.final_choices, res.final_c[:, k], res.final_w))
            ub = min(ub, float(res.final_w.min()))
        lo_edge = cap
        if res.states < _FEW:
            width *= 2
        elif res.states > _MANY:
            width /= 2
    return found


def _suffix_bounds(a: dp_states.Arrays, k: int, cap: float) -> list[dp_states.SuffixBound]:
    """(P4) bounds for every bounded row, then the axis row's tables (its room is set per sub-window)."""
    eye = np.eye(a.c.shape[2])
    out = []
    for r in range(a.c.shape[2]):
        if r == k:
            continue
        for sign, bound in ((1.0, a.hi[r] + a.tol[r]), (-1.0, -(a.lo[r] - a.tol[r]))):
            if np.isfinite(bound):
                coef = sign * eye[r]
                out.append(dp_states.SuffixBound(coef, float(bound), _tables(a, coef, cap)))
    out.append(dp_states.SuffixBound(eye[k], np.inf, _tables(a, eye[k], cap)))
    return out


def _tables(a: dp_states.Arrays, coef: np.ndarray, cap: float):
    x = a.c @ coef
    one = dp_states.prune_variants(
        dp_states.Arrays(a.w, x[:, :, None], a.valid, np.array([-np.inf]), np.array([np.inf]), np.zeros(1)), axis=0
    )
    return suffix_tables(one.c[:, :, 0], one.w, one.valid, cap)


def _best(problem: Problem, n_layers: int) -> np.ndarray:
    """An optimal architecture under the bounds (no axis limit); InfeasibleError (diagnosed) if none."""
    from puzzle.search import solve_problem

    return np.array(solve_problem(problem).choices, dtype=np.int64).reshape(n_layers)


def _fastest(a: dp_states.Arrays, k: int) -> np.ndarray | None:
    """An architecture with the smallest axis total that meets the bounds (None if the DP gives up)."""
    from puzzle.search.solvers.dp import solve_padded

    rows = [r for r in range(a.c.shape[2]) if r != k]
    sub = dp_states.Arrays(
        np.where(a.valid, a.c[:, :, k], np.inf), a.c[:, :, rows], a.valid, a.lo[rows], a.hi[rows], a.tol[rows]
    )
    try:
        choices, _ = solve_padded(sub)
    except dp_states.StateLimit:
        return None
    return choices  # not None: the bounds were checked feasible by the exact solve before


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
