"""Quality of Puzzle children against the baselines, for both tiny parents, one table per parent.

    python bench/quality.py [--out runs/quality] [--steps N] [--bld-tokens N] [--gkd-tokens N] [--executor ray]

Runs the demo pipeline (``puzzle.pipeline.demo.run_demo``: train or reuse the parent, build its library, search,
GKD, evaluate) for ``tiny-llama`` and ``tiny-hybrid`` into ``OUT/<preset>`` (finished stages are reused),
then prints per budget and method: held-out perplexity with its 95 % interval (bootstrap over sequences) and
its ratio to the parent's, KL to the parent (interval), top-1 agreement with the parent, measured latency and
its error against the prediction. Closes with the goal check: Puzzle+GKD against every baseline+GKD (same
GKD tokens) per budget, a win only when the paired 95 % interval of the perplexity ratio excludes 1 ("tie"
otherwise), against the parent trained on the same tokens ("parent+tokens" row), at 70 % latency perplexity
<= 1.10x the parent's, and measured latency within 3 % of the prediction.

Intervals and verdicts need the report rows' ``scores`` (``puzzle.child.evaluate.SequenceScores.to_dict()``,
per-sequence NLL / KL / top-1 agreement) or ``<name>_ci`` fields; an older report without them prints point
estimates and "tie?" (no verdict can be called).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from puzzle.child.evaluate import Comparison, SequenceScores, compare
from puzzle.files import write_text
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


RIVALS = ("uniform+gkd", "depth+gkd", "greedy+gkd")
REFERENCE = "parent+tokens"  # puzzle.child.reference.METHOD: the parent trained on the same GKD tokens


def _rows(result: DemoResult) -> list[dict[str, Any]]:
    """The report's rows as dicts (the demo's ``Row.to_dict()``), whatever fields this version has."""
    return [r.to_dict() if hasattr(r, "to_dict") else dict(r) for r in result.rows]


def _scores(row: dict[str, Any] | None) -> SequenceScores | None:
    """Per-sequence scores of a row when the report carries them (``scores``: ``SequenceScores.to_dict()``)."""
    if not row or not row.get("scores"):
        return None
    return SequenceScores.from_dict(row["scores"])


def _interval(row: dict[str, Any], name: str) -> tuple[float, float] | None:
    """``name``'s 95 % interval: from the row's ``<name>_ci`` field, else bootstrapped from its ``scores``."""
    if row.get(f"{name}_ci"):
        low, high = row[f"{name}_ci"]
        return float(low), float(high)
    scores = _scores(row)
    if scores is None or len(scores.tokens) < 2:
        return None
    ci = scores.summary().get(f"{name}_ci")
    return None if ci is None else (ci[0], ci[1])


def _compare(ours: dict[str, Any], rival: dict[str, Any]) -> Comparison | None:
    a, b = _scores(ours), _scores(rival)
    if a is None or b is None or not np.array_equal(a.tokens, b.tokens) or len(a.tokens) < 2:
        return None
    return compare(a, b, "nll")


def _versus(ours: dict[str, Any], rival: dict[str, Any]) -> tuple[str, str]:
    """(verdict, text) of ours against rival on perplexity: paired interval when both rows have scores."""
    c = _compare(ours, rival)
    if c is None:  # an older report: point estimates only, so no verdict can be called
        margin = rival["perplexity"] - ours["perplexity"]
        return "tie?", f"{rival['method']} {margin:+.3f} ppl (tie? no interval in the report)"
    r = c.ratio
    return c.verdict, f"{rival['method']} {c.verdict} (ppl ratio {r.estimate:.4f} [{r.low:.4f}, {r.high:.4f}])"


def goal_check(result: DemoResult) -> list[str]:
    """Per budget: Puzzle+GKD against every baseline+GKD (a win only when the paired 95 % interval of the
    perplexity ratio excludes 1, else a tie), against the parent + same tokens, and the 70 % goal."""
    rows = _rows(result)
    by = {(r["budget"], r["method"]): r for r in rows}
    parent = next((r for r in rows if r["method"] == "parent"), None)
    reference = next((r for r in rows if r["method"] == REFERENCE), None)
    parent_ppl = result.parent_perplexity
    lines = []
    for budget in sorted({r["budget"] for r in rows if r["method"] not in ("parent", REFERENCE)}, reverse=True):
        ours = by.get((budget, "puzzle+gkd"))
        if ours is None or ours.get("perplexity") is None:
            lines.append(f"  {budget:.0%}: no Puzzle+GKD child")
            continue
        rivals = [by[(budget, m)] for m in RIVALS if by.get((budget, m), {}).get("perplexity")]
        verdicts = [_versus(ours, r) for r in rivals]
        kinds = {v for v, _ in verdicts}
        overall = "loss" if "loss" in kinds else "win" if kinds == {"win"} else "tie"
        overall = "no verdict" if "tie?" in kinds else overall
        lines.append(
            f"  {budget:.0%}: Puzzle+GKD ppl {ours['perplexity']:.3f} ({ours['perplexity'] / parent_ppl:.3f}x parent): {overall.upper()}"
        )
        lines += [f"        vs {text}" for _, text in verdicts]
        if reference is not None:
            lines.append(f"        vs {_versus(ours, reference)[1]}")
        if abs(budget - 0.7) < 1e-9:
            c = _compare(ours, parent) if parent is not None else None
            ratio = c.ratio if c is not None else None
            if ratio is None:
                met = "met" if ours["perplexity"] <= 1.10 * parent_ppl else "MISSED"
                lines.append(f"        70 % goal ppl <= 1.10x parent: {met} ({ours['perplexity'] / parent_ppl:.3f}x)")
            else:
                met = "met" if ratio.high <= 1.10 else "MISSED" if ratio.low > 1.10 else "undecided"
                lines.append(
                    f"        70 % goal ppl <= 1.10x parent: {met} ({ratio.estimate:.3f}x [{ratio.low:.3f}, {ratio.high:.3f}])"
                )
    errors = [abs(r["latency_error_pct"]) for r in rows if r.get("latency_error_pct") is not None]
    if errors:
        within = sum(e <= 3.0 for e in errors)
        lines.append(
            f"  latency: {within}/{len(errors)} children within 3 % of predicted (max |error| {max(errors):.1f} %, "
            f"median {sorted(errors)[len(errors) // 2]:.1f} %)"
        )
    return lines


def _cell(value: float | None, fmt: str, width: int) -> str:
    return f"{value:{fmt}}" if value is not None else f"{'-':>{width}}"


def table(name: str, result: DemoResult) -> list[str]:
    """One line per row: perplexity with its 95 % interval, x parent, KL (interval), top-1 agreement, latency."""
    lines = [
        f"== {name} (scenario {result.scenario})",
        f"{'budget':>6}  {'method':<13} {'ppl':>8} {'95 % interval':>17} {'xparent':>7} {'KL':>7} "
        f"{'KL 95 %':>15} {'top-1':>6} {'meas ms':>8} {'err %':>6}",
    ]
    for row in _rows(result):
        if row.get("perplexity") is None:
            lines.append(f"{row['budget']:>6.0%}  {row['method']:<13} {'-':>8}  {row.get('note', '')}")
            continue
        ppl_ci, kl_ci = _interval(row, "perplexity"), _interval(row, "kl")
        scores = _scores(row)
        top1 = row.get("top1_agreement", scores.top1_agreement if scores is not None else None)
        lines.append(
            f"{row['budget']:>6.0%}  {row['method']:<13} {row['perplexity']:8.3f} "
            + (f"[{ppl_ci[0]:7.3f},{ppl_ci[1]:8.3f}]" if ppl_ci else f"{'-':>17}")
            + f" {row['perplexity'] / result.parent_perplexity:7.3f} {_cell(row.get('kl'), '7.4f', 7)} "
            + (f"[{kl_ci[0]:6.4f},{kl_ci[1]:7.4f}]" if kl_ci else f"{'-':>15}")
            + f" {_cell(top1, '6.3f', 6)} {_cell(row.get('measured_latency_ms'), '8.3f', 8)} "
            + f"{_cell(row.get('latency_error_pct'), '+6.1f', 6)}"
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

    for name, res in results.items():
        print("\n".join(table(name, res)))
        print()
    for name, res in results.items():
        print(f"goal check, {name} (scenario {res.scenario}):")
        print("\n".join(goal_check(res)))
    summary = {n: r.to_dict() for n, r in results.items()}
    write_text(Path(args.out) / "quality.json", json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
