"""Why is a problem infeasible? Name the binding constraint and the best value it can reach.

Constraint rows are added one at a time in the user's order; the first row whose addition makes the problem
infeasible is the binding one. Its best achievable value is then computed *subject to the rows before it*
(exactly: the same DP with that row's cost as objective), so the message says both what cannot be met and
what to relax it to, e.g.

    infeasible: runtime_ms<=10% cannot be met together with memory_mib<=80%: the smallest runtime_ms
    achievable is 9812.3 (15.01% of the parent); relax it to at least that
"""

from __future__ import annotations

import math

import numpy as np

from puzzle.errors import InfeasibleError
from puzzle.search.problem import Problem, cost_column
from puzzle.search.solvers import dp_states
from puzzle.search.solvers.dp import binding_row


def library_costs(problem: Problem) -> tuple[np.ndarray, ...]:
    """Per-layer (n_i, K) costs as the library has them (``problem.costs`` has outliers capped)."""
    cols = [cost_column(problem.library, row.key, problem.scenario)[2] for row in problem.rows]
    return tuple(np.stack([c[i] for c in cols], axis=1) if cols else c0 for i, c0 in enumerate(problem.costs))


def diagnose(problem: Problem) -> InfeasibleError:
    """The ``InfeasibleError`` to raise for an infeasible ``problem`` (binding constraint + best value)."""
    a = dp_states.pad(problem.weights, library_costs(problem), problem.lower, problem.upper, problem.tolerance)
    try:
        found = binding_row(a)
    except dp_states.StateLimit:
        found = None
    if found is None:
        return InfeasibleError("infeasible: no architecture satisfies the constraints together", constraint=None)
    k, rows, low, high = found
    row = problem.rows[k]
    label = " and ".join(row.labels)
    others = ", ".join(lbl for r in rows for lbl in problem.rows[r].labels)
    together = f" together with {others}" if others else ""
    upper, lower = row.upper + row.offset, row.lower + row.offset
    low, high = low + row.offset, high + row.offset
    if math.isfinite(lower) and high < lower - problem.tolerance[k]:
        best, word, hint = high, "largest", "at most"
    else:
        best, word, hint = low, "smallest", "at least"
    del upper
    pct = f" ({100.0 * best / row.parent_total:.4g}% of the parent)" if row.parent_total else ""
    return InfeasibleError(
        f"infeasible: {label} cannot be met{together}: the {word} {row.key} achievable is {best:.6g}{pct}; "
        f"relax it to {hint} that",
        constraint=label,
        minimum=best,
    )
