"""Solutions: the chosen variant per layer, objective, whole-model totals, and how they were found.

Every solution is built by ``make_solution``, which verifies it first (``puzzle.search.verify``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from puzzle.search.problem import Problem
from puzzle.search.verify import verify, whole_model_totals


@dataclass(frozen=True)
class Solution:
    """One architecture: ``layers[i]`` is the variant chosen for layer i."""

    status: str  # "optimal" (proved) or "feasible"
    objective: float  # sum of the metric over the chosen variants (in the metric's own sense)
    metric: str
    totals: dict[str, float]  # whole-model totals: scenario-free costs, the scenario's costs, constrained keys
    parent_totals: dict[str, float]
    layers: tuple[str, ...]
    choices: tuple[int, ...]
    solver: str
    seconds: float
    scenario: str | None = None
    constraints: tuple[str, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "objective": self.objective,
            "metric": self.metric,
            "totals": dict(self.totals),
            "parent_totals": dict(self.parent_totals),
            "percent_of_parent": {
                k: (100.0 * v / self.parent_totals[k] if self.parent_totals.get(k) else None)
                for k, v in self.totals.items()
            },
            "layers": list(self.layers),
            "choices": list(self.choices),
            "solver": self.solver,
            "seconds": self.seconds,
            "scenario": self.scenario,
            "constraints": list(self.constraints),
            **({"extra": dict(self.extra)} if self.extra else {}),
        }


def make_solution(
    problem: Problem,
    choices: tuple[int, ...] | np.ndarray,
    *,
    status: str,
    solver: str,
    seconds: float,
    extra: dict[str, Any] | None = None,
) -> Solution:
    """A verified ``Solution`` for ``choices`` (raises ``VerificationError`` if it breaks a bound)."""
    choices = tuple(int(j) for j in choices)
    verify(problem, choices)
    totals, parents = whole_model_totals(problem, choices)
    metric = problem.objective.metric
    objective = math.fsum(problem.library.layers[i].variants[j].metrics[metric] for i, j in enumerate(choices))
    return Solution(
        status=status,
        objective=objective,
        metric=metric,
        totals=totals,
        parent_totals=parents,
        layers=tuple(problem.names[i][j] for i, j in enumerate(choices)),
        choices=choices,
        solver=solver,
        seconds=seconds,
        scenario=problem.scenario,
        constraints=tuple(str(c) for c in problem.constraints),
        extra=dict(extra or {}),
    )
