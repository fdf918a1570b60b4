"""Compare child initialisations on a real parent: KV heads by mean-pooling vs head importance, linear
replacements by least squares vs the weight product. Prints held-out NMSE at init and after a short BLD.

    python bench/init_methods.py --parent DIR [--layers 0,3,7] [--tokens 16384]

Uses the builder's own stages (``prepare`` writes the parent and token rows; ``bld_layer_task`` inits and distills).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from puzzle.arch import AttentionSpec, FFNSpec
from puzzle.library.build import BuildConfig, prepare
from puzzle.library.distill import BLDConfig, unit_key
from puzzle.library.store import ResultStore
from puzzle.library.stream import bld_layer_task


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parent", required=True)
    ap.add_argument("--layers", default=None, help="comma-separated layer indices (default: all)")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--work", default=None)
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="init-bench-"))
    config = BuildConfig()  # the builder defaults, so a built library's work dir (--work OUT/work) is reused
    prep = prepare(args.parent, work, config)
    arch = prep["arch"]
    layers = [int(i) for i in args.layers.split(",")] if args.layers else range(arch.n_layers)
    att = arch.blocks[0].attention
    rows: dict[str, list[tuple[float, float]]] = {}
    cases = []
    for kv in [k for k in (att.n_kv_heads // 2, att.n_kv_heads // 4, 1) if k >= 1]:
        for method in ("mean", "importance"):
            cases.append(
                (
                    f"kv={kv} {method}",
                    {"attention": AttentionSpec(**{**att.to_dict(), "n_kv_heads": kv})},
                    {"kv_method": method},
                )
            )
    for method in ("lstsq", "product"):
        cases.append((f"attention linear {method}", {"attention": AttentionSpec.linear()}, {"linear_method": method}))
        cases.append((f"ffn linear {method}", {"ffn": FFNSpec.linear()}, {"linear_method": method}))
    start = time.perf_counter()
    for name, changes, opts in cases:
        for layer in layers:
            cfg = BLDConfig(tokens=args.tokens, **opts)
            key = unit_key(layer, changes, cfg, prep["digest"], "init-bench")
            unit = (key, {k: v.to_dict() for k, v in changes.items()})
            bld_layer_task(str(work), prep["distill_file"], layer, [unit], cfg.to_dict())
            r = ResultStore(work / "results").get(key)
            rows.setdefault(name, []).append((r["nmse_init"], r["nmse_final"]))
    print(
        f"parent {args.parent}  layers {list(layers)}  BLD tokens {args.tokens}  ({time.perf_counter() - start:.0f} s)"
    )
    print(f"{'init':<28} {'NMSE init (mean over layers)':>30} {'after BLD':>12}")
    for name, vals in rows.items():
        print(f"{name:<28} {statistics.mean(v[0] for v in vals):>30.4f} {statistics.mean(v[1] for v in vals):>12.4f}")


if __name__ == "__main__":
    main()
