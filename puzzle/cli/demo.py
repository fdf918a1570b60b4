"""``puzzle demo``: the whole pipeline on the embedded default (tiny parent -> library -> search -> GKD -> export)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on the embedded tiny-llama parent and print Puzzle vs baselines",
        description="Train (or reuse) the tiny-llama parent on the Python standard library, build its block library "
        "on local Ray, compute the Pareto frontier, pick children at 90/70/50%% of the parent's latency with the MIP "
        "and three baselines (uniform width, depth pruning, greedy), heal each by GKD with the same tokens, evaluate "
        "them (held-out perplexity, KL to the parent, measured vs predicted latency), export the Puzzle children and "
        "write report.json + frontier.html. Re-running with the same --out reuses every finished stage.",
    )
    parser.add_argument("--out", default="runs/demo", help="working directory (default: runs/demo)")
    parser.add_argument("--preset", default=None, help="parent preset: tiny-llama (default) or tiny-hybrid")
    parser.add_argument("--corpus", default=None, help="text file, folder of text files or .jsonl (default: stdlib)")
    parser.add_argument(
        "--budgets",
        default=None,
        help="latency budgets as fractions of the parent's, e.g. 0.8,0.6,0.4 (default 0.9,0.7,0.5)",
    )
    parser.add_argument(
        "--fuse-max-kl",
        type=float,
        default=None,
        help="also FFN-fuse each Puzzle+GKD child within this KL to the parent (nats/token) and report it",
    )
    parser.add_argument(
        "--target",
        default=None,
        help="deployment target the children must load in (default: vllm; 'any' for no restriction)",
    )
    parser.add_argument("--steps", type=int, default=None, help="parent training steps (default: the preset's)")
    parser.add_argument("--bld-tokens", type=int, default=None, help="BLD tokens per unit (default 65536)")
    parser.add_argument("--gkd-tokens", type=int, default=None, help="GKD tokens per child (default 131072)")
    parser.add_argument("--workers", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    parser.add_argument(
        "--executor", choices=["ray", "local"], default="ray", help="where library tasks run (default: local Ray)"
    )
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from puzzle.cli.progress import console
    from puzzle.errors import ConfigError
    from puzzle.pipeline.demo import DemoConfig, run_demo
    from puzzle.pipeline.report import format_table
    from puzzle.progress import RichProgress

    for flag in ("steps", "bld_tokens", "gkd_tokens", "workers"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise ConfigError(f"--{flag.replace('_', '-')} must be a positive integer, got {value}")
    cfg = DemoConfig(train_steps=args.steps, executor=args.executor, workers=args.workers)
    cfg = replace(cfg, **_data_options(args))
    if args.bld_tokens is not None:
        cfg = replace(cfg, build=replace(cfg.build, bld=replace(cfg.build.bld, tokens=args.bld_tokens)))
    if args.gkd_tokens is not None:
        cfg = replace(cfg, gkd=replace(cfg.gkd, tokens=args.gkd_tokens))
    out = console()
    with RichProgress(console=out) as progress:
        result = run_demo(args.out, cfg, progress=progress, on_status=lambda m: out.print(f"[dim]{m}[/dim]"))
    print(format_table(result.rows))
    print(f"report   {result.out_dir}/report.json")
    print(f"frontier {result.out_dir}/frontier.html")
    for budget, path in result.exports.items():
        print(f"export   {path}  (Puzzle+GKD at {float(budget):.0%} of the parent's latency)")
    return 0


def _data_options(args: argparse.Namespace) -> dict:
    """``--preset``, ``--corpus``, ``--budgets`` and ``--target`` as DemoConfig fields (ConfigError when malformed)."""
    from pathlib import Path

    from puzzle.errors import ConfigError
    from puzzle.presets import get_preset
    from puzzle.targets import TARGETS

    options: dict = {}
    if args.preset is not None:
        get_preset(args.preset)  # ConfigError naming the known presets
        options["preset"] = args.preset
    if args.corpus is not None:
        if not Path(args.corpus).exists():
            raise ConfigError(f"--corpus {args.corpus}: no such file or folder")
        options["corpus"] = str(Path(args.corpus).resolve())
    if args.budgets is not None:
        try:
            budgets = tuple(float(b) for b in args.budgets.split(","))
        except ValueError:
            raise ConfigError(f"--budgets {args.budgets!r}: expected fractions like 0.8,0.6,0.4") from None
        if not budgets or not all(0 < b <= 1 for b in budgets):
            raise ConfigError(f"--budgets {args.budgets!r}: every budget must be a fraction in (0, 1]")
        options["budgets"] = budgets
    if args.fuse_max_kl is not None:
        if not args.fuse_max_kl >= 0:
            raise ConfigError(f"--fuse-max-kl must be a number >= 0, got {args.fuse_max_kl}")
        options["fuse_max_kl"] = args.fuse_max_kl
    if args.target is not None:
        if args.target != "any" and args.target not in TARGETS:
            raise ConfigError(f"--target {args.target!r}: choose one of {', '.join(TARGETS)} or any")
        options["target"] = None if args.target == "any" else args.target
    return options
