"""Child initialisation: a cheaper subblock's weights cut or fitted from its parent subblock.

Importance comes from forward passes only (hooks on the parent subblock run on calibration inputs, i.e. the
normed activations that reach the subblock):

* FFN channels: ``score_k = mean over tokens |X_k| * ||W_down[:, k]||`` with ``X`` the input of down_proj;
  the top channels keep their gate/up rows and down columns (in parent order).
* Fewer KV heads (``kv_method``): ``"mean"`` mean-pools the K/V heads of each merged group; ``"importance"``
  keeps, per merged group, the KV head whose query heads contribute most (L2 of each head's slice of the
  o_proj output, mean over tokens). Default ``"importance"``: on the tiny-llama parent (layers 0/2/4/6) it
  halves the NMSE of mean-pooling at init (KV 4->2: 0.020 vs 0.068; 4->1: 0.086 vs 0.203) and stays lower
  after BLD (0.0029 vs 0.0064; 0.014 vs 0.025), see ``bench/init_methods.py``.
* Mamba-2 heads, group-aware: heads scored by the L2 of ``y * silu(z)`` per head, ranked *within* each group;
  every group keeps the same number, and in_proj (z, x, dt rows), conv1d channels, A_log, D, dt_bias, the
  gated norm and out_proj columns are sliced consistently. Kept heads stay in parent order, so keeping all
  of them reproduces the parent mixer exactly.
* Linear replacements (``linear_method``): ``"lstsq"`` fits ``W`` by ridge least squares from the subblock's
  calibration inputs to its outputs; ``"product"`` is the paper's weight product (``W_O W_V`` for attention,
  ``W_down W_up`` for the FFN), kept for comparison.

Every function returns the child subblock's state dict (names as in ``puzzle.model``); ``init_subblock``
dispatches on the child spec.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from puzzle.arch import AttentionSpec, FFNSpec, MambaSpec

KVMethod = Literal["mean", "importance"]
LinearMethod = Literal["lstsq", "product"]
DEFAULT_KV_METHOD: KVMethod = "importance"  # bench/init_methods.py: lower NMSE than mean-pooling, before and after BLD
DEFAULT_LINEAR_METHOD: LinearMethod = "lstsq"

State = dict[str, torch.Tensor]


@torch.no_grad()
def _capture(module: nn.Module, target: nn.Module, x: torch.Tensor) -> tuple[Any, torch.Tensor]:
    """Run ``module(x)`` and return (the positional inputs ``target`` received, the module output)."""
    seen: list[Any] = []
    handle = target.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs))
    try:
        out = module(x)
    finally:
        handle.remove()
    return seen[0], out


# --- FFN -----------------------------------------------------------------------------------------------


@torch.no_grad()
def ffn_channel_scores(ffn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Contribution of each intermediate channel: mean |X_k| times ||W_down[:, k]||. x (B, T, C) -> (I,)."""
    (inner,), _ = _capture(ffn, ffn.down_proj, x)  # (B, T, I)
    return inner.abs().flatten(0, -2).mean(0) * ffn.down_proj.weight.norm(dim=0)


@torch.no_grad()
def prune_ffn(ffn: nn.Module, x: torch.Tensor, size: int) -> State:
    scores = ffn_channel_scores(ffn, x)
    keep = scores.topk(size).indices.sort().values  # (size,) in parent order
    state = {}
    for name in ("gate_proj", "up_proj"):
        if hasattr(ffn, name):
            lin = getattr(ffn, name)
            state[f"{name}.weight"] = lin.weight[keep].clone()
            if lin.bias is not None:
                state[f"{name}.bias"] = lin.bias[keep].clone()
    state["down_proj.weight"] = ffn.down_proj.weight[:, keep].clone()
    if ffn.down_proj.bias is not None:
        state["down_proj.bias"] = ffn.down_proj.bias.clone()
    return state


# --- attention ---------------------------------------------------------------------------------------


