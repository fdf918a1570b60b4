"""Elastic (many-in-one) families against Puzzle and uniform pruning, per budget, on the small tiny parents.

    python bench/elastic.py [--out runs/elastic] [--presets tiny-llama,tiny-hybrid] [--budgets 0.9,0.8,0.7]
                            [--steps N] [--bld-tokens N] [--gkd-tokens N] [--elastic-tokens N]

Per preset (the scaled-down parents of ``bench/quality.py``, on the same few standard-library packages):

1. train (or reuse) the parent; build (or reuse) its Puzzle block library (``puzzle.library.build``);
2. **puzzle**: per budget, the MIP on the library under ``num_params <= budget``, assembled, healed by GKD with
   ``--gkd-tokens``; **uniform**: the best uniform-width child of the library under the same bound, same GKD;
3. **elastic-mip** / **elastic-router**: ``puzzle.elastic.build_elastic`` with the same budgets (``num_params``),
   ``--elastic-tokens`` of multi-budget distillation for the whole family, every budget sliced out;
4. held-out perplexity of every child, tokens spent for the whole family, parameters to deploy every budget.

Tokens: Puzzle / uniform = BLD (summed over the trained units) + GKD per budget; elastic = the text tokens of the
one distillation run (each drawn by every submodel trained in its step: ``student`` tokens in the JSON).
Finished stages are reused (parent, library, elastic folders). Results: ``OUT/<preset>/elastic_bench.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np
import torch

from puzzle.child.evaluate import evaluate
from puzzle.elastic.model import n_params
from puzzle.files import write_json

HELD_OUT = 0.1  # as the small presets train


def _data(parent: Path, corpus: Path, seq_len: int, eval_sequences: int) -> tuple[np.ndarray, np.ndarray]:
    from puzzle.data import cached_tokens, load_tokenizer, pack_tensor, read_corpus, split_corpus

    tokenizer = load_tokenizer(parent)
    train, held = split_corpus(read_corpus(corpus), HELD_OUT)
    rows = pack_tensor(cached_tokens(train, tokenizer, "train"), seq_len)
    held_tokens = cached_tokens(held, tokenizer, "held-out")
    return rows, held_tokens[: eval_sequences * seq_len + 1]


def _ppl(model: torch.nn.Module, tokens: np.ndarray, seq_len: int) -> float:
    return evaluate(model, tokens, seq_len, batch_size=8).perplexity


def _puzzle_rows(args: argparse.Namespace, parent: Path, lib_dir: Path, rows: np.ndarray, held: np.ndarray) -> list:
    """Puzzle (MIP + GKD) and uniform-width (+ GKD) children per budget, from the Puzzle library."""
    from puzzle.child.assemble import assemble
    from puzzle.child.baselines import uniform_width
    from puzzle.child.gkd import GKDConfig, run_gkd
    from puzzle.errors import InfeasibleError
    from puzzle.library import BlockLibrary
    from puzzle.model import load_pretrained
    from puzzle.search import solve

    library = BlockLibrary.load(lib_dir)
    teacher = load_pretrained(parent)
    parent_total = library.non_block_cost("num_params", None) + sum(
        layer.parent.costs["num_params"] for layer in library.layers
    )
    gkd = GKDConfig(tokens=args.gkd_tokens, lr=3e-4, batch=8, seq_len=args.seq_len)
    out = []
    for budget in args.budgets:
        for method in ("puzzle", "uniform"):
            if method == "puzzle":
                layers = list(solve(library, "kl_div", [f"num_params<={100 * budget:g}%"]).layers)
            else:  # whole-model parameters, as the MIP's percentage bound counts them (child/assess.predicted_cost)
                try:
                    layers = uniform_width(library, budget * parent_total, key="num_params")
                except InfeasibleError as exc:
                    out.append(
                        {"budget": budget, "method": method, "perplexity": None, "params": None, "note": str(exc)}
                    )
                    print(f"  {budget:g} {method:<8} infeasible: {exc}", flush=True)
                    continue
            child = assemble(library, lib_dir, layers, parent=parent)
            t0 = time.perf_counter()
            run_gkd(child, teacher, rows, gkd)
            out.append(
                {
                    "budget": budget,
                    "method": method,
                    "perplexity": _ppl(child, held, args.seq_len),
                    "params": n_params(child),
                    "gkd_tokens": gkd.steps * gkd.batch * gkd.seq_len,
                    "gkd_s": round(time.perf_counter() - t0, 1),
                    "layers": layers,
                }
            )
            print(f"  {budget:g} {method:<8} ppl {out[-1]['perplexity']:.3f}  params {out[-1]['params']:,}", flush=True)
    return out


def _elastic_rows(args: argparse.Namespace, parent: Path, corpus: Path, root: Path, held: np.ndarray) -> list:
    from puzzle.elastic import ElasticRequest, ElasticTrainConfig, build_elastic, load_elastic

    out = []
    for selection in ("mip", "router"):
        folder = root / f"elastic-{selection}"
        req = ElasticRequest(
            parent=str(parent),
            budgets=tuple(args.budgets),
            out=str(folder),
            corpus=str(corpus),
            train=ElasticTrainConfig(tokens=args.elastic_tokens, batch=8, seq_len=args.seq_len, lr=3e-4),
            held_out_fraction=HELD_OUT,
            selection=selection,
        )
        t0 = time.perf_counter()
        summary = json.loads((folder / "elastic.json").read_text()) if (folder / "elastic.json").is_file() else None
        if summary is None:
            summary = build_elastic(req, on_status=lambda m, s=selection: print(f"  [{s}] {m}", flush=True))
        elastic = load_elastic(folder)
        training = summary["training"] or {}
        for budget in args.budgets:
            child = elastic.slice(budget)
            out.append(
                {
                    "budget": budget,
                    "method": f"elastic-{selection}",
                    "perplexity": _ppl(child, held, args.seq_len),
                    "params": n_params(child),
                    "family_tokens": training.get("tokens", 0),
                    "family_student_tokens": training.get("student_tokens", 0),
                    "family_s": round(time.perf_counter() - t0, 1),
                    "deploy_all_params": n_params(elastic.model),
                    "layers": elastic.config_for(budget).to_list(),
                }
            )
            print(f"  {budget:g} elastic-{selection:<6} ppl {out[-1]['perplexity']:.3f}  params {out[-1]['params']:,}")
    return out


def _prepare(args: argparse.Namespace, preset_name: str, root: Path, corpus: Path) -> tuple[Path, Path]:
    """(parent dir, Puzzle library dir), trained / built unless already there."""
    from quality import small_presets

    from puzzle.library import BlockLibrary
    from puzzle.library.build import build_library
    from puzzle.pipeline.demo import demo_build_config, demo_space
    from puzzle.train import train_parent

    preset = small_presets()[preset_name]
    parent, lib_dir = root / "parent", root / "library"
    if not (parent / "train_summary.json").is_file():
        print(f"[{preset_name}] training the parent", flush=True)
        train_parent(preset, parent, corpus, steps=args.steps)
    if not (lib_dir / "library.json").is_file():
        print(f"[{preset_name}] building the Puzzle library", flush=True)
        build = demo_build_config()
        build = replace(build, corpus=str(corpus), held_out_fraction=HELD_OUT, repeats=3)
        build = replace(build, bld=replace(build.bld, tokens=args.bld_tokens), distill_sequences=64)
        build_library(parent, lib_dir, space=demo_space(), config=build)
    BlockLibrary.load(lib_dir)
    return parent, lib_dir


def _table(preset: str, parent_ppl: float, rows: list[dict[str, Any]], bld_tokens: int, n_budgets: int) -> str:
    lines = [
        f"{preset}: parent perplexity {parent_ppl:.3f}",
        "budget  method          ppl      xparent  params   tokens(family)",
    ]
    for r in sorted(rows, key=lambda r: (-r["budget"], r["method"])):
        if r["perplexity"] is None:
            lines.append(f"{r['budget']:<7g} {r['method']:<15} infeasible in its space")
            continue
        tokens = r.get("family_tokens", bld_tokens + n_budgets * r.get("gkd_tokens", 0))
        lines.append(
            f"{r['budget']:<7g} {r['method']:<15} {r['perplexity']:<8.3f} {r['perplexity'] / parent_ppl:<8.3f} "
            f"{r['params']:<8,} {tokens:,}"
        )
    return "\n".join(lines)


def main() -> int:
    from quality import small_corpus

    from puzzle.library.build import load_report
    from puzzle.model import load_pretrained

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/elastic")
    parser.add_argument("--presets", default="tiny-llama,tiny-hybrid")
    parser.add_argument(
        "--budgets", default="0.9,0.8,0.7", help="of the whole parent; the tiny parents' embeddings are ~40 %%"
    )
    parser.add_argument("--steps", type=int, default=150, help="parent training steps")
    parser.add_argument("--bld-tokens", type=int, default=16_384, help="BLD tokens per library unit")
    parser.add_argument("--gkd-tokens", type=int, default=32_768, help="GKD tokens per Puzzle / uniform child")
    parser.add_argument("--elastic-tokens", type=int, default=49_152, help="distillation tokens for a whole family")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--eval-sequences", type=int, default=32)
    args = parser.parse_args()
    args.budgets = [float(b) for b in args.budgets.split(",")]
    torch.set_num_threads(1)
    root = Path(args.out)
    corpus = small_corpus(root / "corpus")
    for preset in args.presets.split(","):
        folder = root / preset
        parent, lib_dir = _prepare(args, preset, folder, corpus)
        rows, held = _data(parent, corpus, args.seq_len, args.eval_sequences)
        parent_model = load_pretrained(parent)
        parent_ppl = _ppl(parent_model, held, args.seq_len)
        bld_tokens = sum(u.get("tokens", 0) for u in load_report(lib_dir)["units"])
        results = _puzzle_rows(args, parent, lib_dir, rows, held) + _elastic_rows(args, parent, corpus, folder, held)
        puzzle_deploy = sum(r["params"] or 0 for r in results if r["method"] == "puzzle")
        record = {
            "preset": preset,
            "parent_perplexity": parent_ppl,
            "parent_params": n_params(parent_model),
            "bld_tokens": bld_tokens,
            "deploy_all_params": {"puzzle": puzzle_deploy, "elastic": n_params(parent_model)},
            "rows": results,
            "settings": {k: v for k, v in vars(args).items()},
        }
        write_json(folder / "elastic_bench.json", record)
        print(_table(preset, parent_ppl, results, bld_tokens, len(args.budgets)))
        print(f"deploy every budget: puzzle {puzzle_deploy:,} params, elastic {n_params(parent_model):,} (one parent)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
