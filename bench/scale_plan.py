"""The scaling plan's numbers: what each build stage costs for a real-size parent, from its shapes.

    python bench/scale_plan.py [--tokens 5e8] [--gpus 8] [--tflops 989] [--mfu 0.4] [--group 1]

For Llama-3.1-8B and Llama-3.3-70B shapes (no weights needed: blocks are counted on the meta device) and the
project's default search space (``default_space`` expanded by ``expand``; BLD units by ``plan_units``), per stage:

* BLD: FLOPs per streamed token of a layer task = 2 x prefix params (the parent forward, shared by every unit
  of the layer) + per unit 6 x trained params + 4 x frozen params of its block (forward, and input gradients
  through the frozen subblock); time = FLOPs x tokens / (GPUs x peak x MFU). ``--group G`` lets one task hold G
  consecutive layers (one prefix forward for all of them).
* memory of a BLD task: the prefix in bf16 (embedding + layers 0..i), the units' fp32 master weights + gradients
  + AdamW moments (16 bytes per trained param) and one batch of activations.
* scoring: one forward of the parent per candidate block over the held-out tokens (the prefix is shared).
* disk: the parent's per-layer files (bf16) + the trained subblocks (bf16) + the library's variant weights.

The MFU is an assumption (40 % of the H100's dense bf16 peak is typical for layer-sized matmuls); replace it with
the figure ``bench/scale.py --device cuda`` measures on the target.
"""

from __future__ import annotations

import argparse

SHAPES = {
    "Llama-3.1-8B": {"hidden": 4096, "layers": 32, "ffn": 14336, "heads": 32, "kv": 8, "vocab": 128256},
    "Llama-3.3-70B": {"hidden": 8192, "layers": 80, "ffn": 28672, "heads": 64, "kv": 8, "vocab": 128256},
}


def plan(name: str, tokens: float, gpus: int, tflops: float, mfu: float, group: int, batch_tokens: int) -> dict:
    from puzzle.arch import ArchSpec, AttentionSpec, BlockSpec, FFNSpec, RopeSpec
    from puzzle.library.build import plan_units
    from puzzle.library.cost import block_params
    from puzzle.library.space import default_space, expand

    s = SHAPES[name]
    att = AttentionSpec(n_heads=s["heads"], n_kv_heads=s["kv"], head_dim=s["hidden"] // s["heads"])
    block = BlockSpec(attention=att, ffn=FFNSpec(intermediate_size=s["ffn"]))
    arch = ArchSpec(
        vocab_size=s["vocab"], hidden_size=s["hidden"], blocks=(block,) * s["layers"], rope=RopeSpec(theta=5e5)
    )
    layers = expand(default_space("llama"), arch)
    units = plan_units(layers, "decoupled")
    p_layer = block_params(arch, block)
    p_embed = s["vocab"] * s["hidden"]
    per_layer_units = [u for u in units if u[0] == 0]
    unit_flops = 0.0
    unit_params = 0
    for _, changes in per_layer_units:
        trained = block_params(arch, BlockSpec(**changes))  # the changed subblocks alone (the rest no-op)
        frozen = block_params(arch, BlockSpec(**{"attention": att, "ffn": block.ffn, **changes})) - trained
        unit_flops += 6 * trained + 4 * frozen
        unit_params += trained
    n = s["layers"]
    bld_flops = 0.0
    peak_task_bytes = 0.0
    for start in range(0, n, group):
        g = min(group, n - start)
        prefix = p_embed + (start + g) * p_layer
        bld_flops += tokens * (2 * prefix + g * unit_flops)
        task_bytes = 2 * prefix + g * 16 * unit_params + 4 * batch_tokens * s["hidden"] * (2 + len(per_layer_units))
        peak_task_bytes = max(peak_task_bytes, task_bytes)
    rate = gpus * tflops * 1e12 * mfu
    variants = sum(len(layer.variants()) for layer in layers)
    holdout = 2**20  # scoring tokens (1 M held-out tokens)
    score_flops = holdout * sum(2 * (n * p_layer + 2 * p_embed) * len(layer.variants()) for layer in layers) / n
    return {
        "name": name,
        "params_b": (n * p_layer + 2 * p_embed) / 1e9,
        "units": len(units),
        "units_per_layer": len(per_layer_units),
        "variants": variants,
        "bld_tflop_per_token": bld_flops / tokens / 1e12,
        "bld_hours": bld_flops / rate / 3600,
        "gpu_hours": bld_flops / (tflops * 1e12 * mfu) / 3600,
        "task_gb": peak_task_bytes / 1e9,
        "score_hours": score_flops / rate / 3600,
        "disk_parent_gb": 2 * (n * p_layer + 2 * p_embed) / 1e9,
        "disk_units_gb": 2 * n * unit_params / 1e9,
        "tokens": tokens,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=float, default=5e8, help="BLD tokens per layer task (every unit sees them)")
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--tflops", type=float, default=989.0, help="peak dense bf16 TFLOP/s per GPU (H100 SXM: 989)")
    ap.add_argument("--mfu", type=float, default=0.4)
    ap.add_argument("--group", type=int, default=1, help="consecutive layers per BLD task")
    ap.add_argument("--batch-tokens", type=int, default=16384)
    args = ap.parse_args()
    print(
        f"| parent | params | units (per layer) | variants | BLD TFLOP/token | BLD wall h on {args.gpus} GPUs | GPU h "
        f"| task peak GB | scoring h | disk parent / units GB |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in SHAPES:
        r = plan(name, args.tokens, args.gpus, args.tflops, args.mfu, args.group, args.batch_tokens)
        print(
            f"| {name} | {r['params_b']:.1f} B | {r['units']} ({r['units_per_layer']}) | {r['variants']} | "
            f"{r['bld_tflop_per_token']:.2f} | {r['bld_hours']:.1f} | {r['gpu_hours']:.0f} | {r['task_gb']:.0f} | "
            f"{r['score_hours']:.2f} | {r['disk_parent_gb']:.0f} / {r['disk_units_gb']:.0f} |"
        )
    print(
        f"\nassumptions: {args.tokens:.2g} BLD tokens per layer task, {args.tflops:g} TFLOP/s peak x MFU {args.mfu:g}, "
        f"{args.group} layer(s) per task, batch of {args.batch_tokens} tokens, 1 M held-out scoring tokens"
    )


if __name__ == "__main__":
    main()
