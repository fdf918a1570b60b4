"""The one factory of tiny model configs for the model tests (transformers configs and our ArchSpecs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from puzzle.arch import ArchSpec, AttentionSpec, BlockSpec, FFNSpec, MambaSpec, RopeSpec

VOCAB = 97
HIDDEN = 32


def hf_model(kind: str, **overrides: Any) -> Any:
    """A tiny random transformers model: llama, llama3 (rope scaling), mistral, qwen2 or nemotron_h."""
    import transformers as tf

    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_attention_heads=4, num_key_value_heads=2)
    if kind in ("llama", "llama3"):
        rope = (
            {
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            }
            if kind == "llama3"
            else {"rope_type": "default", "rope_theta": 10000.0}
        )
        cfg = tf.LlamaConfig(**common, intermediate_size=48, num_hidden_layers=3, rope_parameters=rope)
        cls = tf.LlamaForCausalLM
    elif kind == "mistral":
        cfg = tf.MistralConfig(**common, intermediate_size=48, num_hidden_layers=2, head_dim=8, sliding_window=None)
        cls = tf.MistralForCausalLM
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(**common, intermediate_size=48, num_hidden_layers=2, tie_word_embeddings=True)
        cls = tf.Qwen2ForCausalLM
    elif kind == "nemotron_h":
        cfg = tf.NemotronHConfig(
            **common,
            head_dim=8,
            layers_block_type=["linear_attention", "mlp", "full_attention", "linear_attention", "mlp"],
            intermediate_size=48,
            mamba_num_heads=4,
            mamba_head_dim=16,
            n_groups=2,
            ssm_state_size=8,
            chunk_size=4,
        )
        cls = tf.NemotronHForCausalLM
    else:
        raise ValueError(kind)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    torch.manual_seed(0)
    model = cls(cfg).eval()
    with torch.no_grad():  # random, non-trivial norms and biases so that a wrong mapping shows
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", "layernorm.weight", "norm_f.weight", "bias", ".D")):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def save_hf(kind: str, path: Path, **overrides: Any) -> Any:
    model = hf_model(kind, **overrides)
    model.save_pretrained(path)
    return model


def hetero_arch() -> ArchSpec:
    """A heterogeneous hybrid: mixed KV heads, linear and no-op subblocks, different FFN sizes, Mamba."""
    gqa = lambda kv, **kw: AttentionSpec(n_heads=4, n_kv_heads=kv, head_dim=8, **kw)  # noqa: E731
    mamba = MambaSpec(n_heads=4, head_dim=8, n_groups=2, d_state=8, chunk_size=4, time_step_limit=(0.001, 5.0))
    return ArchSpec(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        blocks=(
            BlockSpec(gqa(2), FFNSpec(intermediate_size=48)),
            BlockSpec(gqa(1), FFNSpec(intermediate_size=16)),
            BlockSpec(AttentionSpec.linear(), FFNSpec.no_op()),
            BlockSpec(AttentionSpec.no_op(), FFNSpec.linear()),
            BlockSpec(AttentionSpec.no_op(), FFNSpec.no_op(), mamba),
            BlockSpec(gqa(4, qkv_bias=True), FFNSpec(intermediate_size=24, activation="relu2"), mamba),
            BlockSpec(AttentionSpec.no_op(), FFNSpec.no_op()),
        ),
        rope=RopeSpec(theta=10000.0),
    )


def tokens(batch: int = 2, length: int = 11, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=g)


def hybrid_arch(pattern: str = "M*-M", *, tie: bool = False) -> ArchSpec:
    """A homogeneous Nemotron-H-style hybrid (one layer kind per letter: M Mamba-2, * attention, - MLP)."""
    kinds = {
        "M": BlockSpec(mamba=MambaSpec(n_heads=4, head_dim=8, n_groups=2, d_state=8, chunk_size=4)),
        "*": BlockSpec(attention=AttentionSpec(n_heads=4, n_kv_heads=2, head_dim=8, rope=False)),
        "-": BlockSpec(ffn=FFNSpec(intermediate_size=48, activation="relu2")),
    }
    return ArchSpec(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        blocks=tuple(kinds[c] for c in pattern),
        family="nemotron_h",
        tie_embeddings=tie,
    )
