"""One layer built from a ``BlockSpec``, and the registry mapping subblock specs to modules.

A block applies its subblocks in the order mamba, attention, ffn, each as ``x = x + sub(norm(x))`` with its
own RMSNorm. A no-op subblock builds no module and no norm (its attribute is ``None``). Builders receive
the subblock's own spec plus the few model-wide values they need (hidden size, norm eps, rope), never a
whole model config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from puzzle.arch import ArchSpec, AttentionSpec, BlockSpec, FFNSpec, MambaSpec, RopeSpec
from puzzle.model.attention import Attention, LinearAttention
from puzzle.model.cache import LayerCache
from puzzle.model.ffn import LinearFFN, ReLU2MLP, SwiGLU
from puzzle.model.mamba2 import Mamba2
from puzzle.model.norm import RMSNorm

Subblock = AttentionSpec | FFNSpec | MambaSpec


@dataclass(frozen=True)
class ModelContext:
    """The model-wide values a subblock may need."""

    hidden_size: int
    norm_eps: float = 1e-5
    rope: RopeSpec = field(default_factory=RopeSpec)

    @classmethod
    def from_arch(cls, arch: ArchSpec) -> ModelContext:
        return cls(hidden_size=arch.hidden_size, norm_eps=arch.norm_eps, rope=arch.rope)


Builder = Callable[[Any, ModelContext], nn.Module]  # (spec of the registered type, context) -> module
_REGISTRY: dict[tuple[type, str], Builder] = {}


def register(spec_type: type, kind: str) -> Callable[[Builder], Builder]:
    """Register the builder of subblocks of ``spec_type`` with ``spec.kind == kind``."""

    def wrap(fn: Builder) -> Builder:
        _REGISTRY[(spec_type, kind)] = fn
        return fn

    return wrap


def build_subblock(spec: Subblock, ctx: ModelContext) -> nn.Module | None:
    """The module for one subblock spec, or None for a no-op."""
    if spec.kind == "no_op":
        return None
    try:
        builder = _REGISTRY[(type(spec), spec.kind)]
    except KeyError:
        raise NotImplementedError(f"no module registered for {type(spec).__name__}(kind={spec.kind!r})") from None
    return builder(spec, ctx)


@register(AttentionSpec, "gqa")
def _gqa(spec: AttentionSpec, ctx: ModelContext) -> nn.Module:
    return Attention(
        ctx.hidden_size,
        spec.n_heads,
        spec.n_kv_heads,
        spec.head_dim,
        rope=ctx.rope if spec.rope else None,
        qkv_bias=spec.qkv_bias,
        o_bias=spec.o_bias,
    )


@register(AttentionSpec, "linear")
def _linear_attention(spec: AttentionSpec, ctx: ModelContext) -> nn.Module:
    return LinearAttention(ctx.hidden_size)


@register(FFNSpec, "mlp")
def _mlp(spec: FFNSpec, ctx: ModelContext) -> nn.Module:
    cls = SwiGLU if spec.activation == "swiglu" else ReLU2MLP
    return cls(ctx.hidden_size, spec.intermediate_size, bias=spec.bias)


@register(FFNSpec, "linear")
def _linear_ffn(spec: FFNSpec, ctx: ModelContext) -> nn.Module:
    return LinearFFN(ctx.hidden_size)


@register(MambaSpec, "mamba")
def _mamba(spec: MambaSpec, ctx: ModelContext) -> nn.Module:
    return Mamba2(
        ctx.hidden_size,
        spec.n_heads,
        spec.head_dim,
        spec.n_groups,
        spec.d_state,
        conv_kernel=spec.conv_kernel,
        chunk_size=spec.chunk_size,
        conv_bias=spec.conv_bias,
        proj_bias=spec.proj_bias,
        time_step_limit=spec.time_step_limit,
        norm_eps=ctx.norm_eps,
    )


class Block(nn.Module):
    """``x -> x + mamba(norm(x)) -> + attn(norm(.)) -> + ffn(norm(.))``, skipping absent subblocks.

    Call it on hidden states (B, T, C) alone (a fresh sequence from position 0), or with its
    ``LayerCache`` to continue a sequence.
    """

    def __init__(self, spec: BlockSpec, ctx: ModelContext) -> None:
        super().__init__()
        self.spec = spec
        self.mamba = build_subblock(spec.mamba, ctx)
        self.attn = build_subblock(spec.attention, ctx)
        self.ffn = build_subblock(spec.ffn, ctx)
        self.mamba_norm = RMSNorm(ctx.hidden_size, ctx.norm_eps) if self.mamba is not None else None
        self.attn_norm = RMSNorm(ctx.hidden_size, ctx.norm_eps) if self.attn is not None else None
        self.ffn_norm = RMSNorm(ctx.hidden_size, ctx.norm_eps) if self.ffn is not None else None

    def forward(self, x: torch.Tensor, cache: LayerCache | None = None) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        if self.mamba is not None and self.mamba_norm is not None:
            x = x + self.mamba(self.mamba_norm(x), cache.mamba if cache is not None else None)
        if self.attn is not None and self.attn_norm is not None:
            x = x + self.attn(self.attn_norm(x), cache.kv if cache is not None else None)
        if self.ffn is not None and self.ffn_norm is not None:
            x = x + self.ffn(self.ffn_norm(x))
        return x
