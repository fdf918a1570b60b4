"""``puzzle library``: import foreign block libraries and inspect ours."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("library", help="import and inspect block libraries")
    sub = parser.add_subparsers(dest="library_command", metavar="SUBCOMMAND", required=True)

    imp = sub.add_parser("import", help="convert a foreign block library into a Puzzle library folder")
    imp.add_argument("path", help="the foreign library (NVlabs: its folder or its block_library.json)")
    imp.add_argument("--format", default="nvlabs", choices=["nvlabs"], help="format of PATH (default: nvlabs)")
    imp.add_argument("--out", required=True, help="folder to write the library into (library.json)")
    imp.set_defaults(func=_import)

    show = sub.add_parser("show", help="summarise a library folder")
    show.add_argument("path", help="library folder (or its library.json)")
    show.add_argument("--json", action="store_true", help="print the whole library as JSON")
    show.set_defaults(func=_show)

    from puzzle.cli import library_build

    library_build.register(sub)


def _import(args: argparse.Namespace) -> int:
    from puzzle.library import import_nvlabs

    library = import_nvlabs(args.path)
    target = library.save(args.out)
    print(
        f"imported {library.n_layers} layers, {library.n_variants} variants -> {target} (digest {library.digest()[:12]})"
    )
    return 0


def _show(args: argparse.Namespace) -> int:
    from puzzle.library import BlockLibrary

    library = BlockLibrary.load(args.path)
    if args.json:
        data = library.to_dict()
        data["digest"] = library.digest()
        json.dump(data, sys.stdout, sort_keys=True, ensure_ascii=False)
        sys.stdout.write("\n")
        return 0

    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(
        f"[bold]block library[/bold] {args.path}  digest {library.digest()[:12]}  schema {library.schema_version}"
    )
    console.print(
        f"family {library.family}  hidden {library.hidden_size}  layers {library.n_layers}  variants {library.n_variants}"
    )
    console.print(f"metrics: {', '.join(library.metric_keys)}")
    console.print(f"costs: {', '.join(library.all_cost_keys())}")
    for s in library.scenarios.values():
        mark = " (default)" if s.name == library.default_scenario else ""
        console.print(f"scenario {s.name}{mark}: {s.kind} batch {s.batch_size} x {s.seq_len} on {s.device} ({s.dtype})")
    for key, note in library.notes.items():
        if isinstance(note, str):
            console.print(f"note {key}: {note}")
    metric = library.metric_keys[0] if library.metric_keys else None
    table = Table("layer", "variants", "parent", f"best non-parent {metric}" if metric else "")
    for layer in library.layers:
        others = [v for v in layer.variants if not v.is_parent]
        best = min(others, key=lambda v: v.metrics[metric]) if others and metric else None
        table.add_row(
            str(layer.index),
            str(len(layer.variants)),
            " ".join(layer.parent.name.split()),
            f"{best.metrics[metric]:.4g}  {' '.join(best.name.split())}" if best else "",
        )
    console.print(table)
    return 0
