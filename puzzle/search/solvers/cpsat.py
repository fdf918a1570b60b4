"""OR-Tools CP-SAT on integer-scaled data.

CP-SAT needs integers: every cost row k is scaled by s_k = 2^e so that sum_i max_j |c| * s_k ~ 2^50 and
rounded; bound hi' = floor((hi + tol) * s_k), lo' = ceil((lo - tol) * s_k). Rounding moves each total by at
most L/2 units, i.e. ~L * 2^-51 of the row's scale, far below the 1e-9 tolerance, so the scaled model has
the same optimum. The objective is scaled the same way (2^50 over its span) and CP-SAT is asked to prove a
zero gap; the reported objective is re-summed from the library in floats.
"""

from __future__ import annotations

import math
import time

import numpy as np

from puzzle.errors import InfeasibleError, SolverError, SolveTimeout
from puzzle.search.problem import Problem
from puzzle.search.solution import Solution, make_solution
from puzzle.search.solvers import Solver


def _scale(values: list[np.ndarray], bits: int) -> float:
    span = sum(float(np.abs(v).max()) if v.size else 0.0 for v in values)
    return 2.0 ** (bits - math.ceil(math.log2(span))) if span > 0 else 1.0


class CPSATSolver(Solver):
    name = "cpsat"

    def solve(self, problem: Problem) -> Solution:
        from ortools.sat.python import cp_model

        start = time.perf_counter()
        model = cp_model.CpModel()
        x = [[model.new_bool_var(f"x{i}_{j}") for j in range(len(w))] for i, w in enumerate(problem.weights)]
        for row in x:
            model.add_exactly_one(row)  # (1)
        tol = problem.tolerance
        for k, r in enumerate(problem.rows):
            col = [c[:, k] for c in problem.costs]
            s = _scale(col, 50)
            expr = sum(
                round(float(v) * s) * x[i][j]
                for i, ci in enumerate(col)
                for j, v in enumerate(ci)
                if round(float(v) * s)
            )
            if math.isfinite(r.upper):
                model.add(expr <= math.floor((r.upper + tol[k]) * s))  # (2)
            if math.isfinite(r.lower):
                model.add(expr >= math.ceil((r.lower - tol[k]) * s))  # (3)
        for y in problem.exclusions:  # (4)
            model.add(sum(x[i][j] for i, j in enumerate(y)) <= problem.n_layers - problem.min_distance)
        shifted = [w - w.min() for w in problem.weights]
        s = _scale(shifted, 50)
        model.minimize(
            sum(
                round(float(v) * s) * x[i][j]
                for i, wi in enumerate(shifted)
                for j, v in enumerate(wi)
                if round(float(v) * s)
            )
        )
        solver = cp_model.CpSolver()
        solver.parameters.num_workers = 2
        solver.parameters.relative_gap_limit = 0.0
        solver.parameters.absolute_gap_limit = 0.0
        if self.time_limit:
            solver.parameters.max_time_in_seconds = float(self.time_limit)
        status = solver.solve(model)
        if status == cp_model.UNKNOWN:  # CP-SAT stops UNKNOWN only on a limit: no answer, no proof
            bound = solver.best_objective_bound / s + sum(float(w.min()) for w in problem.weights)
            bound = problem.objective.sign * bound if math.isfinite(bound) else None
            raise SolveTimeout(self.name, self.time_limit, bound)
        if status == cp_model.MODEL_INVALID:
            raise SolverError(f"cpsat rejected the model: {model.validate() or 'invalid'}")
        if status == cp_model.INFEASIBLE:
            raise InfeasibleError("no architecture satisfies the constraints")
        choices = [next(j for j, v in enumerate(row) if solver.boolean_value(v)) for row in x]
        return make_solution(
            problem,
            choices,
            status="optimal" if status == cp_model.OPTIMAL else "feasible",
            solver=self.name,
            seconds=time.perf_counter() - start,
        )
