"""The default exact solver: Lagrangian reduced-cost fixing, then Pareto DP (``puzzle.search.solvers.dp_states``).

For multipliers nu (lam = max(nu, 0) on upper rows, mu = max(-nu, 0) on lower rows) let
    g(nu)      = sum_i min_j (w[i,j] + nu . c[:,i,j]) - lam . hi' + mu . lo'      (the Lagrangian dual)
    rc[i,j]    = (w[i,j] + nu . c[:,i,j]) - min_j' (w[i,j'] + nu . c[:,i,j'])  >= 0 (reduced costs)
Every feasible x satisfies
    (R) W(x) = g + sum_i rc[i, x_i] + lam . (hi' - C(x)) + mu . (C(x) - lo')  >=  g + sum_i rc[i, x_i]
so an x with W(x) <= g + delta uses only variants with rc <= delta. The solver:
    1. maximises g by coordinate ascent (``dp_states.dual_ascent``);
    2. picks delta (from a feasible Lagrangian assignment when one exists, else small) and keeps only the
       variants with rc <= delta; layers left with one variant are fixed and folded into the bounds;
    3. runs the exact DP on what is left with bound pruning at UB = g + delta;
    4. if the best W* found is <= g + delta it is optimal for the whole problem by (R); otherwise
       delta = max(4 delta, W* - g) and it repeats. Once delta covers every variant the DP is complete,
       so "nothing found" then proves infeasibility (as does g > sum_i max_j w[i,j]).
"""

from __future__ import annotations

import time
from dataclasses import replace

import numpy as np

from puzzle.errors import ConfigError, InfeasibleError, SolveTimeout
from puzzle.search.problem import Problem
from puzzle.search.solution import Solution, make_solution
from puzzle.search.solvers import Solver, dp_states

MAX_STATES = 20_000  # beyond this the DP hands the problem to a MIP backend


class DPSolver(Solver):
    name = "dp"
    exact = True
    supports_exclusions = False

    def solve(self, problem: Problem) -> Solution:
        if problem.exclusions:
            raise ConfigError("the dp solver does not take diversity cuts; use cpsat, scip, highs or cbc")
        start = time.perf_counter()
        deadline = time.monotonic() + self.time_limit if self.time_limit else None
        try:
            choices, info = solve_arrays(problem, deadline=deadline)
        except dp_states.DeadlineReached as exc:
            bound = None if exc.bound is None else problem.objective.sign * exc.bound
            raise SolveTimeout(self.name, self.time_limit, bound) from None
        except dp_states.StateLimit as exc:
            # Rare shapes (several lower-bounded rows, flat objectives) defeat the pruning: hand over to HiGHS.
            from puzzle.search.solvers.mathopt import HighsSolver

            left = None if deadline is None else max(deadline - time.monotonic(), 1e-3)
            solution = HighsSolver(time_limit=left).solve(problem)
            return replace(solution, extra={**solution.extra, "fallback_from": f"dp ({exc})"})
        if choices is None:
            raise InfeasibleError("no architecture satisfies the constraints")
        return make_solution(
            problem, choices, status="optimal", solver=self.name, seconds=time.perf_counter() - start, extra=info
        )


def solve_arrays(problem: Problem, *, deadline: float | None = None) -> tuple[np.ndarray | None, dict]:
    """``(choices, info)`` of an optimal assignment, or ``(None, info)`` when none is feasible."""
    a = dp_states.pad(problem.weights, problem.costs, problem.lower, problem.upper, problem.tolerance)
    return solve_padded(a, deadline=deadline)


