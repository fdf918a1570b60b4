"""RMSNorm, and the gated group RMSNorm of the Mamba-2 mixer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """``weight * x / rms(x)``, computed in fp32 and cast back to the input dtype (as Llama does)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., C) -> (..., C)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class GatedRMSNorm(nn.Module):
    """``RMSNorm(y * silu(z))`` normalised per group of ``group_size`` channels (one group per Mamba group)."""

    def __init__(self, dim: int, group_size: int, eps: float) -> None:
        super().__init__()
        if dim % group_size:
            raise ValueError(f"gated norm: {dim} channels do not split into groups of {group_size}")
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size = group_size
        self.eps = eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:  # (..., C), (..., C) -> (..., C)
        dtype = y.dtype
        h = y.float() * F.silu(z.float())
        g = h.unflatten(-1, (-1, self.group_size))  # (..., G, C/G)
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * g.flatten(-2).to(dtype)