@torch.no_grad()
def attention_head_scores(attn: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """L2 of each query head's contribution to the output (its o_proj slice), mean over tokens. -> (H,)."""
    (y,), _ = _capture(attn, attn.o_proj, x)  # (B, T, H*D)
    H, D = attn.n_heads, attn.head_dim
    y = y.flatten(0, -2).view(-1, H, D)  # (N, H, D)
    w = attn.o_proj.weight.view(-1, H, D)  # (C, H, D)
    contrib = torch.einsum("nhd,chd->nhc", y, w)  # (N, H, C)
    return contrib.norm(dim=-1).mean(0)


@torch.no_grad()
def prune_kv_heads(attn: nn.Module, x: torch.Tensor, n_kv: int, method: KVMethod = DEFAULT_KV_METHOD) -> State:
    """Merge the parent's KV heads into ``n_kv`` groups of ``K / n_kv`` consecutive heads (query heads kept)."""
    K, H, D = attn.n_kv_heads, attn.n_heads, attn.head_dim
    if K % n_kv:
        raise ValueError(f"{n_kv} KV heads do not merge {K} parent KV heads evenly")
    r = K // n_kv
    state = {name: t.clone() for name, t in attn.state_dict().items() if not name.startswith(("k_proj", "v_proj"))}
    if method == "importance":
        per_kv = attention_head_scores(attn, x).view(K, H // K).sum(-1).view(n_kv, r)  # (n_kv, r)
        chosen = torch.arange(n_kv) * r + per_kv.argmax(-1)  # (n_kv,)

        def merge(t: torch.Tensor) -> torch.Tensor:  # (K*D, ...) -> (n_kv*D, ...)
            return t.view(K, D, *t.shape[1:])[chosen].flatten(0, 1).clone()

    elif method == "mean":

        def merge(t: torch.Tensor) -> torch.Tensor:
            return t.view(n_kv, r, D, *t.shape[1:]).mean(1).flatten(0, 1)

    else:
        raise ValueError(f"unknown KV-head method {method!r} (mean, importance)")
    for name in ("k_proj", "v_proj"):
        lin = getattr(attn, name)
        state[f"{name}.weight"] = merge(lin.weight)
        if lin.bias is not None:
            state[f"{name}.bias"] = merge(lin.bias)
    return state


# --- linear replacements -----------------------------------------------------------------------------


@torch.no_grad()
def fit_linear(x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-4) -> torch.Tensor:
    """Ridge least squares ``W`` (C_out, C_in) minimising ``||x W^T - y||^2``; x (..., C_in), y (..., C_out)."""
    x2, y2 = x.flatten(0, -2).double(), y.flatten(0, -2).double()
    gram = x2.T @ x2  # (C_in, C_in)
    gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype)
    return torch.linalg.solve(gram, x2.T @ y2).T.to(x.dtype)


@torch.no_grad()
def linear_attention_product(attn: nn.Module) -> torch.Tensor:
    """``W_O W_V`` with each KV head's value projection shared by its query heads. -> (C, C)."""
    H, K, D = attn.n_heads, attn.n_kv_heads, attn.head_dim
    wv = attn.v_proj.weight.view(K, D, -1).repeat_interleave(H // K, dim=0).flatten(0, 1)  # (H*D, C)
    return attn.o_proj.weight @ wv


@torch.no_grad()
def linear_ffn_product(ffn: nn.Module) -> torch.Tensor:
    """``W_down W_up`` (the activation and gate dropped). -> (C, C)."""
    return ffn.down_proj.weight @ ffn.up_proj.weight


# --- Mamba-2 -----------------------------------------------------------------------------------------


@torch.no_grad()
def mamba_head_scores(mixer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """L2 of ``y * silu(z)`` per head (the gated norm's input), mean over tokens. -> (H,)."""
    (y, z), _ = _capture(mixer, mixer.norm, x)  # (B, T, H*P) each
    gated = (y.float() * torch.nn.functional.silu(z.float())).flatten(0, -2)  # (N, H*P)
    return gated.view(gated.shape[0], mixer.n_heads, mixer.head_dim).norm(dim=-1).mean(0)


@torch.no_grad()
def mamba_keep_heads(scores: torch.Tensor, n_groups: int, n_keep: int) -> torch.Tensor:
    """Indices of the ``n_keep / n_groups`` best heads of every group, in parent order."""
    H = scores.numel()
    per_group, keep_per_group = H // n_groups, n_keep // n_groups
    if n_keep % n_groups or not 0 < keep_per_group <= per_group:
        raise ValueError(f"cannot keep {n_keep} of {H} heads evenly over {n_groups} groups")
    best = scores.view(n_groups, per_group).topk(keep_per_group, dim=-1).indices  # (G, k)
    return (best + torch.arange(n_groups)[:, None] * per_group).flatten().sort().values


@torch.no_grad()
def prune_mamba(mixer: nn.Module, x: torch.Tensor, n_heads: int) -> State:
    H, P, G, N = mixer.n_heads, mixer.head_dim, mixer.n_groups, mixer.d_state
    d_inner = H * P
    heads = mamba_keep_heads(mamba_head_scores(mixer, x), G, n_heads)  # (h,)
    chans = (heads[:, None] * P + torch.arange(P)).flatten()  # (h*P,) channels of the kept heads
    bc = torch.arange(2 * G * N)
    in_rows = torch.cat([chans, d_inner + chans, 2 * d_inner + bc, 2 * d_inner + 2 * G * N + heads])
    conv_rows = torch.cat([chans, d_inner + bc])
    state = {
        "in_proj.weight": mixer.in_proj.weight[in_rows],
        "conv1d.weight": mixer.conv1d.weight[conv_rows],
        "dt_bias": mixer.dt_bias[heads],
        "A_log": mixer.A_log[heads],
        "D": mixer.D[heads],
        "norm.weight": mixer.norm.weight[chans],
        "out_proj.weight": mixer.out_proj.weight[:, chans],
    }
    if mixer.in_proj.bias is not None:
        state["in_proj.bias"] = mixer.in_proj.bias[in_rows]
    if mixer.conv1d.bias is not None:
        state["conv1d.bias"] = mixer.conv1d.bias[conv_rows]
    if mixer.out_proj.bias is not None:
        state["out_proj.bias"] = mixer.out_proj.bias.clone()
    return {k: v.clone() for k, v in state.items()}


# --- dispatch ----------------------------------------------------------------------------------------


@torch.no_grad()
def init_subblock(
    kind: str,
    parent: nn.Module | None,
    parent_spec: Any,
    child_spec: Any,
    x: torch.Tensor,
    *,
    kv_method: KVMethod = DEFAULT_KV_METHOD,
    linear_method: LinearMethod = DEFAULT_LINEAR_METHOD,
) -> State:
    """Initial state of the ``child_spec`` subblock of ``kind`` from the ``parent`` subblock and its inputs ``x``.

    ``x`` (B, T, C) are the normed activations entering the subblock. No-op children have an empty state.
    """
    if child_spec.kind == "no_op":
        return {}
    assert parent is not None, "a non-no-op child needs its parent subblock"
    if child_spec == parent_spec:
        return {k: v.clone() for k, v in parent.state_dict().items()}
    if child_spec.kind == "linear":
        if linear_method == "lstsq":
            w = fit_linear(x, parent(x))
        elif kind == "attention":
            w = linear_attention_product(parent)
        else:
            w = linear_ffn_product(parent)
        return {("linear_attn" if kind == "attention" else "linear_mlp") + ".weight": w.contiguous()}
    if isinstance(child_spec, AttentionSpec):
        return prune_kv_heads(parent, x, child_spec.n_kv_heads, kv_method)
    if isinstance(child_spec, FFNSpec):
        return prune_ffn(parent, x, child_spec.intermediate_size)
    if isinstance(child_spec, MambaSpec):
        return prune_mamba(parent, x, child_spec.n_heads)
    raise TypeError(f"no initialiser for {type(child_spec).__name__}")