def solve_padded(a: dp_states.Arrays, *, deadline: float | None = None) -> tuple[np.ndarray | None, dict]:
    """The rounds of the module docstring; ``DeadlineReached`` (carrying the dual bound) past ``deadline``."""
    dp_states.check_deadline(deadline)
    hi_t = np.where(np.isfinite(a.hi), a.hi + a.tol, np.inf)
    lo_t = np.where(np.isfinite(a.lo), a.lo - a.tol, -np.inf)
    cmin = np.where(a.valid[:, :, None], a.c, np.inf).min(axis=1).sum(axis=0)
    cmax = np.where(a.valid[:, :, None], a.c, -np.inf).max(axis=1).sum(axis=0)
    if np.any(cmin > hi_t) or np.any(cmax < lo_t):
        return None, {"reason": "a single bound is out of reach"}
    w_valid = np.where(a.valid, a.w, np.nan)
    w_max = float(np.nansum(np.nanmax(w_valid, axis=1)))
    w_min = float(np.nansum(np.nanmin(w_valid, axis=1)))
    eps = 1e-9 * max(1.0, float(np.nansum(np.nanmax(np.abs(w_valid), axis=1))))

    nu = dp_states.dual_ascent(a)
    g, _ = dp_states.dual_value(a, nu)
    try:
        return _rounds(a, nu, g, hi_t, lo_t, w_max, w_min, eps, deadline)
    except dp_states.DeadlineReached:
        raise dp_states.DeadlineReached(bound=g) from None


def _rounds(
    a: dp_states.Arrays,
    nu: np.ndarray,
    g: float,
    hi_t: np.ndarray,
    lo_t: np.ndarray,
    w_max: float,
    w_min: float,
    eps: float,
    deadline: float | None,
) -> tuple[np.ndarray | None, dict]:
    """Steps 2-4 of the module docstring from the dual bound ``g`` at ``nu``."""
    info: dict = {"dual_bound": g}
    if g > w_max + eps:
        return None, {**info, "reason": "Lagrangian bound exceeds every architecture"}
    scores = np.where(a.valid, a.w + a.c @ nu, np.inf)
    rc = scores - scores.min(axis=1, keepdims=True)
    known = _initial_gap(a, nu, g, hi_t, lo_t)  # gap of a feasible assignment (inf if none found)
    delta = min(known, _start_gap(a, rc))
    complete_at = w_max - g + float(rc[a.valid].max())  # delta beyond which (R) prunes nothing
    floor = 1e-9 * max(1.0, abs(w_max - w_min))
    rounds = 0
    while True:
        rounds += 1
        full = delta >= complete_at
        keep = a.valid & (rc <= delta + eps) if not full else a.valid
        choices, value, states = _reduced_dp(a, keep, np.inf if full else g + delta + eps, nu, deadline=deadline)
        if choices is not None and (full or value <= g + delta + eps):
            return choices, {**info, "gap": value - g, "rounds": rounds, "max_states": states}
        if full:
            return None, {**info, "reason": "exhaustive DP found no feasible architecture", "rounds": rounds}
        if choices is not None:  # a feasible W* bounds the gap: the next round proves it optimal or improves it
            known = min(known, value - g)
        elif rounds == 3 and not np.isfinite(known) and a.c.shape[2] > 1 and binding_row(a) is not None:
            return None, {**info, "reason": "the bounds exclude each other", "rounds": rounds}
        delta = max(min(2.0 * delta, known), floor)


