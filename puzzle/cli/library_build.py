"""``puzzle library build``: build a block library from a parent checkpoint (prune, BLD, score, profile)."""

from __future__ import annotations

import argparse
import os
import time

from puzzle.targets import TARGETS


def register(library_subparsers: argparse._SubParsersAction) -> None:
    p = library_subparsers.add_parser(
        "build",
        help="build a block library from a parent checkpoint",
        description="Prune, distill (BLD), score and profile every variant of every parent layer. Re-run the same "
        "command after an interruption: finished (layer, variant) work is kept and skipped.",
    )
    p.add_argument("--parent", required=True, help="parent Hugging Face directory (config, safetensors, tokenizer)")
    p.add_argument("--out", required=True, help="library folder to write (library.json, weights/, work/)")
    p.add_argument("--space", help="search-space YAML (default: the parent family's default space)")
    p.add_argument(
        "--target",
        choices=list(TARGETS),
        help="build only variants this serving engine can load in an exported child (default: all variants)",
    )
    p.add_argument("--workers", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    p.add_argument(
        "--executor",
        choices=["auto", "local", "ray"],
        default="auto",
        help="where tasks run: ray (local cluster, or RAY_ADDRESS), local (in-process); auto: local when --workers 1",
    )
    p.add_argument("--corpus", help="text for distillation and scoring (default: the Python standard library)")
    g = p.add_argument_group("distillation")
    g.add_argument("--tokens", type=int, help="BLD token budget per unit (default 65536)")
    g.add_argument("--lr", type=float, help="BLD learning rate (default 5e-4)")
    g.add_argument("--batch", type=int, help="BLD sequences per step (default 8)")
    g.add_argument("--seed", type=int, help="BLD seed (default 0)")
    g.add_argument("--kv-method", choices=["mean", "importance"], help="KV-head reduction init (default importance)")
    g.add_argument("--linear-method", choices=["lstsq", "product"], help="linear replacement init (default lstsq)")
    d = p.add_argument_group("data and profiling")
    d.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default 128)")
    d.add_argument("--distill-sequences", type=int, default=256, help="distillation sequences (default 256)")
    d.add_argument("--holdout-sequences", type=int, default=16, help="held-out scoring sequences (default 16)")
    d.add_argument(
        "--held-out-fraction", type=float, default=0.05, help="corpus share held out for scoring (default 0.05)"
    )
    d.add_argument("--repeats", type=int, default=10, help="timed runs per latency measurement (default 10)")
    d.add_argument("--device", default="cpu", help="device that runs and is profiled (default cpu)")
    p.set_defaults(func=_build)


def _build(args: argparse.Namespace) -> int:
    from puzzle.cli.progress import console
    from puzzle.errors import ConfigError
    from puzzle.library.build import BuildConfig, build_library, with_overrides
    from puzzle.library.executor import make_executor
    from puzzle.library.space import load_space
    from puzzle.progress import RichProgress

    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    space = load_space(args.space) if args.space else None
    if args.target is not None:
        from puzzle.library.space import default_space
        from puzzle.model.hf_config import arch_from_hf_config, read_config
        from puzzle.targets import restrict_space

        parent_arch = arch_from_hf_config(read_config(args.parent))
        space = restrict_space(space or default_space(parent_arch.family), args.target, parent_arch)
    kind = args.executor
    if kind == "auto":
        kind = "local" if args.workers == 1 and not os.environ.get("RAY_ADDRESS") else "ray"
    config = with_overrides(
        BuildConfig(
            seq_len=args.seq_len,
            distill_sequences=args.distill_sequences,
            holdout_sequences=args.holdout_sequences,
            held_out_fraction=args.held_out_fraction,
            repeats=args.repeats,
            device=args.device,
            corpus=args.corpus,
            profile_threads=1,
        ),
        tokens=args.tokens,
        lr=args.lr,
        batch=args.batch,
        seed=args.seed,
        kv_method=args.kv_method,
        linear_method=args.linear_method,
    )
    start = time.perf_counter()
    with make_executor(kind, workers=args.workers) as executor, RichProgress(console=console()) as progress:
        library = build_library(args.parent, args.out, space=space, executor=executor, progress=progress, config=config)
    print(
        f"built {library.n_layers} layers x {library.n_variants // max(1, library.n_layers)} variants "
        f"({library.n_variants} total) in {time.perf_counter() - start:.0f} s -> {args.out} "
        f"(digest {library.digest()[:12]})"
    )
    return 0
