"""Independent verification: re-sum a solution's costs from the library's own ``Variant`` objects.

Solvers see per-layer numpy arrays; this module does not use them. It looks every cost up again in the
library (``math.fsum``, whole-model = blocks + non-block) and checks each bound with the problem's
tolerance, so a solver bug or a wrong array cannot produce an architecture that breaks a constraint.
"""

from __future__ import annotations

import math

import numpy as np

from puzzle.errors import VerificationError
from puzzle.search.problem import COUNT_KEYS, Problem, cost_column

__all__ = ["VerificationError", "report_keys", "verify", "verify_points", "whole_model_totals"]


def report_keys(problem: Problem) -> list[str]:
    """Cost keys a solution reports: scenario-free costs, the scenario's costs, then every constrained key."""
    lib = problem.library
    keys = list(lib.cost_keys)
    if problem.scenario is not None:
        keys += list(lib.scenario_cost_keys(problem.scenario))
    for row in problem.rows:
        name, _, scen = row.key.partition("@")
        short = name if scen == problem.scenario or row.key in COUNT_KEYS else row.key
        if short not in keys:
            keys.append(short)
    return keys


def whole_model_totals(problem: Problem, choices: tuple[int, ...]) -> tuple[dict[str, float], dict[str, float]]:
    """``(totals, parent totals)`` re-summed from the library's variants (blocks + non-block)."""
    lib = problem.library
    totals, parents = {}, {}
    for key in report_keys(problem):
        _, _, cols, offset = cost_column(lib, key, problem.scenario)
        totals[key] = math.fsum(float(cols[i][j]) for i, j in enumerate(choices)) + offset
        parents[key] = math.fsum(float(cols[i][layer.parent_index]) for i, layer in enumerate(lib.layers)) + offset
    return totals, parents


def verify(problem: Problem, choices: tuple[int, ...]) -> dict[str, float]:
    """Re-sum an assignment's costs from the library and check every bound; returns the whole-model totals."""
    lib = problem.library
    if len(choices) != lib.n_layers:
        raise VerificationError(f"assignment has {len(choices)} layers, the library {lib.n_layers}")
    for i, j in enumerate(choices):
        if not 0 <= j < len(lib.layers[i].variants):
            raise VerificationError(f"layer {i}: variant index {j} out of range")
    tol = problem.tolerance
    for k, row in enumerate(problem.rows):
        _, _, cols, offset = cost_column(lib, row.key, problem.scenario)
        total = math.fsum(float(cols[i][j]) for i, j in enumerate(choices)) + offset
        if total > row.upper + offset + tol[k] or total < row.lower + offset - tol[k]:
            bounds = " and ".join(row.labels)
            raise VerificationError(f"solution breaks {bounds}: {row.key} totals {total:g}")
    if problem.exclusions:
        for y in problem.exclusions:
            differ = sum(a != b for a, b in zip(y, choices, strict=True))
            if differ < problem.min_distance:
                raise VerificationError(
                    f"solution differs from an excluded one in {differ} < {problem.min_distance} layers"
                )
    return whole_model_totals(problem, choices)[0]


def verify_points(problem: Problem, choices: np.ndarray) -> None:
    """Every assignment (row) of ``choices`` (P, L) meets every bound, re-summed from the library (vectorised).

    For frontiers, whose points are many: a pairwise float sum instead of ``fsum``, well inside the tolerance.
    """
    choices = np.asarray(choices, dtype=np.int64).reshape(-1, problem.n_layers)
    if not len(choices):
        return
    tol = problem.tolerance
    for k, row in enumerate(problem.rows):
        _, _, cols, offset = cost_column(problem.library, row.key, problem.scenario)
        totals = np.sum([np.asarray(c, dtype=np.float64)[choices[:, i]] for i, c in enumerate(cols)], axis=0) + offset
        bad = np.nonzero((totals > row.upper + offset + tol[k]) | (totals < row.lower + offset - tol[k]))[0]
        if bad.size:
            bounds = " and ".join(row.labels)
            raise VerificationError(f"point {int(bad[0])} breaks {bounds}: {row.key} totals {totals[bad[0]]:g}")
