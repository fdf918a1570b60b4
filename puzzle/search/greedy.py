"""The paper's greedy baseline: split every budget evenly over the layers and fill them one by one.

Layers are visited most-sensitive first (sensitivity = how much the objective worsens from the layer's best
to its cheapest variant). Each visited layer may spend its even share of every upper-bounded row plus what
earlier layers left unused; it takes the best-objective variant that fits, or, when none does, the
cheapest one (normalised cost), and the balance (possibly negative) passes on. Lower bounds are not
steered for. The result is verified like any solution and raises ``InfeasibleError`` when it breaks a bound.
"""

from __future__ import annotations

import time

import numpy as np

from puzzle.errors import InfeasibleError
from puzzle.search.problem import Problem
from puzzle.search.solution import Solution, make_solution
from puzzle.search.verify import VerificationError


def greedy_search(problem: Problem) -> Solution:
    start = time.perf_counter()
    n_layers = problem.n_layers
    upper = problem.upper
    bounded = np.isfinite(upper)
    share = np.where(bounded, upper / n_layers, np.inf)
    span = np.array([max(float(np.abs(c[:, k]).max()) for c in problem.costs) or 1.0 for k in range(problem.n_rows)])
    cheapest = [
        int(np.argmin((c[:, bounded] / span[bounded]).sum(axis=1))) if bounded.any() else int(np.argmin(w))
        for c, w in zip(problem.costs, problem.weights, strict=True)
    ]
    sensitivity = np.array([w[cheapest[i]] - w.min() for i, w in enumerate(problem.weights)])
    order = np.argsort(-sensitivity, kind="stable")
    balance = np.zeros(problem.n_rows)
    choices = [0] * n_layers
    for i in order:
        budget = share + balance
        c, w = problem.costs[i], problem.weights[i]
        fits = np.all(c[:, bounded] <= budget[bounded] + problem.tolerance[bounded], axis=1)
        j = int(np.flatnonzero(fits)[np.argmin(w[fits])]) if fits.any() else cheapest[i]
        choices[i] = j
        balance = np.where(bounded, budget - c[j], 0.0)
    try:
        return make_solution(problem, choices, status="feasible", solver="greedy", seconds=time.perf_counter() - start)
    except VerificationError as exc:
        raise InfeasibleError(f"greedy found no feasible architecture ({exc})") from None
