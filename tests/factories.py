"""Tiny parent architectures shared by the tests (one factory, small enough for 2 CPU cores)."""

from __future__ import annotations

from puzzle.arch import ArchSpec, AttentionSpec, BlockSpec, FFNSpec, MambaSpec


def tiny_llama_arch(
    *, n_layers: int = 2, hidden: int = 64, n_heads: int = 4, n_kv_heads: int = 4, ffn: int = 256, vocab: int = 128
) -> ArchSpec:
    block = BlockSpec(
        attention=AttentionSpec(n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=hidden // n_heads),
        ffn=FFNSpec(intermediate_size=ffn),
    )
    return ArchSpec(vocab_size=vocab, hidden_size=hidden, blocks=(block,) * n_layers, family="llama")


def tiny_hybrid_arch(*, hidden: int = 64, vocab: int = 128, pattern: str = "M-*-") -> ArchSpec:
    """Nemotron-H style: ``M`` Mamba-2, ``*`` attention (no RoPE), ``-`` squared-ReLU MLP; one subblock per layer."""
    blocks = []
    for ch in pattern:
        if ch == "M":
            blocks.append(BlockSpec(mamba=MambaSpec(n_heads=8, head_dim=16, n_groups=2, d_state=16, chunk_size=16)))
        elif ch == "*":
            blocks.append(BlockSpec(attention=AttentionSpec(n_heads=4, n_kv_heads=2, head_dim=16, rope=False)))
        else:
            blocks.append(BlockSpec(ffn=FFNSpec(intermediate_size=256, activation="relu2")))
    return ArchSpec(vocab_size=vocab, hidden_size=hidden, blocks=tuple(blocks), family="nemotron_h")