def _start_gap(a: dp_states.Arrays, rc: np.ndarray) -> float:
    """A first delta that frees about an eighth of the layers (rounds then double it)."""
    second = np.sort(np.where(a.valid, rc, np.inf), axis=1)[:, 1] if a.w.shape[1] > 1 else np.array([np.inf])
    second = second[np.isfinite(second)]
    if second.size == 0:
        return 0.0
    return float(np.sort(second)[max(0, min(second.size, a.w.shape[0] // 8) - 1)])


def _initial_gap(a, nu, g, hi_t, lo_t) -> float:
    """The gap of a slightly over-penalised Lagrangian assignment when one is feasible (else inf)."""
    rows = np.arange(a.w.shape[0])
    for factor in (1.0, 1.000001, 1.001, 1.01, 1.1, 1.5, 2.0, 4.0):
        scores = np.where(a.valid, a.w + a.c @ (nu * factor), np.inf)
        j = scores.argmin(axis=1)
        totals = a.c[rows, j].sum(axis=0)
        if np.all(totals <= hi_t) and np.all(totals >= lo_t):
            return max(float(a.w[rows, j].sum() - g), 0.0)
    return np.inf


def _reduced_dp(
    a: dp_states.Arrays, keep: np.ndarray, ub: float, nu: np.ndarray, *, deadline: float | None = None
) -> tuple[np.ndarray | None, float, int]:
    """Exact DP over the kept variants; single-variant layers are fixed and folded into the bounds."""
    counts = keep.sum(axis=1)
    fixed = counts == 1
    free = np.nonzero(~fixed)[0]
    rows = np.nonzero(fixed)[0]
    fixed_j = keep[rows].argmax(axis=1)
    c0 = a.c[rows, fixed_j].sum(axis=0) if rows.size else np.zeros(a.c.shape[2])
    w0 = float(a.w[rows, fixed_j].sum()) if rows.size else 0.0
    choices = np.zeros(a.w.shape[0], dtype=np.int64)
    choices[rows] = fixed_j
    if free.size == 0:
        hi_t = np.where(np.isfinite(a.hi), a.hi + a.tol, np.inf)
        lo_t = np.where(np.isfinite(a.lo), a.lo - a.tol, -np.inf)
        ok = np.all(c0 <= hi_t) and np.all(c0 >= lo_t)
        return (choices, w0, 1) if ok else (None, np.inf, 1)
    sub_w = np.where(keep[free], a.w[free], np.inf)
    sub = dp_states.Arrays(sub_w, a.c[free], keep[free], a.lo - c0, a.hi - c0, a.tol)
    res = dp_states.run(sub, ub=ub - w0, nus=nu[None, :], max_states=MAX_STATES, deadline=deadline)
    if res.choices is None:
        return None, np.inf, res.states
    choices[free] = res.choices
    return choices, w0 + res.value, res.states


def extreme_row(a: dp_states.Arrays, k: int, rows: list[int], *, minimise: bool) -> float | None:
    """min (or max) of row k's block total subject to the bounds of ``rows`` (None if those are infeasible)."""
    sign = 1.0 if minimise else -1.0
    sub = dp_states.Arrays(
        np.where(a.valid, sign * a.c[:, :, k], np.inf), a.c[:, :, rows], a.valid, a.lo[rows], a.hi[rows], a.tol[rows]
    )
    choices, _ = solve_padded(sub)
    if choices is None:
        return None
    return float(a.c[np.arange(a.w.shape[0]), choices, k].sum())


def binding_row(a: dp_states.Arrays) -> tuple[int, list[int], float, float] | None:
    """The first row (in order) whose bounds cannot be met together with the rows before it.

    Returns ``(k, rows before it, min of row k, max of row k)`` subject to those rows, or None when every row
    is reachable that way. (When both bounds of row k are reachable separately but no total falls between
    them, the full check of rows[:k+1] decides.)
    """
    rows: list[int] = []
    for k in range(a.c.shape[2]):
        low = extreme_row(a, k, rows, minimise=True)
        high = extreme_row(a, k, rows, minimise=False)
        assert low is not None and high is not None, "the rows before k are feasible"
        if low > a.hi[k] + a.tol[k] or high < a.lo[k] - a.tol[k]:
            return k, rows, low, high
        if np.isfinite(a.hi[k]) and np.isfinite(a.lo[k]):
            both = [*rows, k]
            sub = dp_states.Arrays(
                np.where(a.valid, 0.0, np.inf), a.c[:, :, both], a.valid, a.lo[both], a.hi[both], a.tol[both]
            )
            if solve_padded(sub)[0] is None:
                return k, rows, low, high
        rows.append(k)
    return None
