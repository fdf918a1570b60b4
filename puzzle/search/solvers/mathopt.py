"""SCIP and HiGHS through OR-Tools MathOpt (OR-Tools' own HiGHS build: never import ``highspy`` beside it).

The model is the one in ``problem.py`` with float coefficients in the rows' own units (``build_problem`` has
capped outlier costs, so no coefficient is far beyond the row's budget; scaling each row to a span of ~1 was
tried and made HiGHS 6x slower on the 80-layer synthetic library). The solvers' absolute feasibility
tolerance is set to 1e-9, never looser than the problem's; zero gap is requested, and the answer is verified
against the problem's tolerance like any other.
"""

from __future__ import annotations

import math
import time
from datetime import timedelta

from puzzle.errors import InfeasibleError, SolverError, SolveTimeout
from puzzle.search.problem import Problem
from puzzle.search.solution import Solution, make_solution
from puzzle.search.solvers import Solver

FEASIBILITY_TOL = 1e-9


class _MathOptSolver(Solver):
    solver_type: str

    def solve(self, problem: Problem) -> Solution:
        from ortools.math_opt.python import mathopt

        start = time.perf_counter()
        model = mathopt.Model(name="puzzle")
        x = [[model.add_binary_variable() for _ in w] for w in problem.weights]
        for row in x:
            model.add_linear_constraint(mathopt.fast_sum(row) == 1)  # (1)
        tol = problem.tolerance
        for k, r in enumerate(problem.rows):
            expr = mathopt.fast_sum(
                float(c[j, k]) * x[i][j] for i, c in enumerate(problem.costs) for j in range(len(c))
            )
            if math.isfinite(r.upper):
                model.add_linear_constraint(expr <= r.upper + tol[k] / 2)  # (2)
            if math.isfinite(r.lower):
                model.add_linear_constraint(expr >= r.lower - tol[k] / 2)  # (3)
        for y in problem.exclusions:  # (4)
            model.add_linear_constraint(
                mathopt.fast_sum(x[i][j] for i, j in enumerate(y)) <= problem.n_layers - problem.min_distance
            )
        model.minimize(
            mathopt.fast_sum(float(v) * x[i][j] for i, w in enumerate(problem.weights) for j, v in enumerate(w))
        )
        params = mathopt.SolveParameters(
            relative_gap_tolerance=0.0, absolute_gap_tolerance=0.0, threads=1 if self.solver_type == "GSCIP" else None
        )
        params.gscip.real_params["numerics/feastol"] = FEASIBILITY_TOL
        params.highs.double_options["primal_feasibility_tolerance"] = FEASIBILITY_TOL
        params.highs.double_options["mip_feasibility_tolerance"] = FEASIBILITY_TOL
        if self.time_limit:
            params.time_limit = timedelta(seconds=float(self.time_limit))
        try:
            result = mathopt.solve(model, getattr(mathopt.SolverType, self.solver_type), params=params)
        except Exception as exc:  # OR-Tools raises status errors (some of which fail to format) on bad numerics
            raise SolverError(f"{self.name} failed on this problem: {type(exc).__name__}: {exc}") from None
        reason = result.termination.reason
        if reason in (mathopt.TerminationReason.INFEASIBLE, mathopt.TerminationReason.INFEASIBLE_OR_UNBOUNDED):
            raise InfeasibleError("no architecture satisfies the constraints")
        if not result.has_primal_feasible_solution():
            if reason == mathopt.TerminationReason.NO_SOLUTION_FOUND:  # a limit (we set only time) hit
                bound = result.termination.objective_bounds.dual_bound
                bound = problem.objective.sign * bound if math.isfinite(bound) else None
                raise SolveTimeout(self.name, self.time_limit, bound)
            raise SolverError(f"{self.name}: no architecture found ({reason.name.lower()})")
        values = result.variable_values()
        choices = [max(range(len(row)), key=lambda j, row=row: values[row[j]]) for row in x]
        return make_solution(
            problem,
            choices,
            status="optimal" if reason == mathopt.TerminationReason.OPTIMAL else "feasible",
            solver=self.name,
            seconds=time.perf_counter() - start,
        )


class SCIPSolver(_MathOptSolver):
    name = "scip"
    solver_type = "GSCIP"


class HighsSolver(_MathOptSolver):
    name = "highs"
    solver_type = "HIGHS"
