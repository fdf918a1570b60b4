"""CBC, bundled with PuLP. Rows scaled to span ~1, tolerances 1e-9, zero gap; the answer is verified like any other."""

from __future__ import annotations

import math
import time

from puzzle.errors import InfeasibleError, SolverError, SolveTimeout
from puzzle.search.problem import Problem
from puzzle.search.solution import Solution, make_solution
from puzzle.search.solvers import Solver


class CBCSolver(Solver):
    name = "cbc"

    def solve(self, problem: Problem) -> Solution:
        import pulp

        start = time.perf_counter()
        model = pulp.LpProblem("puzzle", pulp.LpMinimize)
        x = [[pulp.LpVariable(f"x{i}_{j}", cat="Binary") for j in range(len(w))] for i, w in enumerate(problem.weights)]
        model += pulp.lpSum(float(v) * x[i][j] for i, w in enumerate(problem.weights) for j, v in enumerate(w))
        for row in x:
            model += pulp.lpSum(row) == 1  # (1)
        tol = problem.tolerance
        for k, r in enumerate(problem.rows):
            s = 1e-9 / tol[k]  # rows scaled to span ~1, so CBC's tolerances (1e-9) match the problem's
            expr = pulp.lpSum(float(c[j, k] * s) * x[i][j] for i, c in enumerate(problem.costs) for j in range(len(c)))
            if math.isfinite(r.upper):
                model += expr <= (r.upper + tol[k] / 2) * s  # (2)
            if math.isfinite(r.lower):
                model += expr >= (r.lower - tol[k] / 2) * s  # (3)
        for y in problem.exclusions:  # (4)
            model += pulp.lpSum(x[i][j] for i, j in enumerate(y)) <= problem.n_layers - problem.min_distance
        cmd = pulp.PULP_CBC_CMD(
            msg=False,
            gapRel=0.0,
            gapAbs=0.0,
            timeLimit=self.time_limit,
            options=["primalTolerance 1e-9", "integerTolerance 1e-9"],
        )
        model.solve(cmd)
        status = pulp.LpStatus[model.status]
        if status == "Infeasible":
            raise InfeasibleError("no architecture satisfies the constraints")
        if status == "Not Solved" and model.sol_status != 2:  # stopped by the time limit without a solution
            raise SolveTimeout(self.name, self.time_limit)  # (PuLP reports no bound)
        if status != "Optimal" and status != "Not Solved":
            raise SolverError(f"cbc failed on this problem: {status}")
        choices = [max(range(len(row)), key=lambda j, row=row: row[j].varValue or 0.0) for row in x]
        return make_solution(
            problem,
            choices,
            status="optimal" if status == "Optimal" else "feasible",
            solver=self.name,
            seconds=time.perf_counter() - start,
        )
