"""``puzzle parent train``: train a small parent model from a preset and write it as a HF directory."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    from puzzle.presets import PRESETS

    parent = subparsers.add_parser("parent", help="train demo parent models")
    sub = parent.add_subparsers(dest="parent_command", metavar="SUBCOMMAND", required=True)
    train = sub.add_parser(
        "train",
        help="train a parent preset on a corpus; resumes an interrupted run in --out",
        description="Train a parent preset from scratch and write a Hugging Face directory that transformers loads. "
        "Rerun the same command after an interruption to resume from the last checkpoint.",
    )
    train.add_argument("--preset", required=True, choices=sorted(PRESETS), help="which parent to train")
    train.add_argument(
        "--corpus",
        default=None,
        help="text file, directory of text files or .jsonl (text field); default: the Python standard library",
    )
    train.add_argument("--steps", type=int, default=None, help="optimizer steps (default: the preset's)")
    train.add_argument("--out", required=True, help="output directory (HF format)")
    train.add_argument(
        "--checkpoint-seconds",
        type=float,
        default=None,
        help="also checkpoint after this many seconds of training (default 60; 0: by steps only)",
    )
    train.add_argument("--json", action="store_true", help="print the training summary as JSON")
    train.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    from puzzle.cli.progress import training_bar
    from puzzle.errors import ConfigError
    from puzzle.presets import get_preset
    from puzzle.train import CHECKPOINT_SECONDS, train_parent

    if args.steps is not None and args.steps <= 0:
        raise ConfigError(f"--steps must be a positive integer, got {args.steps}")
    every = CHECKPOINT_SECONDS if args.checkpoint_seconds is None else args.checkpoint_seconds
    if not every >= 0 or every == float("inf"):
        raise ConfigError(f"--checkpoint-seconds must be a finite number >= 0, got {args.checkpoint_seconds}")
    preset = get_preset(args.preset)
    with training_bar(f"training {preset.name}") as (on_step, on_status):
        result = train_parent(
            preset,
            args.out,
            args.corpus,
            steps=args.steps,
            on_step=on_step,
            on_status=on_status,
            checkpoint_seconds=every or None,
        )
    if args.json:
        data = result.to_dict()
        data.pop("losses")
        print(json.dumps(data))
    else:
        note = " (already trained; reused)" if result.reused else ""
        print(
            f"{preset.name}: {result.steps} steps, {result.n_params / 1e6:.1f} M parameters, "
            f"final loss {result.final_loss:.3f}, {result.wall_s:.0f} s, {result.tokens_per_s:,.0f} tokens/s{note}\n"
            f"wrote {result.out_dir}"
        )
    return 0
