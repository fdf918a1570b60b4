"""Quality of Puzzle children against the baselines, for both tiny parents, side by side in one run.

    python bench/quality.py [--out runs/quality] [--steps N] [--bld-tokens N] [--gkd-tokens N] [--executor ray]

Runs the demo pipeline (``puzzle.pipeline.demo.run_demo``: train or reuse the parent, build its library, search,
GKD, evaluate) for ``tiny-llama`` and ``tiny-hybrid`` into ``OUT/<preset>`` (finished stages are reused),
then prints per budget and method: held-out perplexity (and its ratio to the parent's), KL to the parent,
measured vs predicted latency. Closes with the goal check: Puzzle(+GKD) beats every baseline (same GKD
tokens) at every budget; at 70 % latency perplexity <= 1.10x the parent's; measured latency within 3 % of
the prediction.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from puzzle.pipeline.demo import DemoConfig, DemoResult, run_demo
from puzzle.presets import Preset

PRESETS = ("tiny-llama", "tiny-hybrid")
SMALL_PACKAGES = ("json", "email", "logging", "urllib", "http", "importlib", "asyncio", "concurrent", "xml", "unittest")


def small_presets() -> dict[str, Preset]:
    """Scaled-down versions of both parents (same factory, same layer patterns) for a run that fits a busy
    2-core machine: hidden 128, vocab 2048, 150 steps of 8 x 128 tokens."""
    from puzzle.presets import TrainConfig, tiny_hybrid, tiny_llama

    train = TrainConfig(steps=150, batch_size=8, seq_len=128, lr=3e-3, warmup_steps=15, held_out_fraction=0.1)
    return {
        "tiny-llama": Preset(
            "tiny-llama-small",
            "4-layer Llama, hidden 128",
            lambda v: tiny_llama(v, hidden=128, n_layers=4, n_heads=4, n_kv_heads=2, intermediate=384),
            vocab_size=2048,
            train=train,
        ),
        "tiny-hybrid": Preset(
            "tiny-hybrid-small",
            "6-layer hybrid M-M*-, hidden 128",
            lambda v: tiny_hybrid(
                v,
                hidden=128,
                pattern="M-M*-",
                n_heads=4,
                n_kv_heads=2,
                intermediate=512,
                mamba_heads=4,
                mamba_head_dim=64,
                mamba_groups=2,
                d_state=32,
                chunk_size=32,
            ),
            vocab_size=2048,
            train=train,
        ),
    }


def small_corpus(root: Path) -> Path:
    """A few packages of the Python standard library, copied once."""
    import shutil
    import sysconfig

    if not root.is_dir():
        stdlib = Path(sysconfig.get_paths()["stdlib"])
        tmp = root.with_name(root.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for package in SMALL_PACKAGES:
            shutil.copytree(stdlib / package, tmp / package, ignore=shutil.ignore_patterns("__pycache__", "test*"))
        tmp.rename(root)
    return root


def goal_check(result: DemoResult) -> list[str]:
    lines = []
    by = {(r.budget, r.method): r for r in result.rows}
    parent_ppl = result.parent_perplexity
    for budget in sorted({r.budget for r in result.rows if r.method != "parent"}, reverse=True):
        ours = by.get((budget, "puzzle+gkd"))
        if ours is None or ours.perplexity is None:
            lines.append(f"  {budget:.0%}: no Puzzle+GKD child")
            continue
        rivals = [
            by[(budget, m)]
            for m in ("uniform+gkd", "depth+gkd", "greedy+gkd")
            if (budget, m) in by and by[(budget, m)].perplexity
        ]
        worst_margin = min((r.perplexity - ours.perplexity for r in rivals), default=float("nan"))
        beaten = all(ours.perplexity < r.perplexity for r in rivals)
        lines.append(
            f"  {budget:.0%}: Puzzle+GKD ppl {ours.perplexity:.3f} ({ours.perplexity / parent_ppl:.3f}x parent) "
            f"beats {'every' if beaten else 'NOT every'} baseline+GKD (closest margin {worst_margin:+.3f} ppl)"
        )
        if abs(budget - 0.7) < 1e-9:
            ok = ours.perplexity <= 1.10 * parent_ppl
            lines.append(
                f"        70 % goal ppl <= 1.10x parent: {'met' if ok else 'MISSED'} ({ours.perplexity / parent_ppl:.3f}x)"
            )
    errors = [abs(r.latency_error_pct) for r in result.rows if r.latency_error_pct is not None]
    if errors:
        within = sum(e <= 3.0 for e in errors)
        lines.append(
            f"  latency: {within}/{len(errors)} children within 3 % of predicted (max |error| {max(errors):.1f} %, "
            f"median {sorted(errors)[len(errors) // 2]:.1f} %)"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/quality")
    parser.add_argument("--steps", type=int, default=None, help="parent training steps (default: the presets')")
    parser.add_argument("--bld-tokens", type=int, default=None)
    parser.add_argument("--gkd-tokens", type=int, default=None)
    parser.add_argument("--distill-sequences", type=int, default=None, help="BLD sequences per layer (default 128)")
    parser.add_argument("--latency-repeats", type=int, default=None, help="timed runs per latency (default 10)")
    parser.add_argument("--executor", choices=["ray", "local"], default="ray")
    parser.add_argument("--presets", default=",".join(PRESETS))
    parser.add_argument(
        "--small",
        action="store_true",
        help="scaled-down parents (hidden 128) on a few standard-library packages: minutes instead of an hour",
    )
    args = parser.parse_args()

    results = {}
    for preset in args.presets.split(","):
        cfg = DemoConfig(preset=preset, train_steps=args.steps, executor=args.executor)
        if args.small:
            corpus = small_corpus(Path(args.out) / "corpus")
            cfg = replace(cfg, preset=small_presets()[preset], corpus=str(corpus), eval_seq_len=128, eval_sequences=64)
        if args.bld_tokens:
            cfg = replace(cfg, build=replace(cfg.build, bld=replace(cfg.build.bld, tokens=args.bld_tokens)))
        if args.gkd_tokens:
            cfg = replace(cfg, gkd=replace(cfg.gkd, tokens=args.gkd_tokens))
        if args.distill_sequences:
            cfg = replace(cfg, build=replace(cfg.build, distill_sequences=args.distill_sequences))
        if args.latency_repeats:
            cfg = replace(
                cfg, latency_repeats=args.latency_repeats, build=replace(cfg.build, repeats=args.latency_repeats)
            )
        print(f"== {preset}", file=sys.stderr, flush=True)
        results[preset] = run_demo(
            Path(args.out) / preset, cfg, on_status=lambda m: print(f"   {m}", file=sys.stderr, flush=True)
        )

    names = list(results)
    header = f"{'budget':>6}  {'method':<12}" + "".join(f" | {n:^40}" for n in names)
    sub = f"{'':>6}  {'':<12}" + "".join(
        f" | {'ppl':>8} {'xparent':>7} {'KL':>7} {'meas ms':>8} {'err %':>6}" for _ in names
    )
    print(header)
    print(sub)
    keys = list(dict.fromkeys((r.budget, r.method) for res in results.values() for r in res.rows))
    for budget, method in keys:
        line = f"{budget:>6.0%}  {method:<12}"
        for name in names:
            res = results[name]
            row = next((r for r in res.rows if (r.budget, r.method) == (budget, method)), None)
            if row is None or row.perplexity is None:
                line += f" | {'-':>40}"
                continue
            err = row.latency_error_pct
            line += (
                f" | {row.perplexity:8.3f} {row.perplexity / res.parent_perplexity:7.3f} {row.kl:7.4f} "
                f"{row.measured_latency_ms:8.3f} {err if err is not None else float('nan'):+6.1f}"
            )
        print(line)
    print()
    for name, res in results.items():
        print(f"goal check, {name} (scenario {res.scenario}):")
        print("\n".join(goal_check(res)))
    summary = {n: r.to_dict() for n, r in results.items()}
    (Path(args.out) / "quality.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
