"""Architecture-search benchmark, everything side by side in one process.

    python bench/search.py [--quick]

On the NVlabs Llama-3.3-70B library (shared data; skipped when absent): for runtime <= 90/70/50/30 % with
memory <= 80 %, each backend's solve time and objective (dp = the exact default; the others are MIPs), the
greedy baseline's gap; the exact frontier (size, time) without and with the memory bound; then the same
on a synthetic 80-layer library with 6 attention x 30 FFN variants per layer (180 pairs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from puzzle.errors import PuzzleError
from puzzle.library import import_nvlabs
from puzzle.search import frontier, greedy, solve
from tests.search.synthetic import decoupled_library
from tests.shared_data import shared_data_dir

BUDGETS = (90, 70, 50, 30)


def timed(fn, repeats: int = 1):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def table(
    lib, title: str, solvers: list[str], repeats: int, memory: str = "memory_mib<=80%", frontier_repeats: int = 1
) -> None:
    print(f"\n## {title}\n")
    print(
        "| runtime budget | "
        + " | ".join(f"{s} ms | {s} objective" for s in solvers)
        + " | greedy objective | greedy gap |"
    )
    print("|---|" + "---|---|" * len(solvers) + "---|---|")
    for budget in BUDGETS:
        cons = [f"runtime_ms<={budget}%", memory]
        cells, best = [], None
        for name in solvers:
            try:
                sol, secs = timed(
                    lambda name=name, cons=cons: solve(lib, "kl_div", cons, solver=name, time_limit=120),
                    repeats if name == "dp" else 1,
                )
                cells.append(
                    f"{secs * 1000:.1f} | {sol.objective:.6f}{'' if sol.status == 'optimal' else ' (' + sol.status + ')'}"
                )
                best = sol.objective if best is None else min(best, sol.objective)
            except PuzzleError as exc:
                cells.append(f"- | {str(exc)[:40]}")
        try:
            g = greedy(lib, "kl_div", cons).objective
            gap = f"+{100 * (g - best) / best:.1f}%" if best else "-"
            cells.append(f"{g:.6f} | {gap}")
        except PuzzleError:
            cells.append("infeasible | -")
        print(f"| {budget}% | " + " | ".join(cells) + " |")
    for cons in ([], [memory]):
        try:
            front, secs = timed(lambda cons=cons: frontier(lib, "kl_div", "runtime_ms", cons), frontier_repeats)
            print(
                f"\nfrontier kl_div vs runtime_ms {cons or '(no other bound)'}: {len(front)} exact points in "
                f"{secs * 1000:.0f} ms (median of {frontier_repeats})"
            )
            for budget in BUDGETS:
                p = front.best_within(budget / 100 * front.parent_axis)
                print(
                    f"  at runtime <= {budget}%: {front.objectives[p]:.6f}"
                    if p is not None
                    else f"  at {budget}%: none"
                )
        except PuzzleError as exc:
            print(f"\nfrontier {cons}: {exc}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="dp, highs and scip only")
    parser.add_argument("--repeats", type=int, default=5, help="dp repeats (median reported)")
    args = parser.parse_args()
    solvers = ["dp", "highs", "scip"] if args.quick else ["dp", "highs", "scip", "cpsat", "cbc"]
    data = shared_data_dir()
    folder = data / "nvlabs-puzzle-llama-3.3-70b" if data else None
    if folder and folder.is_dir():
        lib = import_nvlabs(folder)
        table(
            lib,
            f"Llama-3.3-70B NVlabs library ({lib.n_layers} layers x 16 variants), memory <= 80 %",
            solvers,
            args.repeats,
            frontier_repeats=args.repeats,
        )
    else:
        print("NVlabs library not found (set PUZZLE_SHARED_DATA); skipping the 70B table")
    synth = decoupled_library(80, 6, 30, seed=0)
    table(
        synth,
        "synthetic 80 layers x (6 attention x 30 FFN = 180 variants), memory <= 80 %",
        ["dp", "highs"],
        args.repeats,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
