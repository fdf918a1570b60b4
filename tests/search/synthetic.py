"""Synthetic block libraries for tests and benchmarks (random, but with the shape of real ones)."""

from __future__ import annotations

import numpy as np

from puzzle.arch import AttentionSpec, BlockSpec, FFNSpec
from puzzle.library import BlockLibrary, Layer, Scenario, Variant


def decoupled_library(
    n_layers: int = 80, n_attention: int = 6, n_ffn: int = 30, *, seed: int = 0, hidden: int = 64, n_heads: int = 8
) -> BlockLibrary:
    """Every (attention, FFN) pair per layer: attention options = fewer KV heads .. no-op, FFN sizes .. no-op.

    Costs are additive over the two subblocks (prefill and decode scenarios); the KL of a pair is the sum of
    its subblocks' random layer-dependent KLs (0 for the parent's).
    """
    rng = np.random.default_rng(seed)
    head_dim = hidden // n_heads
    kv_options = [k for k in (8, 4, 2, 1) if n_heads % k == 0][: max(n_attention - 1, 1)]
    att_specs = [AttentionSpec(n_heads=n_heads, n_kv_heads=k, head_dim=head_dim) for k in kv_options]
    att_specs = ([*att_specs, AttentionSpec.no_op()])[:n_attention]
    parent_inter = 4 * hidden
    sizes = np.linspace(parent_inter, parent_inter / (n_ffn - 1), n_ffn - 1).astype(int) if n_ffn > 1 else []
    ffn_specs = [FFNSpec(intermediate_size=int(s)) for s in sizes] + [FFNSpec.no_op()]
    ffn_specs = ffn_specs[:n_ffn]
    layers = []
    for i in range(n_layers):
        sens_a, sens_f = rng.gamma(2.0, 0.5), rng.gamma(2.0, 0.5)
        att_kl = [0.0, *sorted(rng.uniform(0, 1, len(att_specs) - 1) * sens_a)]
        ffn_kl = [0.0, *sorted(rng.uniform(0, 1, len(ffn_specs) - 1) * sens_f)]
        variants = []
        for a, att in enumerate(att_specs):
            kv = 0 if att.is_no_op else att.n_kv_heads
            for f, ffn in enumerate(ffn_specs):
                inter = 0 if ffn.is_no_op else ffn.intermediate_size
                params = (2 * hidden * hidden + 2 * hidden * kv * head_dim if kv else 0) + 3 * hidden * inter
                variants.append(
                    Variant(
                        name=f"att{a}_ffn{f}",
                        is_parent=a == 0 and f == 0,
                        spec=BlockSpec(attention=att, ffn=ffn),
                        metrics={"kl_div": float(att_kl[a] + ffn_kl[f])},
                        costs={"num_params": float(params)},
                        scenario_costs={
                            "prefill": {
                                "runtime_ms": float(
                                    params * 1e-6 * (1 + 0.05 * rng.random()) + (0.3 * kv if kv else 0)
                                ),
                                "memory_mib": float(params / 2**20 + 0.5 * kv),
                            },
                            "decode": {
                                "runtime_ms": float(params * 2e-7 + 0.2 * kv),
                                "memory_mib": float(params / 2**20 + 4.0 * kv),
                            },
                        },
                    )
                )
        layers.append(Layer(i, tuple(variants)))
    return BlockLibrary(
        layers=tuple(layers),
        scenarios={
            "prefill": Scenario("prefill", "prefill", 8, 512, "synthetic", "bf16"),
            "decode": Scenario("decode", "decode", 64, 512, "synthetic", "bf16"),
        },
        default_scenario="prefill",
        family="llama",
        hidden_size=hidden,
        non_block_costs={"num_params": float(2 * 1000 * hidden)},
        non_block_scenario_costs={"prefill": {"runtime_ms": 0.5, "memory_mib": 1.0}},
    )


def random_library(n_layers: int, n_variants: int, *, seed: int = 0) -> BlockLibrary:
    """Small unstructured libraries (random costs and metrics) for brute-force checks."""
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(n_layers):
        variants = []
        for j in range(n_variants):
            att = (
                AttentionSpec(n_heads=4, n_kv_heads=2, head_dim=8)
                if (j == 0 or rng.random() < 0.5)
                else AttentionSpec.no_op()
            )
            ffn = FFNSpec(intermediate_size=32) if (j == 0 or rng.random() < 0.7) else FFNSpec.no_op()
            variants.append(
                Variant(
                    name=f"v{j}",
                    is_parent=j == 0,
                    spec=BlockSpec(attention=att, ffn=ffn),
                    metrics={
                        "kl_div": 0.0 if j == 0 else float(rng.uniform(0, 2)),
                        "cosine": float(rng.uniform(0.5, 1)),
                    },
                    costs={"num_params": float(rng.integers(0, 100) if j else 100)},
                    scenario_costs={
                        "pre": {
                            "runtime_ms": float(rng.uniform(0, 10) if j else 10),
                            "memory_mib": float(rng.uniform(0, 5) if j else 5),
                        },
                        "dec": {
                            "runtime_ms": float(rng.uniform(0, 3) if j else 3),
                            "memory_mib": float(rng.uniform(0, 8) if j else 8),
                        },
                    },
                )
            )
        layers.append(Layer(i, tuple(variants)))
    return BlockLibrary(
        layers=tuple(layers),
        scenarios={
            "pre": Scenario("pre", "prefill", 4, 16, "cpu", "fp32"),
            "dec": Scenario("dec", "decode", 4, 16, "cpu", "fp32"),
        },
        default_scenario="pre",
        non_block_scenario_costs={"pre": {"runtime_ms": 1.0}},
    )
