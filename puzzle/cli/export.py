"""``puzzle export``: assemble a child from a block library and write it as a Hugging Face directory."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="assemble a child from a block library (a saved solution or a fresh search) and export it",
        description="Assemble the child chosen by --solution (a search result JSON) or by solving under --max "
        "bounds, then write it as a Hugging Face directory with block_configs, safetensors, the parent's "
        "tokenizer and puzzle_manifest.json. The target must be new or empty unless --force.",
    )
    parser.add_argument("--library", required=True, metavar="DIR", help="block library directory (library.json)")
    how = parser.add_mutually_exclusive_group(required=True)
    how.add_argument("--solution", metavar="FILE", help="a solution JSON (as written by the search)")
    how.add_argument(
        "--max",
        action="append",
        metavar="KEY=V",
        help="upper bound on a whole-model cost, absolute or %% of the parent (e.g. runtime_ms=70%%); repeatable",
    )
    parser.add_argument("--objective", default="kl_div", help="library metric to optimise with --max (default: kl_div)")
    parser.add_argument(
        "--scenario", default=None, help="scenario of unqualified latency/memory keys (default: the library's)"
    )
    parser.add_argument(
        "--parent", default=None, metavar="DIR", help="parent checkpoint (default: the one the library records)"
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="output directory (new or empty)")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    parser.add_argument(
        "--measure",
        action="store_true",
        help="measure the child's latency in the library's scenarios here and record it (with the prediction's error)",
    )
    from puzzle.cli.search import add_target_flag

    add_target_flag(parser)
    parser.set_defaults(func=_export)


def _export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from puzzle.child.export import check_target, export_point
    from puzzle.errors import ConfigError
    from puzzle.library import BlockLibrary
    from puzzle.search import Architecture

    check_target(args.out, force=args.force)
    library = BlockLibrary.load(args.library)
    if args.solution is not None:
        file = Path(args.solution)
        try:
            solution = json.loads(file.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"--solution {file}: cannot read a solution JSON ({exc})") from exc
        if not isinstance(solution, dict) or "layers" not in solution:
            raise ConfigError(f"--solution {file}: not a search solution (it has no 'layers' list)")
        from puzzle.child.assemble import chosen_layers

        arch = Architecture.from_names(library, chosen_layers(solution))
    else:
        from puzzle.cli.search import request_from_flags
        from puzzle.search import run_search

        request = request_from_flags(args, "search")
        request.check(library)
        solution = run_search(library, request).solutions[0].to_dict()
        arch = Architecture(tuple(solution["choices"]))
    out = export_point(
        library,
        args.library,
        arch,
        args.out,
        parent=args.parent,
        objective={"metric": solution.get("metric"), "value": solution.get("objective")},
        constraints=solution.get("constraints", ()),
        solver=solution.get("solver"),
        scenario=solution.get("scenario"),
        measure=args.measure,
        extra={k: solution[k] for k in ("status", "totals", "percent_of_parent") if k in solution},
        force=args.force,
        target=args.target,
    )
    layers = arch.names(library)
    print(f"exported {len(layers)}-layer child to {out}")
    for i, name in enumerate(layers):
        print(f"  layer {i:>3}  {name}")
    if args.measure:
        from puzzle.child.export import read_manifest

        for key, value in read_manifest(out)["measured_costs"].items():
            print(f"  measured {key} = {value:.3f}")
    return 0
