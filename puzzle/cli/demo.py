"""``puzzle demo``: the main job on the embedded default (a small parent trained on a real corpus)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train (or reuse) the tiny-llama parent on the Python standard library and evaluate it",
        description="Train the tiny-llama parent on the Python standard library sources of this interpreter "
        "(or reuse it when --out already holds it), then report held-out perplexity next to a unigram baseline.",
    )
    parser.add_argument("--out", default="runs/demo", help="working directory (default: runs/demo)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default: the preset's)")
    parser.set_defaults(func=_demo)


def _demo(args: argparse.Namespace) -> int:
    from puzzle.cli.progress import batch_bar, training_bar
    from puzzle.errors import ConfigError
    from puzzle.pipeline import run_demo

    if args.steps is not None and args.steps <= 0:
        raise ConfigError(f"--steps must be a positive integer, got {args.steps}")
    with training_bar("training tiny-llama") as (on_step, on_status), batch_bar("evaluating") as on_eval_batch:
        result = run_demo(args.out, steps=args.steps, on_step=on_step, on_status=on_status, on_eval_batch=on_eval_batch)
    t, h, u = result.train, result.held_out, result.unigram
    print(f"parent      {result.parent_dir}  ({t.n_params / 1e6:.1f} M parameters, {t.steps} steps, {t.wall_s:.0f} s)")
    print(f"held-out    {h.tokens} tokens of unseen standard-library files, context {result.seq_len}")
    print(f"  parent    loss {h.loss:.3f}  perplexity {h.perplexity:8.2f}")
    print(f"  unigram   loss {u.loss:.3f}  perplexity {u.perplexity:8.2f}")
    return 0
