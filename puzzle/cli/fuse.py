"""``puzzle fuse``: FFN Fusion of an exported child (runs of FFNs left by attention removal -> one wide FFN)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from puzzle.child.fusion_plan import FusionReport


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fuse",
        help="fuse runs of attention-free FFN layers of a child into wide FFNs (FFN Fusion)",
        description="Find the runs of layers whose attention is a no-op in a child, score how much each FFN "
        "depends on the previous one, fuse the most independent pairs while the held-out KL stays within "
        "--max-kl (to the unfused child, or to --parent), optionally heal by GKD, and write the fused child as a "
        "normal Hugging Face directory whose puzzle_manifest.json records what was fused, the scores, the KL "
        "and the latency before / after.",
    )
    parser.add_argument("--child", required=True, help="the child's HF directory (config.json, safetensors, tokenizer)")
    parser.add_argument("--out", required=True, help="output directory for the fused child")
    parser.add_argument("--max-kl", type=float, required=True, help="KL bound (nats/token) on the calibration text")
    parser.add_argument("--max-fusions", type=int, default=None, help="at most this many pairwise fusions")
    parser.add_argument("--gkd-tokens", type=int, default=0, help="tokens of GKD healing after fusion (default 0)")
    parser.add_argument("--parent", default=None, help="parent HF directory: KL and GKD against it, not the child")
    parser.add_argument(
        "--text",
        default=None,
        help="text file, directory or .jsonl (default: the Python standard library corpus the demo parents train on); "
        "its training split calibrates and heals, its held-out split evaluates",
    )
    parser.add_argument("--seq-len", type=int, default=None, help="context (default: the tokenizer's max length)")
    parser.add_argument("--calib-tokens", type=int, default=16384, help="tokens that score pairs and bound the KL")
    parser.add_argument("--eval-tokens", type=int, default=65536, help="held-out tokens for before / after quality")
    parser.add_argument("--device", default="cpu", help="device that runs and times the models (default cpu)")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per latency measurement")
    parser.add_argument("--no-latency", action="store_true", help="skip the latency measurements")
    parser.add_argument("--force", action="store_true", help="replace a non-empty --out")
    parser.add_argument("--json", action="store_true", help="print the fusion report as JSON")
    parser.set_defaults(func=_fuse)


def _check_numbers(args: argparse.Namespace) -> None:
    from puzzle.errors import ConfigError

    problems = []
    if not (math.isfinite(args.max_kl) and args.max_kl >= 0):
        problems.append(f"--max-kl must be a finite number >= 0, got {args.max_kl}")
    for flag, value, low in (
        ("--max-fusions", args.max_fusions, 1),
        ("--gkd-tokens", args.gkd_tokens, 0),
        ("--seq-len", args.seq_len, 1),
        ("--calib-tokens", args.calib_tokens, 2),
        ("--eval-tokens", args.eval_tokens, 2),
        ("--repeats", args.repeats, 1),
    ):
        if value is not None and value < low:
            problems.append(f"{flag} must be >= {low}, got {value}")
    if problems:
        raise ConfigError("; ".join(problems))


def _fuse(args: argparse.Namespace) -> int:
    """Validate, load, fuse, export; the steps are one straight sequence, so it is one function."""
    from puzzle.child.export import MANIFEST_NAME, build_manifest, check_target, export_child, read_manifest
    from puzzle.child.fusion import find_runs, no_fusable_run_message
    from puzzle.child.fusion_plan import FusionConfig, fuse_child, fusion_tokens
    from puzzle.child.gkd import GKDConfig
    from puzzle.cli.evaluate import _model_max_length
    from puzzle.cli.progress import training_bar
    from puzzle.data import load_tokenizer, pack_tensor
    from puzzle.errors import CheckpointError, ConfigError
    from puzzle.model import load_pretrained

    _check_numbers(args)
    child_dir = Path(args.child)
    if not child_dir.is_dir():
        raise CheckpointError(f"child directory {child_dir} does not exist; pass an exported child (HF directory)")
    if args.parent is not None and not Path(args.parent).is_dir():
        raise CheckpointError(f"parent directory {args.parent} does not exist")
    out = check_target(args.out, force=args.force)
    if out.resolve() == child_dir.resolve():
        raise ConfigError("--out must differ from --child (the unfused child is the reference)")
    model = load_pretrained(child_dir)
    if not find_runs(model.arch):
        raise ConfigError(no_fusable_run_message(model.arch))
    seq_len = args.seq_len or _model_max_length(child_dir)
    gkd = GKDConfig(tokens=args.gkd_tokens, seq_len=seq_len, cosine_weight=0.0) if args.gkd_tokens else None
    config = FusionConfig(
        max_kl=args.max_kl, max_fusions=args.max_fusions, seq_len=seq_len, gkd=gkd, device=args.device,
        repeats=args.repeats,
    )  # fmt: skip
    parent = load_pretrained(args.parent) if args.parent is not None else None
    train, evaluation = fusion_tokens(args.text, load_tokenizer(child_dir), args.calib_tokens, args.eval_tokens)
    rows = pack_tensor(train, seq_len) if gkd is not None else None
    with training_bar("GKD") as (on_step, on_status):
        fused, report = fuse_child(
            model, train[: args.calib_tokens], evaluation, config, parent=parent, gkd_rows=rows,
            scenarios=() if args.no_latency else None, on_status=on_status, on_step=on_step,
        )  # fmt: skip
    source = read_manifest(child_dir) if (child_dir / MANIFEST_NAME).is_file() else None
    manifest = (
        dict(source) if source is not None else build_manifest(parent_digest=None, library_digest=None, layers=())
    )
    manifest["fusion"] = {**report.to_dict(), "source": str(child_dir)}
    export_child(fused, out, manifest=manifest, tokenizer_dir=child_dir, force=args.force)
    if args.json:
        print(json.dumps(manifest["fusion"]))
    else:
        print(_summary(report, out))
    return 0


def _summary(report: FusionReport, out: Path) -> str:
    groups = ", ".join("+".join(map(str, g)) for g in report.groups) or "none"
    lines = [f"fused layers {groups} ({report.layers_removed} layer(s) removed from the sequential path)"]
    if not report.groups:
        best = min((t.kl for t in report.trials), default=float("nan"))
        start = f"; the unfused child is already at {report.start_kl:.4f}" if report.reference == "parent" else ""
        lines.append(
            f"no pair stays within --max-kl {report.max_kl} (smallest KL tried {best:.4f}{start}); child unchanged"
        )
    before, after = report.quality["before"], report.quality["after"]
    kl_key = "kl_to_parent" if report.reference == "parent" else "kl_to_unfused"
    lines.append(
        f"perplexity {before['perplexity']:.2f} -> {after['perplexity']:.2f}, "
        f"held-out KL to the {report.reference} {after[kl_key]:.4f}"
    )
    for name, lat in report.latency.items():
        lines.append(f"{name}: {lat['before_ms']:.2f} -> {lat['after_ms']:.2f} ms ({lat['speedup']:.2f}x)")
    lines.append(f"wrote {out}")
    return "\n".join(lines)
