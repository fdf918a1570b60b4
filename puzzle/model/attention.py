"""Grouped-query attention (optionally rotary), and its single-linear replacement.

The kernel is ``torch.nn.functional.scaled_dot_product_attention``; flash-attn is used instead only when it
is importable, the tensors are on CUDA in fp16/bf16. Parameter names follow Hugging Face
(``q_proj``/``k_proj``/``v_proj``/``o_proj``; ``linear_attn`` as in DeciLM).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from puzzle.arch import RopeSpec
from puzzle.model.cache import KVCache
from puzzle.model.rope import Rotary, apply_rope

try:  # optional GPU fast path; any failure to import just means "not available"
    from flash_attn import flash_attn_func as _flash_attn_func
except Exception:
    _flash_attn_func = None


def _use_flash(q: torch.Tensor) -> bool:
    return _flash_attn_func is not None and q.is_cuda and q.dtype in (torch.float16, torch.bfloat16)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal GQA of queries (B, H, T, D) on keys/values (B, H_kv, S, D), the T queries being the last of S.

    Returns (B, T, H, D).
    """
    T, S = q.shape[2], k.shape[2]
    if _use_flash(q):  # flash-attn aligns the causal mask bottom-right, as needed with a cache
        return _flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True)
    gqa = q.shape[1] != k.shape[1]
    if T == S:
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    elif T == 1:
        y = F.scaled_dot_product_attention(q, k, v, enable_gqa=gqa)
    else:  # several new tokens after a cached prefix: query t sees keys up to S - T + t
        mask = torch.ones(T, S, dtype=torch.bool, device=q.device).tril(diagonal=S - T)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
    return y.transpose(1, 2)  # (B, T, H, D)


class Attention(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        *,
        rope: RopeSpec | None,
        qkv_bias: bool = False,
        o_bias: bool = False,
    ) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.q_proj = nn.Linear(hidden_size, n_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden_size, n_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden_size, n_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(n_heads * head_dim, hidden_size, bias=o_bias)
        self.rotary = Rotary(head_dim, rope) if rope is not None else None

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        if self.rotary is not None:
            cos, sin = self.rotary(cache.length if cache is not None else 0, T, q)  # (T, D)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(k, v)  # (B, H_kv, S, D)
        y = attend(q, k, v)  # (B, T, H, D)
        return self.o_proj(y.reshape(B, T, -1))


class LinearAttention(nn.Module):
    """Attention replaced by one linear map (each token attends only to itself: ``W_V W_O``)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear_attn = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        return self.linear_attn(x)
