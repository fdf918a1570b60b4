"""Tests of the block-library builder. Tiny parents come from the preset factory (``puzzle.presets``)."""

from __future__ import annotations

from puzzle.arch import ArchSpec
from puzzle.presets import tiny_hybrid, tiny_llama


def small_llama(*, n_layers: int = 2, n_kv_heads: int = 4, intermediate: int = 256) -> ArchSpec:
    return tiny_llama(128, hidden=64, n_layers=n_layers, n_heads=4, n_kv_heads=n_kv_heads, intermediate=intermediate)


def small_hybrid(pattern: str = "M-*-") -> ArchSpec:
    return tiny_hybrid(
        128,
        hidden=64,
        pattern=pattern,
        n_heads=4,
        n_kv_heads=2,
        intermediate=256,
        mamba_heads=8,
        mamba_head_dim=16,
        mamba_groups=2,
        d_state=16,
        chunk_size=16,
    )
