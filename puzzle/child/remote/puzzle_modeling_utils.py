# Written for Puzzle exports (https://github.com/ -- see puzzle_manifest.json); pure PyTorch + transformers.
"""Layers, the per-layer cache and the generation glue shared by the DeciLM and Nemotron-H-Puzzle remote code.

This file is copied next to ``config.json`` in every heterogeneous Puzzle export and imported by the
``modeling_*.py`` beside it; it depends only on ``torch`` and ``transformers`` (4.x or 5.x).

Caching is our own ``PuzzleCache`` (attention keys / values, Mamba conv and SSM states, tokens seen), passed
through ``generate`` under both names transformers has used for it (``past_key_values`` in 4.x, ``cache`` in
5.x). Batches must not be padded (every sequence is the same length): padded batched generation is refused.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])


def tied_weights_keys(head: str, embedding: str) -> Any:
    """``_tied_weights_keys`` in the form of the installed transformers (5.x: a mapping; 4.x: a list)."""
    return {head: embedding} if TRANSFORMERS_MAJOR >= 5 else [head]


class PuzzleCache:
    """The decoding state of every layer, by layer index, and the number of tokens already consumed."""

    is_compileable = False
    is_croppable = False
    is_linear = (True,)  # transformers 5: "do not slice the inputs for me" (prepare_inputs_for_generation does)
    _is_user_defined = False

    def __init__(self) -> None:
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.conv: dict[int, torch.Tensor] = {}
        self.ssm: dict[int, torch.Tensor] = {}
        self.seen = 0

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen

    def update_kv(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if layer in self.keys:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


def pick_cache(past_key_values: Any, cache: Any, use_cache: bool | None) -> PuzzleCache | None:
    """Our cache from either argument, a fresh one when caching is asked for, else None."""
    for candidate in (cache, past_key_values):
        if isinstance(candidate, PuzzleCache):
            return candidate
    return PuzzleCache() if use_cache else None


def prepare_inputs(input_ids: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
    """``prepare_inputs_for_generation``: feed only the tokens our cache has not seen."""
    cache = next((c for c in (kwargs.get("cache"), kwargs.get("past_key_values")) if isinstance(c, PuzzleCache)), None)
    use_cache = kwargs.get("use_cache", True) is not False
    if cache is not None and cache.seen:
        input_ids = input_ids[:, cache.seen :]
    elif use_cache:
        cache = PuzzleCache()
    mask = kwargs.get("attention_mask")
    return {"input_ids": input_ids, "past_key_values": cache, "use_cache": use_cache, "attention_mask": mask}


def check_unpadded(attention_mask: torch.Tensor | None) -> None:
    if attention_mask is not None and not bool(attention_mask.all()):
        raise NotImplementedError(
            "padded batches are not supported by this model's code; generate one length at a time"
        )


def finish(logits: torch.Tensor, labels: torch.Tensor | None, cache: PuzzleCache | None, new_tokens: int) -> Any:
    """The model output, its cache under the installed transformers' name (5.x ``cache``, 4.x ``past_key_values``)."""
    if cache is not None:
        cache.seen += new_tokens
    loss = None
    if labels is not None:
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)
    name = "cache" if TRANSFORMERS_MAJOR >= 5 else "past_key_values"
    return CausalLMOutputWithPast(loss=loss, logits=logits, **{name: cache})


# --- layers ----------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return self.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)


