"""Rotary position embeddings, with Llama-3 frequency scaling (``RopeSpec.scaling_type == "llama3"``)."""

from __future__ import annotations

import math

import torch
from torch import nn

from puzzle.arch import RopeSpec


def rope_inv_freq(head_dim: int, rope: RopeSpec) -> torch.Tensor:
    """Inverse frequencies (head_dim / 2,) in fp32, Llama-3 scaled when the spec asks for it."""
    inv_freq = 1.0 / (rope.theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64, device="cpu").float() / head_dim))
    if rope.scaling_type == "none":
        return inv_freq
    # Llama 3.1: long wavelengths are divided by `factor`, short ones kept, the band between interpolated.
    old_len = rope.original_max_position_embeddings
    low_freq_wavelen = old_len / rope.low_freq_factor
    high_freq_wavelen = old_len / rope.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / rope.factor, inv_freq)
    smooth = (old_len / wavelen - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    smoothed = (1 - smooth) * scaled / rope.factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, H, T, D) by the angles of ``cos`` / ``sin`` (T, D)."""
    return x * cos + rotate_half(x) * sin


class Rotary(nn.Module):
    """cos / sin tables for positions, grown on demand and kept per device (no state_dict entries)."""

    def __init__(self, head_dim: int, rope: RopeSpec) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.inv_freq = rope_inv_freq(head_dim, rope)  # (D/2,), a plain tensor: not a buffer, not saved
        self._tables: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(self, start: int, length: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (length, D) for positions ``start .. start + length - 1``, in ``like``'s dtype."""
        key = (like.device, like.dtype)
        table = self._tables.get(key)
        if table is None or table[0].shape[0] < start + length:
            size = max(start + length, 2 * (table[0].shape[0] if table is not None else 256))
            positions = torch.arange(size, device=like.device).float()
            freqs = positions[:, None] * self.inv_freq.to(like.device)[None, :]  # (L, D/2)
            emb = torch.cat((freqs, freqs), dim=-1)  # (L, D)
            table = (emb.cos().to(like.dtype), emb.sin().to(like.dtype))
            self._tables[key] = table
        cos, sin = table
        return cos[start : start + length], sin[start : start + length]
