"""The Mamba-2 mixer (as in Nemotron-H): projections, causal depthwise conv, SSD scan, gated norm.

    in_proj(x) -> z (H*P) | xBC = [x (H*P), B (G*N), C (G*N)] | dt (H)
    xBC = silu(causal_conv1d(xBC))
    dt  = clamp(softplus(dt + dt_bias), *time_step_limit);  A = -exp(A_log)
    y   = SSD(x, dt, A, B, C) + D x
    out = out_proj(GatedRMSNorm(y, z))          # norm of y * silu(z), one group per Mamba group

Parameter names follow Hugging Face / mamba-ssm (``in_proj``, ``conv1d``, ``dt_bias``, ``A_log``, ``D``,
``norm``, ``out_proj``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from puzzle.model.cache import MambaCache
from puzzle.model.norm import GatedRMSNorm
from puzzle.model.ssd import ssd, ssd_step


class Mamba2(nn.Module):
    def __init__(
        self,
        hidden_size: int,
        n_heads: int,
        head_dim: int,
        n_groups: int,
        d_state: int,
        *,
        conv_kernel: int = 4,
        chunk_size: int = 128,
        conv_bias: bool = True,
        proj_bias: bool = False,
        time_step_limit: tuple[float, float] = (0.0, math.inf),
        norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.n_heads, self.head_dim, self.n_groups, self.d_state = n_heads, head_dim, n_groups, d_state
        self.d_inner = n_heads * head_dim
        self.conv_dim = self.d_inner + 2 * n_groups * d_state
        self.conv_kernel, self.chunk_size = conv_kernel, chunk_size
        self.time_step_limit = time_step_limit
        self.in_proj = nn.Linear(hidden_size, self.d_inner + self.conv_dim + n_heads, bias=proj_bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, conv_kernel, groups=self.conv_dim, bias=conv_bias)
        self.dt_bias = nn.Parameter(torch.zeros(n_heads))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n_heads + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(n_heads))
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // n_groups, norm_eps)
        self.out_proj = nn.Linear(self.d_inner, hidden_size, bias=proj_bias)

    def forward(self, u: torch.Tensor, cache: MambaCache | None = None) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        Bsz, T, _ = u.shape
        H, P, G, N = self.n_heads, self.head_dim, self.n_groups, self.d_state
        z, xBC, dt = self.in_proj(u).split([self.d_inner, self.conv_dim, H], dim=-1)  # (B, T, *)
        xBC = F.silu(self._conv(xBC.transpose(1, 2), cache)).transpose(1, 2)  # (B, T, conv_dim)
        x, Bm, Cm = xBC.split([self.d_inner, G * N, G * N], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias.float()).clamp(*self.time_step_limit)  # (B, T, H)
        A = -torch.exp(self.A_log.float())  # (H,)
        state = cache.ssm if cache is not None else None
        if state is not None and T == 1:
            y = ssd_step(state, x.view(Bsz, H, P), dt[:, 0], A, Bm.view(Bsz, G, N), Cm.view(Bsz, G, N), self.D)
        else:
            y, final = ssd(
                x.view(Bsz, T, H, P),
                dt,
                A,
                Bm.view(Bsz, T, G, N),
                Cm.view(Bsz, T, G, N),
                self.chunk_size,
                self.D,
                state,
            )
            if cache is not None:
                cache.ssm = final
        if cache is not None:
            cache.length += T
        y = self.norm(y.reshape(Bsz, T, self.d_inner), z)  # (B, T, H*P)
        return self.out_proj(y)

    def _conv(self, xBC: torch.Tensor, cache: MambaCache | None) -> torch.Tensor:
        """Causal depthwise conv of (B, conv_dim, T), continuing from the cached last K-1 inputs."""
        K = self.conv_kernel
        if cache is not None and cache.conv is not None:
            xBC = torch.cat([cache.conv, xBC], dim=-1)  # (B, conv_dim, K-1+T)
        else:
            xBC = F.pad(xBC, (K - 1, 0))  # zeros before the first token
        if cache is not None:
            cache.conv = xBC[:, :, -(K - 1) :].clone() if K > 1 else xBC[:, :, :0]
        return F.conv1d(xBC, self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim)  # (B, conv_dim, T)