def rope_inv_freq(head_dim: int, params: dict[str, Any]) -> torch.Tensor:
    """Inverse frequencies for ``rope_type`` default or llama3 (``params`` as in ``rope_parameters``)."""
    theta = float(params.get("rope_theta", 10000.0))
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind == "default":
        return inv
    if kind != "llama3":
        raise ValueError(f"rope_type {kind!r} is not supported by this model's code (default, llama3)")
    factor, low, high = float(params["factor"]), float(params["low_freq_factor"]), float(params["high_freq_factor"])
    old = float(params["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    return torch.where(medium, smoothed, scaled)


def apply_rope(x: torch.Tensor, start: int, inv_freq: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, H, T, D) for positions ``start .. start + T - 1``."""
    positions = torch.arange(start, start + x.shape[2], device=x.device).float()
    freqs = positions[:, None] * inv_freq.to(x.device)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    """Causal grouped-query attention (``n_kv_heads`` KV heads), optionally rotary."""

    def __init__(
        self,
        layer: int,
        hidden: int,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        rope: dict[str, Any] | None,
        qkv_bias: bool = False,
        o_bias: bool = False,
    ) -> None:
        super().__init__()
        self.layer, self.n_heads, self.n_kv_heads, self.head_dim = layer, n_heads, n_kv_heads, head_dim
        self.q_proj = nn.Linear(hidden, n_heads * head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(hidden, n_kv_heads * head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(hidden, n_kv_heads * head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(n_heads * head_dim, hidden, bias=o_bias)
        self.rope = rope

    def forward(self, x: torch.Tensor, cache: PuzzleCache | None) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        start = cache.seen if cache is not None else 0
        if self.rope is not None:
            inv_freq = rope_inv_freq(self.head_dim, self.rope)
            q, k = apply_rope(q, start, inv_freq), apply_rope(k, start, inv_freq)
        if cache is not None:
            k, v = cache.update_kv(self.layer, k, v)
        S = k.shape[2]
        k = k.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        v = v.repeat_interleave(self.n_heads // self.n_kv_heads, dim=1)
        mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(diagonal=S - T)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, hidden: int, inner: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inner, bias=bias)
        self.up_proj = nn.Linear(hidden, inner, bias=bias)
        self.down_proj = nn.Linear(inner, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class ReLU2MLP(nn.Module):
    def __init__(self, hidden: int, inner: int, bias: bool = False) -> None:
        super().__init__()
        self.up_proj = nn.Linear(hidden, inner, bias=bias)
        self.down_proj = nn.Linear(inner, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.relu(self.up_proj(x)).square())


class Linear(nn.Module):
    """A subblock replaced by one (hidden x hidden) linear map, stored as ``<name>.weight``."""

    def __init__(self, hidden: int, name: str) -> None:
        super().__init__()
        self.name = name
        self.add_module(name, nn.Linear(hidden, hidden, bias=False))

    def forward(self, x: torch.Tensor, cache: PuzzleCache | None = None) -> torch.Tensor:
        return getattr(self, self.name)(x)


SCAN_CHUNK = 64


def scan_chunk(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The selective scan over one chunk in closed form, from ``state`` (b, H, P, N); returns (y, new state).

    ``h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t``, ``y_t = C_t h_t``: with ``c_t`` the running sum of ``dt A``,
    ``y_t = exp(c_t) C_t h_0 + sum_{s<=t} exp(c_t - c_s) (C_t . B_s) dt_s x_s``. x (b, L, H, P), dt (b, L, H),
    B / C (b, L, H, N), all fp32.
    """
    L = x.shape[1]
    cum = torch.cumsum(dt * A, dim=1)  # (b, L, H)
    causal = torch.ones(L, L, dtype=torch.bool, device=x.device).tril()
    diff = (cum[:, :, None, :] - cum[:, None, :, :]).masked_fill(~causal[None, :, :, None], -torch.inf)
    weights = torch.einsum("bthn,bshn->bths", C, B) * torch.exp(diff).permute(0, 1, 3, 2)  # (b, t, H, s)
    y = torch.einsum("bths,bshp->bthp", weights, x * dt[..., None])
    y = y + torch.einsum("bthn,bhpn->bthp", C, state) * torch.exp(cum)[..., None]
    tail = torch.exp(cum[:, -1:, :] - cum) * dt  # (b, L, H): decay from each step to the chunk's end
    state = state * torch.exp(cum[:, -1])[..., None, None] + torch.einsum("bsh,bshp,bshn->bhpn", tail, x, B)
    return y, state


class Mamba2(nn.Module):
    """The Mamba-2 mixer: in_proj -> [z, xBC, dt]; causal depthwise conv on xBC; selective scan; gated norm.

    The scan runs in closed form over chunks of ``SCAN_CHUNK`` tokens (``scan_chunk``), fp32 throughout.
    """

    def __init__(self, layer: int, hidden: int, cfg: Any, eps: float) -> None:
        super().__init__()
        self.layer = layer
        self.H, self.P = int(cfg["mamba_num_heads"]), int(cfg["mamba_head_dim"])
        self.G, self.N = int(cfg["n_groups"]), int(cfg["ssm_state_size"])
        self.K = int(cfg["conv_kernel"])
        limit = cfg.get("time_step_limit") or [cfg.get("time_step_min", 0.0), math.inf]
        self.dt_min, self.dt_max = float(limit[0]), float(limit[1])
        self.d_inner = self.H * self.P
        self.conv_dim = self.d_inner + 2 * self.G * self.N
        bias = bool(cfg.get("use_bias", False))
        self.in_proj = nn.Linear(hidden, self.d_inner + self.conv_dim + self.H, bias=bias)
        self.conv1d = nn.Conv1d(
            self.conv_dim, self.conv_dim, self.K, groups=self.conv_dim, bias=bool(cfg.get("use_conv_bias", True))
        )
        self.dt_bias = nn.Parameter(torch.zeros(self.H))
        self.A_log = nn.Parameter(torch.zeros(self.H))
        self.D = nn.Parameter(torch.ones(self.H))
        self.norm = nn.Module()
        self.norm.weight = nn.Parameter(torch.ones(self.d_inner))
        self.eps = eps
        self.out_proj = nn.Linear(self.d_inner, hidden, bias=bias)

    def forward(self, u: torch.Tensor, cache: PuzzleCache | None) -> torch.Tensor:
        B, T, _ = u.shape
        H, P, G, N, K = self.H, self.P, self.G, self.N, self.K
        z, xBC, dt = self.in_proj(u).split([self.d_inner, self.conv_dim, H], dim=-1)
        xBC = xBC.transpose(1, 2)  # (B, conv_dim, T)
        prev = cache.conv.get(self.layer) if cache is not None else None
        xBC = torch.cat([prev, xBC], dim=-1) if prev is not None else F.pad(xBC, (K - 1, 0))
        if cache is not None:
            cache.conv[self.layer] = xBC[:, :, xBC.shape[-1] - (K - 1) :].clone()
        xBC = F.silu(F.conv1d(xBC, self.conv1d.weight, self.conv1d.bias, groups=self.conv_dim)).transpose(1, 2)
        x, Bm, Cm = xBC.split([self.d_inner, G * N, G * N], dim=-1)
        dt = F.softplus(dt.float() + self.dt_bias.float()).clamp(self.dt_min, self.dt_max)  # (B, T, H)
        A = -torch.exp(self.A_log.float())
        x = x.float().view(B, T, H, P)
        Bh = Bm.float().view(B, T, G, N).repeat_interleave(H // G, dim=2)  # (B, T, H, N)
        Ch = Cm.float().view(B, T, G, N).repeat_interleave(H // G, dim=2)
        state = cache.ssm.get(self.layer) if cache is not None else None
        state = state if state is not None else x.new_zeros(B, H, P, N)
        ys = []
        for start in range(0, T, SCAN_CHUNK):
            end = min(T, start + SCAN_CHUNK)
            y, state = scan_chunk(x[:, start:end], dt[:, start:end], A, Bh[:, start:end], Ch[:, start:end], state)
            ys.append(y + self.D.float()[:, None] * x[:, start:end])
        if cache is not None:
            cache.ssm[self.layer] = state
        y = torch.cat(ys, dim=1).reshape(B, T, self.d_inner)
        h = y * F.silu(z.float())
        g = h.unflatten(-1, (G, -1))
        g = g * torch.rsqrt(g.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.out_proj((self.norm.weight * g.flatten(-2).to(u.dtype)).to(u.dtype))
