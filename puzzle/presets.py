"""Parent presets: small real models that train on this CPU machine in minutes.

* ``tiny-llama``: 8 Llama layers, hidden 256, GQA 8 query / 4 KV heads of 32, SwiGLU FFN 768, byte-level BPE
  vocab 8192 (about 10 M parameters, 6 M of them in the blocks).
* ``tiny-hybrid``: a Nemotron-H-like stack of 10 single-mixer layers with pattern ``M-M*-M-M*-``
  (``M`` Mamba-2 with 8 heads of 64 in 2 groups and state 64, ``*`` attention 8 / 4 heads without RoPE,
  ``-`` squared-ReLU MLP 1024), hidden 256, the same tokenizer size.

``make_arch(vocab_size)`` builds the ``ArchSpec`` once the tokenizer (and so the vocabulary) is known; the
sizes are keyword arguments so tests build tiny versions from the same factory.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from puzzle.arch import ArchSpec, AttentionSpec, BlockSpec, FFNSpec, MambaSpec, RopeSpec
from puzzle.errors import ConfigError


def warmup_cosine(step: int, *, lr: float, steps: int, warmup: int, min_lr_ratio: float) -> float:
    """The one learning-rate schedule (parent training, BLD, GKD): for optimizer step ``step`` (0-based), linear
    warmup over ``warmup`` steps, then cosine decay to ``min_lr_ratio * lr`` at ``steps``."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min((step - warmup) / max(steps - warmup, 1), 1.0)
    floor = lr * min_lr_ratio
    return floor + (lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings: AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr``."""

    steps: int = 1000
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 2e-3
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 100
    held_out_fraction: float = 0.05

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "checkpoint_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"training: {name} must be a positive integer, got {value!r}")
        if self.lr <= 0:
            raise ConfigError(f"training: lr must be positive, got {self.lr}")
        if self.warmup_steps < 0:
            raise ConfigError(f"training: warmup_steps must be >= 0, got {self.warmup_steps}")
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))

    def to_dict(self) -> dict[str, object]:
        return {f: getattr(self, f) for f in self.__dataclass_fields__} | {"betas": list(self.betas)}


@dataclass(frozen=True)
class Preset:
    """A named parent: how to build its architecture for a vocabulary, and how to train it."""

    name: str
    description: str
    make_arch: Callable[[int], ArchSpec]
    vocab_size: int = 8192
    train: TrainConfig = field(default_factory=TrainConfig)


def tiny_llama(
    vocab_size: int,
    *,
    hidden: int = 256,
    n_layers: int = 8,
    n_heads: int = 8,
    n_kv_heads: int = 4,
    intermediate: int = 768,
    max_positions: int = 2048,
) -> ArchSpec:
    attention = AttentionSpec(n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=hidden // n_heads)
    ffn = FFNSpec(intermediate_size=intermediate, activation="swiglu")
    return ArchSpec(
        vocab_size=vocab_size,
        hidden_size=hidden,
        blocks=tuple(BlockSpec(attention=attention, ffn=ffn) for _ in range(n_layers)),
        family="llama",
        norm_eps=1e-5,
        rope=RopeSpec(theta=10000.0),
        max_position_embeddings=max_positions,
    )


def tiny_hybrid(
    vocab_size: int,
    *,
    hidden: int = 256,
    pattern: str = "M-M*-M-M*-",
    n_heads: int = 8,
    n_kv_heads: int = 4,
    intermediate: int = 1024,
    mamba_heads: int = 8,
    mamba_head_dim: int = 64,
    mamba_groups: int = 2,
    d_state: int = 64,
    chunk_size: int = 64,
    max_positions: int = 2048,
) -> ArchSpec:
    """Nemotron-H layer pattern: ``M`` Mamba-2, ``*`` attention (no RoPE), ``-`` squared-ReLU MLP."""
    kinds = {
        "M": BlockSpec(
            mamba=MambaSpec(
                n_heads=mamba_heads,
                head_dim=mamba_head_dim,
                n_groups=mamba_groups,
                d_state=d_state,
                conv_kernel=4,
                chunk_size=chunk_size,
            )
        ),
        "*": BlockSpec(
            attention=AttentionSpec(n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=hidden // n_heads, rope=False)
        ),
        "-": BlockSpec(ffn=FFNSpec(intermediate_size=intermediate, activation="relu2")),
    }
    unknown = sorted(set(pattern) - set(kinds))
    if unknown:
        raise ConfigError(
            f"hybrid pattern {pattern!r}: unknown layer type(s) {unknown}; use M (Mamba-2), * (attention), - (MLP)"
        )
    return ArchSpec(
        vocab_size=vocab_size,
        hidden_size=hidden,
        blocks=tuple(kinds[c] for c in pattern),
        family="nemotron_h",
        norm_eps=1e-5,
        max_position_embeddings=max_positions,
    )


PRESETS: dict[str, Preset] = {
    "tiny-llama": Preset(
        name="tiny-llama",
        description="8-layer Llama, hidden 256, GQA 8/4 heads, SwiGLU 768, BPE 8k",
        make_arch=tiny_llama,
        train=TrainConfig(steps=240, batch_size=16, seq_len=256, lr=3e-3, warmup_steps=30, checkpoint_every=50),
    ),
    "tiny-hybrid": Preset(
        name="tiny-hybrid",
        description="10-layer Nemotron-H-like hybrid M-M*-M-M*- (Mamba-2, attention, relu2 MLP), hidden 256, BPE 8k",
        make_arch=tiny_hybrid,
        train=TrainConfig(steps=300, batch_size=16, seq_len=256, lr=3e-3, warmup_steps=30, checkpoint_every=50),
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None
