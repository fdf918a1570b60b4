"""``puzzle search`` and ``puzzle frontier``: choose architectures from a block library."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from puzzle.search.problem import Constraint
    from puzzle.search.request import SearchRequest


def _constraints(args: argparse.Namespace) -> tuple[Constraint, ...]:
    """``--max KEY=V`` / ``--min KEY=V`` flags as parsed constraints (ConfigError naming a malformed one)."""
    from puzzle.errors import ConfigError
    from puzzle.search.problem import parse_constraint

    out = []
    for op, items in (("<=", getattr(args, "max", None) or []), (">=", getattr(args, "min", None) or [])):
        for item in items:
            key, sep, value = item.rpartition("=")
            if not sep or not key or not value:
                raise ConfigError(
                    f"malformed bound {item!r}: expected KEY=VALUE, e.g. runtime_ms=50% or memory_mib=40000"
                )
            out.append(parse_constraint(f"{key}{op}{value}"))
    return tuple(out)


def request_from_flags(args: argparse.Namespace, mode: str) -> SearchRequest:
    """The ``SearchRequest`` the flags of ``puzzle search`` / ``puzzle frontier`` (or ``puzzle export --max``) ask
    for; flags a command lacks take their defaults."""
    from puzzle.search.request import SearchRequest

    if mode == "frontier":
        return SearchRequest(
            mode="frontier",
            objective=args.objective,
            constraints=_constraints(args),
            scenario=args.scenario,
            axis=args.axis,
            target=getattr(args, "target", None),
        )
    n, diversity = getattr(args, "solutions", 1), getattr(args, "diversity", 1)
    return SearchRequest(
        mode="diverse" if n > 1 or diversity > 1 else "solve",
        objective=args.objective,
        constraints=_constraints(args),
        scenario=args.scenario,
        solver=getattr(args, "solver", None),
        n=n,
        diversity=diversity,
        time_limit=getattr(args, "time_limit", None),
        target=getattr(args, "target", None),
    )


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--library", required=True, help="block library folder")
    parser.add_argument("--objective", default="kl_div", help="metric to optimise (min:NAME / max:NAME to force)")
    parser.add_argument("--max", action="append", metavar="KEY=V", help="upper bound (V absolute or P%% of the parent)")
    parser.add_argument("--min", action="append", metavar="KEY=V", help="lower bound (same forms)")
    parser.add_argument("--scenario", help="scenario for unqualified latency/memory keys (default: the library's)")
    add_target_flag(parser)


def add_target_flag(parser: argparse.ArgumentParser) -> None:
    from puzzle.targets import TARGETS

    parser.add_argument(
        "--target",
        choices=list(TARGETS),
        help="deployment target: choose (and export) only children this engine loads (default: any)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    search = subparsers.add_parser("search", help="the best architecture under constraints (exact MIP)")
    _common(search)
    search.add_argument("--solver", help="dp (default, exact), cpsat, scip, highs, cbc, or greedy (baseline)")
    search.add_argument("--solutions", type=int, default=1, help="number of diverse solutions")
    search.add_argument("--diversity", type=int, default=1, help="layers each solution must differ in")
    search.add_argument("--time-limit", type=float, help="seconds per MIP solve")
    search.add_argument("--json", action="store_true", help="print JSON")
    search.set_defaults(func=_search)

    front = subparsers.add_parser("frontier", help="exact Pareto frontier of the objective against one cost")
    _common(front)
    front.add_argument("--axis", required=True, help="cost key on the x axis, e.g. runtime_ms")
    out = front.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print JSON (points with per-layer choices)")
    out.add_argument("--csv", action="store_true", help="print CSV: axis,percent_of_parent,objective")
    out.add_argument("--plot", metavar="FILE.html", help="write a self-contained plotly HTML chart")
    front.set_defaults(func=_frontier)


def _search(args: argparse.Namespace) -> int:
    from puzzle.library import BlockLibrary
    from puzzle.search import run_search

    request = request_from_flags(args, "search")
    library = BlockLibrary.load(args.library)
    request.check(library)  # every unknown name, before solving
    solutions = run_search(library, request).solutions
    if args.json:
        data = (
            solutions[0].to_dict()
            if len(solutions) == 1 and args.solutions == 1
            else {"solutions": [s.to_dict() for s in solutions]}
        )
        json.dump(data, sys.stdout)
        sys.stdout.write("\n")
        return 0
    for n, s in enumerate(solutions):
        print(f"solution {n + 1}: {s.metric} {s.objective:.6f} ({s.status}, {s.solver}, {s.seconds * 1000:.1f} ms)")
        for key, value in s.totals.items():
            parent = s.parent_totals.get(key)
            pct = f" ({100 * value / parent:.2f}% of parent)" if parent else ""
            print(f"  {key}: {value:.6g}{pct}")
        for i, name in enumerate(s.layers):
            print(f"  layer {i}: {' '.join(name.split())}")
    if len(solutions) < args.solutions:
        print(f"only {len(solutions)} solutions exist {args.diversity} layers apart", file=sys.stderr)
    return 0


def _frontier(args: argparse.Namespace) -> int:
    from puzzle.library import BlockLibrary
    from puzzle.search import run_search

    request = request_from_flags(args, "frontier")
    library = BlockLibrary.load(args.library)
    request.check(library)
    front = run_search(library, request, points=False).frontier
    assert front is not None
    if args.json:
        json.dump(front.to_dict(with_layers=False), sys.stdout)
        sys.stdout.write("\n")
    elif args.csv:
        sys.stdout.write(f"{front.axis},percent_of_parent,{front.metric}\n")
        for x, y in zip(front.axis_values, front.objectives, strict=True):
            sys.stdout.write(f"{x!r},{100 * x / front.parent_axis if front.parent_axis else ''},{y!r}\n")
    elif args.plot:
        _plot(front, args.plot)
        print(f"{len(front)} points -> {args.plot}")
    else:
        print(f"{len(front)} optimal points of {front.metric} vs {front.axis} in {front.seconds * 1000:.0f} ms")
        step = max(1, len(front) // 20)
        for p in range(0, len(front), step):
            x = front.axis_values[p]
            print(
                f"  {front.axis} {x:.6g} ({100 * x / front.parent_axis:.2f}%)  {front.metric} {front.objectives[p]:.6f}"
            )
    return 0


def _plot(front, path: str) -> None:
    from pathlib import Path

    import plotly.graph_objects as go

    from puzzle.files import write_text

    pct = [100 * x / front.parent_axis for x in front.axis_values] if front.parent_axis else list(front.axis_values)
    fig = go.Figure(go.Scatter(x=pct, y=list(front.objectives), mode="lines+markers", line_shape="hv", name="optimal"))
    fig.update_layout(
        title=f"Exact Pareto frontier: {front.metric} vs {front.axis}"
        + (f" ({', '.join(front.constraints)})" if front.constraints else ""),
        xaxis_title=f"{front.axis} (% of parent)" if front.parent_axis else front.axis,
        yaxis_title=front.metric,
    )
    write_text(Path(path), fig.to_html(include_plotlyjs=True, full_html=True))
