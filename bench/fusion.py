"""FFN Fusion on children with attention removed in runs: fused vs unfused latency, perplexity and KL.

    python bench/fusion.py [--out runs/fusion] [--steps 150] [--child-gkd-tokens N] [--gkd-tokens N] [--max-kl X]
                           [--settings all,all+gkd,greedy] [--threads 1] [--parents bench|demo]

For two small parents (an 8-layer Llama and a 10-layer hybrid ``M-M*-M-M*-``, hidden 128, trained here for
``--steps`` on a few standard-library packages, reused when present) it builds a child with the mixers of
some consecutive layers removed (Llama: attention of layers 3-6; hybrid: layers 2-3 and 7-8, so the MLPs
1 | 4 and 6 | 9 follow each other), heals it briefly by GKD against the parent (``--child-gkd-tokens``), then
runs ``puzzle.child.fusion_plan.fuse_child`` three ways: every pair fused, every pair fused + GKD, and greedy
within ``--max-kl`` (KL to the unfused child on calibration tokens). Prints per setting: fused groups, held-out
perplexity and KL to the parent before / after, measured latency per scenario (the profiler's default CPU
scenarios) and the fused blocks' time vs their members'. ``--parents demo`` uses the demo's presets instead
(``tiny-llama``, ``tiny-hybrid``: hidden 256, the same layers' mixers dropped). Results go to ``OUT/fusion.json``.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from puzzle.arch import BlockSpec
from puzzle.child.assess import kl_to_parent
from puzzle.child.evaluate import evaluate
from puzzle.child.fusion_plan import FusionConfig, fuse_child
from puzzle.child.gkd import GKDConfig, run_gkd
from puzzle.data import cached_tokens, load_tokenizer, pack_tensor, read_corpus, split_corpus
from puzzle.files import write_json
from puzzle.model import CausalLM, load_pretrained
from puzzle.presets import PRESETS, Preset, TrainConfig, tiny_hybrid, tiny_llama
from puzzle.train import train_parent

SEQ_LEN = 128


def presets(steps: int | None, parents: str = "bench") -> dict[str, tuple[Preset, tuple[int, ...]]]:
    """name -> (parent preset, layers whose mixers the child drops). ``parents="demo"``: the demo's own presets
    (``tiny-llama`` and ``tiny-hybrid``, hidden 256, their own training settings unless ``steps`` is given)."""
    if parents == "demo":
        return {
            "llama": (_with_steps(PRESETS["tiny-llama"], steps), (3, 4, 5, 6)),
            "hybrid": (_with_steps(PRESETS["tiny-hybrid"], steps), (2, 3, 7, 8)),
        }
    train = TrainConfig(
        steps=steps or 150, batch_size=8, seq_len=SEQ_LEN, lr=3e-3, warmup_steps=15, held_out_fraction=0.1
    )
    llama = Preset(
        "fusion-llama", "8-layer Llama, hidden 128",
        lambda v: tiny_llama(v, hidden=128, n_layers=8, n_heads=4, n_kv_heads=2, intermediate=384),
        vocab_size=2048, train=train,
    )  # fmt: skip
    hybrid = Preset(
        "fusion-hybrid", "10-layer hybrid M-M*-M-M*-, hidden 128",
        lambda v: tiny_hybrid(
            v, hidden=128, pattern="M-M*-M-M*-", n_heads=4, n_kv_heads=2, intermediate=512, mamba_heads=4,
            mamba_head_dim=64, mamba_groups=2, d_state=32, chunk_size=32,
        ),
        vocab_size=2048, train=train,
    )  # fmt: skip
    return {"llama": (llama, (3, 4, 5, 6)), "hybrid": (hybrid, (2, 3, 7, 8))}


def _with_steps(preset: Preset, steps: int | None) -> Preset:
    return preset if steps is None else replace(preset, train=replace(preset.train, steps=steps))


def drop_mixers(model: CausalLM, layers: tuple[int, ...]) -> CausalLM:
    """A copy of ``model`` whose ``layers`` keep only their FFN (a layer without one becomes a no-op)."""
    blocks = list(model.arch.blocks)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for i in layers:
        blocks[i] = BlockSpec(ffn=blocks[i].ffn)
        state = {k: v for k, v in state.items() if not k.startswith((f"blocks.{i}.attn", f"blocks.{i}.mamba"))}
    with torch.device("meta"):
        child = CausalLM(replace(model.arch, blocks=tuple(blocks)))
    child.load_state_dict(state, assign=True, strict=True)
    child.tie_weights()
    return child.eval()


def log(message: str) -> None:
    print(f"   {message}", file=sys.stderr, flush=True)


def run_preset(name: str, args: argparse.Namespace, corpus: Path) -> dict[str, Any]:
    """Train (or reuse) the parent, build and heal the child, fuse it three ways; returns the rows."""
    preset, layers = presets(args.steps, args.parents)[name]
    out = Path(args.out) / name

    def on_step(info: Any) -> None:
        if info.step % 25 == 0 or info.step == info.total:
            log(f"step {info.step}/{info.total} loss {info.loss:.3f}")

    train_parent(preset, out / "parent", corpus, on_status=log, on_step=on_step)
    parent = load_pretrained(out / "parent")
    tokenizer = load_tokenizer(out / "parent")
    train_docs, held_docs = split_corpus(read_corpus(corpus), preset.train.held_out_fraction)
    train = cached_tokens(train_docs, tokenizer, "train")
    held = cached_tokens(held_docs, tokenizer, "held_out")[: args.eval_tokens]
    calib = train[-args.calib_tokens :]
    rows = pack_tensor(train, SEQ_LEN)
    child = drop_mixers(parent, layers)
    if args.child_gkd_tokens:
        log(f"healing the unfused child ({args.child_gkd_tokens} GKD tokens)")
        run_gkd(child, parent, rows, GKDConfig(tokens=args.child_gkd_tokens, seq_len=SEQ_LEN, seed=1), on_step=on_step)
    parent_ppl = evaluate(parent, held, SEQ_LEN).perplexity
    gkd = GKDConfig(tokens=args.gkd_tokens, seq_len=SEQ_LEN, cosine_weight=0.0)
    settings = {
        "all pairs": FusionConfig(max_kl=math.inf, max_fusions=99, seq_len=SEQ_LEN, repeats=args.repeats),
        "all pairs + GKD": FusionConfig(
            max_kl=math.inf, max_fusions=99, seq_len=SEQ_LEN, gkd=gkd, repeats=args.repeats
        ),
        f"KL <= {args.max_kl}": FusionConfig(max_kl=args.max_kl, seq_len=SEQ_LEN, repeats=args.repeats),
    }
    chosen = {"all": "all pairs", "all+gkd": "all pairs + GKD", "greedy": f"KL <= {args.max_kl}"}
    settings = {chosen[k]: settings[chosen[k]] for k in args.settings.split(",")}
    results = {"parent_perplexity": parent_ppl, "child_layers_without_mixer": list(layers), "settings": {}}
    for label, config in settings.items():
        log(f"{name}: {label}")
        fused, report = fuse_child(child, calib, held, config, gkd_rows=rows, on_status=log)
        row = report.to_dict()
        row["kl_to_parent"] = {
            "before": kl_to_parent(child, parent, held, SEQ_LEN),
            "after": kl_to_parent(fused, parent, held, SEQ_LEN),
        }
        results["settings"][label] = row
    return results


def print_table(results: dict[str, dict[str, Any]]) -> None:
    for name, res in results.items():
        print(f"\n== {name}: parent perplexity {res['parent_perplexity']:.3f}; "
              f"child = parent without mixers in layers {res['child_layers_without_mixer']}")  # fmt: skip
        for label, row in res["settings"].items():
            q, kl = row["quality"], row["kl_to_parent"]
            groups = ", ".join("+".join(map(str, g)) for g in row["fused_groups"]) or "none"
            print(f"  [{label}] fused {groups}; scores " + ", ".join(
                f"{s['first']}|{s['second']} {s['score']:.3f}" for s in row["scores"]))  # fmt: skip
            print(
                f"    perplexity {q['before']['perplexity']:.3f} -> {q['after']['perplexity']:.3f}; "
                f"KL to parent {kl['before']:.4f} -> {kl['after']:.4f}; KL to unfused child "
                f"{q['after']['kl_to_unfused']:.4f}"
            )
            for sc, lat in row["latency"].items():
                blocks = "; ".join(
                    f"block {b['host']} (width {b['width']}): {b['runtime_ms'][sc]:.3f} ms vs members "
                    f"{b['members_runtime_ms'][sc]:.3f} ms"
                    for b in row["fused_blocks"]
                )
                print(
                    f"    {sc}: {lat['before_ms']:.2f} -> {lat['after_ms']:.2f} ms ({lat['speedup']:.3f}x; "
                    f"spread {lat['before_spread_ms']:.2f} / {lat['after_spread_ms']:.2f}) {blocks}"
                )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/fusion")
    parser.add_argument("--steps", type=int, default=None, help="parent training steps (default 150; demo: preset's)")
    parser.add_argument("--child-gkd-tokens", type=int, default=65536, help="GKD of the unfused child first")
    parser.add_argument("--gkd-tokens", type=int, default=65536, help="GKD after fusing every pair")
    parser.add_argument("--max-kl", type=float, default=0.02, help="bound of the greedy setting")
    parser.add_argument("--calib-tokens", type=int, default=16384)
    parser.add_argument("--eval-tokens", type=int, default=65536)
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per latency measurement")
    parser.add_argument("--presets", default="llama,hybrid")
    parser.add_argument(
        "--parents", choices=("bench", "demo"), default="bench",
        help="bench: hidden-128 parents; demo: the demo's tiny-llama / tiny-hybrid presets (hidden 256)",
    )  # fmt: skip
    parser.add_argument("--settings", default="all,all+gkd,greedy", help="which of all, all+gkd, greedy to run")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: tiny models on a shared CPU run far faster)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from bench.quality import small_corpus  # a few standard-library packages, copied once

    torch.manual_seed(0)
    np.random.seed(0)
    corpus = small_corpus(Path(args.out) / "corpus")
    results = {}
    for name in args.presets.split(","):
        print(f"== {name}", file=sys.stderr, flush=True)
        results[name] = run_preset(name, args, corpus)
    print_table(results)
    write_json(Path(args.out) / "fusion.json", results)
    print(f"\nwrote {Path(args.out) / 'fusion.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
