"""Replace-one-block scoring: the parent with exactly one block swapped, on held-out text.

For layer ``i`` and a candidate block, the parent's cached input activations ``h_i`` (held-out text, never the
distillation data) go through the candidate, then the parent's blocks ``i+1 ..`` and head. Against the parent
(the same path with its own block ``i``, computed in the same process) we record, averaged over tokens:

* ``kl_div``  KL(parent || child) of the next-token distributions,
* ``lm_loss`` the child's next-token cross-entropy,
* ``cosine``  cosine similarity of the last hidden state (before the final norm) with the parent's.

Layers before ``i`` are never recomputed. The parent's own block follows the identical code path, so it
scores exactly 0 KL.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from puzzle.arch import BlockSpec


@torch.no_grad()
def _run_from(model: nn.Module, block: nn.Module, layer: int, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(last hidden (B, T, C), log-probs (B, T, V)) with ``block`` in place of parent layer ``layer``."""
    h = block(h)
    for parent_block in model.blocks[layer + 1 :]:
        h = parent_block(h)
    return h, F.log_softmax(model.head(h).float(), dim=-1)


@torch.no_grad()
def score_blocks(
    model: nn.Module,
    layer: int,
    h_in: torch.Tensor,
    targets: torch.Tensor,
    candidates: Sequence[tuple[str, nn.Module]],
    *,
    batch: int = 8,
) -> dict[str, dict[str, float]]:
    """Metrics of every candidate block for ``layer`` from held-out inputs ``h_in`` (N, T, C), ``targets`` (N, T)."""
    model.eval()
    sums = {name: {"kl_div": 0.0, "lm_loss": 0.0, "cosine": 0.0} for name, _ in candidates}
    n_tokens = 0
    for s in range(0, h_in.shape[0], batch):
        h, y = h_in[s : s + batch], targets[s : s + batch]
        ref_h, ref_logp = _run_from(model, model.blocks[layer], layer, h)
        n_tokens += y.numel()
        for name, block in candidates:
            out_h, logq = _run_from(model, block, layer, h)
            _accumulate(sums[name], ref_logp, logq, out_h, ref_h, y)
    return {name: {k: v / n_tokens for k, v in metrics.items()} for name, metrics in sums.items()}


def score_task(
    work: str,
    holdout_file: str,
    layer: int,
    variants: list[dict[str, Any]],
    batch: int = 8,
    device: str = "cpu",
    dtype: str | None = None,
) -> dict[str, Any]:
    """Score every variant of one layer (a worker task), loading the parent one layer at a time.

    ``variants``: ``{name, spec, files}`` records. Per batch of held-out rows the prefix runs layer by layer up to
    ``layer``, every candidate (the parent's own block among them, through the same code) takes its output, and
    the parent's later layers are loaded one at a time and applied to every candidate's stream: peak memory is
    one parent layer plus the candidates and their activations, never the whole parent.
    """
    from safetensors.torch import load_file

    from puzzle.library.distill import build_block, compose_state, load_subblocks
    from puzzle.library.parent import load_block_state, load_nonblock, load_parent_arch, load_parent_block

    arch = load_parent_arch(work)
    torch_dtype = getattr(torch, dtype) if dtype else None
    data = load_file(holdout_file)
    ids, targets = data["ids"], data["targets"]
    parent_state = load_block_state(work, layer)
    candidates = []
    for v in variants:
        spec = BlockSpec.from_dict(v["spec"])
        state = compose_state(parent_state, arch.blocks[layer], spec, load_subblocks(work, v["files"]))
        candidates.append((v["name"], build_block(arch, spec, state).to(device=device, dtype=torch_dtype).eval()))
    reference = build_block(arch, arch.blocks[layer], parent_state).to(device=device, dtype=torch_dtype).eval()
    head = load_nonblock(work, arch, device=device, dtype=torch_dtype)
    sums = {name: {"kl_div": 0.0, "lm_loss": 0.0, "cosine": 0.0} for name, _ in candidates}
    with torch.no_grad():
        for s in range(0, ids.shape[0], batch):
            h = head.embed_tokens(ids[s : s + batch].to(device))
            for j in range(layer):
                h = load_parent_block(work, arch, j, device=device, dtype=torch_dtype)(h)
            streams = {"": reference(h), **{name: block(h) for name, block in candidates}}
            for j in range(layer + 1, len(arch.blocks)):
                block = load_parent_block(work, arch, j, device=device, dtype=torch_dtype)
                streams = {name: block(x) for name, x in streams.items()}
            ref_h = streams.pop("")
            ref_logp = F.log_softmax(head.lm_head(head.norm(ref_h)).float(), dim=-1)
            y = targets[s : s + batch].to(device)
            for name, out_h in streams.items():
                logq = F.log_softmax(head.lm_head(head.norm(out_h)).float(), dim=-1)
                _accumulate(sums[name], ref_logp, logq, out_h, ref_h, y)
    n_tokens = targets.numel()
    return {"layer": layer, "metrics": {n: {k: v / n_tokens for k, v in m.items()} for n, m in sums.items()}}


def _accumulate(
    sums: dict[str, float],
    ref_logp: torch.Tensor,
    logq: torch.Tensor,
    out_h: torch.Tensor,
    ref_h: torch.Tensor,
    y: torch.Tensor,
) -> None:
    sums["kl_div"] += (ref_logp.exp() * (ref_logp - logq)).sum().item()
    sums["lm_loss"] += F.nll_loss(logq.flatten(0, 1), y.flatten(), reduction="sum").item()
    sums["cosine"] += F.cosine_similarity(out_h.float(), ref_h.float(), dim=-1).sum().item()
