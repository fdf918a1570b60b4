"""Solver backends behind one interface: ``Solver.solve(problem) -> Solution``.

    dp      Lagrangian reduced-cost fixing + Pareto dynamic programming (``solvers/dp.py``): exact, the default
    cpsat   OR-Tools CP-SAT on integer-scaled costs (``solvers/cpsat.py``)
    scip    SCIP through OR-Tools MathOpt (``solvers/mathopt.py``)
    highs   HiGHS through OR-Tools MathOpt (never the ``highspy`` package: its symbols clash with OR-Tools')
    cbc     CBC bundled with PuLP (``solvers/pulp_cbc.py``)

Every backend returns a verified ``Solution`` (``make_solution``) or raises ``InfeasibleError``; the
diagnosis of *which* constraint binds is done once, in ``puzzle.search.diagnose``.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from typing import ClassVar

from puzzle.errors import ConfigError
from puzzle.search.problem import Problem
from puzzle.search.solution import Solution

DEFAULT_SOLVER = "dp"
_BACKENDS = {
    "dp": ("puzzle.search.solvers.dp", "DPSolver"),
    "cpsat": ("puzzle.search.solvers.cpsat", "CPSATSolver"),
    "scip": ("puzzle.search.solvers.mathopt", "SCIPSolver"),
    "highs": ("puzzle.search.solvers.mathopt", "HighsSolver"),
    "cbc": ("puzzle.search.solvers.pulp_cbc", "CBCSolver"),
}
SOLVER_NAMES: tuple[str, ...] = tuple(_BACKENDS)


class Solver(ABC):
    """A backend. ``exact``: proves optimality; ``supports_exclusions``: handles diversity cuts (4)."""

    name: ClassVar[str]
    exact: ClassVar[bool] = True
    supports_exclusions: ClassVar[bool] = True

    def __init__(self, time_limit: float | None = None) -> None:
        self.time_limit = time_limit

    @abstractmethod
    def solve(self, problem: Problem) -> Solution:
        """The best architecture for ``problem`` (InfeasibleError when there is none)."""


def get_solver(name: str | Solver | None = None, *, time_limit: float | None = None) -> Solver:
    if isinstance(name, Solver):
        return name
    name = name or DEFAULT_SOLVER
    if name not in _BACKENDS:
        raise ConfigError(f"unknown solver {name!r}; choose one of {', '.join(SOLVER_NAMES)}")
    module, cls = _BACKENDS[name]
    return getattr(importlib.import_module(module), cls)(time_limit=time_limit)
