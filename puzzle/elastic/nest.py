"""Nesting the parent: rank and permute it so that every smaller size is a prefix (Nemotron Elastic, step 1).

Importance comes from forward passes on calibration text, with the builder's own functions
(``puzzle.library.prune``), each on the normed activations that reach the subblock:

* FFN channels: ``mean |X_k| * ||W_down[:, k]||``; channels sorted best first (gate/up rows, down columns).
* Attention: each query head's output contribution; a KV group's score is the sum over its query heads. Groups
  are sorted best first and *queries move with their KV group* (within a group, queries best first), so the
  first ``k`` KV groups and their queries are a valid smaller GQA block.
* Mamba-2 heads: the L2 of ``y * silu(z)`` per head, sorted best first *within each group* (heads never leave
  their group), so keeping the first ``m`` heads of every group keeps the B/C broadcast valid.
* Depth: the normalised MSE of the logits with one layer removed,
  ``MSE(logits, logits without layer i) / MSE(logits, 0)`` (the paper's choice); recorded, and the order in
  which a uniform (depth-only) baseline would drop layers.

A permutation changes no function: heads, groups and channels are only reordered (test: fp32 to 1e-5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from puzzle.library.prune import attention_head_scores, ffn_channel_scores, mamba_head_scores
from puzzle.model import CausalLM

_MODULES = (("mamba", "mamba_norm"), ("attn", "attn_norm"), ("ffn", "ffn_norm"))


@dataclass(frozen=True)
class NestReport:
    """What nesting measured: per-layer depth importance (NMSE) and the layers from least to most important."""

    depth_nmse: tuple[float, ...]

    @property
    def depth_order(self) -> tuple[int, ...]:
        """Layer indices, least important first (the order a depth-only baseline removes them in)."""
        return tuple(sorted(range(len(self.depth_nmse)), key=lambda i: self.depth_nmse[i]))

    def to_dict(self) -> dict[str, Any]:
        return {"depth_nmse": list(self.depth_nmse), "depth_order": list(self.depth_order)}


@torch.no_grad()
def subblock_inputs(model: CausalLM, ids: torch.Tensor) -> list[dict[str, torch.Tensor]]:
    """Per layer, the normed input of each present subblock (``mamba`` / ``attn`` / ``ffn``) on ``ids``."""
    seen: list[dict[str, torch.Tensor]] = [{} for _ in model.blocks]
    handles = []
    for i, block in enumerate(model.blocks):
        for name, _ in _MODULES:
            module = getattr(block, name)
            if module is not None:
                hook = lambda _m, inputs, i=i, name=name: seen[i].__setitem__(name, inputs[0])  # noqa: E731
                handles.append(module.register_forward_pre_hook(hook))
    try:
        model(ids)
    finally:
        for h in handles:
            h.remove()
    return seen


def _desc(scores: torch.Tensor) -> torch.Tensor:
    return torch.argsort(scores, descending=True, stable=True)


@torch.no_grad()
def permute_ffn(ffn: nn.Module, order: torch.Tensor) -> None:
    """Reorder the intermediate channels of an MLP (SwiGLU or relu2) to ``order``."""
    for name in ("gate_proj", "up_proj"):
        lin = getattr(ffn, name, None)
        if lin is not None:
            lin.weight.copy_(lin.weight[order])
            if lin.bias is not None:
                lin.bias.copy_(lin.bias[order])
    ffn.down_proj.weight.copy_(ffn.down_proj.weight[:, order])


@torch.no_grad()
def permute_attention(attn: nn.Module, group_order: torch.Tensor, head_order: torch.Tensor) -> None:
    """Reorder KV heads to ``group_order`` and query heads to ``head_order`` (which must keep each query with
    its KV group: query ``head_order[j]`` belongs to KV head ``group_order[j // r]``)."""
    D = attn.head_dim

    def rows(t: torch.Tensor, order: torch.Tensor) -> torch.Tensor:  # (N*D, ...) by head blocks
        return t.view(-1, D, *t.shape[1:])[order].flatten(0, 1)

    for name, order in (("q_proj", head_order), ("k_proj", group_order), ("v_proj", group_order)):
        lin = getattr(attn, name)
        lin.weight.copy_(rows(lin.weight, order))
        if lin.bias is not None:
            lin.bias.copy_(rows(lin.bias, order))
    w = attn.o_proj.weight  # (C, H*D)
    w.copy_(w.view(w.shape[0], -1, D)[:, head_order].flatten(1))


def attention_orders(scores: torch.Tensor, n_kv: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(KV groups best first, query heads group by group, best first within each) from per-query scores (H,)."""
    r = scores.numel() // n_kv
    per_group = scores.view(n_kv, r)  # (K, r)
    groups = _desc(per_group.sum(-1))
    heads = torch.cat([g * r + _desc(per_group[g]) for g in groups.tolist()])
    return groups, heads


@torch.no_grad()
def permute_mamba(mixer: nn.Module, head_order: torch.Tensor) -> None:
    """Reorder Mamba-2 heads to ``head_order`` (each head must stay in its group): z, x, dt rows of in_proj,
    x channels of conv1d, A_log, D, dt_bias, the gated norm and out_proj columns. B/C are untouched."""
    H, P, G, N = mixer.n_heads, mixer.head_dim, mixer.n_groups, mixer.d_state
    assert torch.equal(head_order // (H // G), torch.arange(H) // (H // G)), "heads must stay in their groups"
    d_inner = H * P
    chans = (head_order[:, None] * P + torch.arange(P)).flatten()  # (H*P,)
    bc = torch.arange(2 * G * N)
    in_rows = torch.cat([chans, d_inner + chans, 2 * d_inner + bc, 2 * d_inner + 2 * G * N + head_order])
    conv_rows = torch.cat([chans, d_inner + bc])
    for t, order in ((mixer.in_proj.weight, in_rows), (mixer.conv1d.weight, conv_rows)):
        t.copy_(t[order])
    for bias, order in ((mixer.in_proj.bias, in_rows), (mixer.conv1d.bias, conv_rows)):
        if bias is not None:
            bias.copy_(bias[order])
    for t in (mixer.dt_bias, mixer.A_log, mixer.D):
        t.copy_(t[head_order])
    mixer.norm.weight.copy_(mixer.norm.weight[chans])
    mixer.out_proj.weight.copy_(mixer.out_proj.weight[:, chans])


def mamba_order(scores: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Heads best first within each group, groups in place. scores (H,) -> (H,)."""
    per = scores.numel() // n_groups
    return torch.cat([g * per + _desc(scores[g * per : (g + 1) * per]) for g in range(n_groups)])


@torch.no_grad()
def depth_importance(model: CausalLM, ids: torch.Tensor) -> tuple[float, ...]:
    """Per layer: ``MSE(logits, logits without the layer) / MSE(logits, 0)`` on ``ids`` (B, T)."""
    logits, hidden = model(ids, return_hidden=True)
    ref = logits.float()
    scale = ref.pow(2).mean()
    out = []
    for i in range(len(model.blocks)):
        h = hidden[i]  # layer i removed: its input goes straight to layer i + 1
        for block in model.blocks[i + 1 :]:
            h = block(h)
        out.append(float((model.head(h).float() - ref).pow(2).mean() / scale))
    return tuple(out)


@torch.no_grad()
def nest_parent(model: CausalLM, ids: torch.Tensor) -> NestReport:
    """Permute ``model`` in place so every smaller size of every layer is a prefix; ranked on calibration ``ids``."""
    was_training = model.training
    model.eval()
    try:
        inputs = subblock_inputs(model, ids)
        for block, x in zip(model.blocks, inputs, strict=True):
            spec = block.spec
            if spec.ffn.kind == "mlp":
                permute_ffn(block.ffn, _desc(ffn_channel_scores(block.ffn, x["ffn"])))
            if spec.attention.kind == "gqa":
                scores = attention_head_scores(block.attn, x["attn"])
                permute_attention(block.attn, *attention_orders(scores, spec.attention.n_kv_heads))
            if spec.mamba.kind == "mamba":
                scores = mamba_head_scores(block.mamba, x["mamba"])
                permute_mamba(block.mamba, mamba_order(scores, spec.mamba.n_groups))
        return NestReport(depth_nmse=depth_importance(model, ids))
    finally:
        model.train(was_training)
