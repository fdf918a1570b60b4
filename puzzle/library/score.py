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
from pathlib import Path
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
        ref_p = ref_logp.exp()
        n_tokens += y.numel()
        for name, block in candidates:
            out_h, logq = _run_from(model, block, layer, h)
            sums[name]["kl_div"] += (ref_p * (ref_logp - logq)).sum().item()
            sums[name]["lm_loss"] += F.nll_loss(logq.flatten(0, 1), y.flatten(), reduction="sum").item()
            sums[name]["cosine"] += F.cosine_similarity(out_h.float(), ref_h.float(), dim=-1).sum().item()
    return {name: {k: v / n_tokens for k, v in metrics.items()} for name, metrics in sums.items()}


def score_task(
    work: str, holdout_dir: str, layer: int, variants: list[dict[str, Any]], batch: int = 8
) -> dict[str, Any]:
    """Score every variant of one layer (runs on a worker). ``variants``: ``{name, spec, files}`` records."""
    from safetensors.torch import load_file

    from puzzle.library.distill import build_block, compose_state, load_hidden, load_parent_arch, load_subblocks
    from puzzle.model import CausalLM

    arch = load_parent_arch(work)
    model = CausalLM(arch)
    model.load_state_dict(load_file(str(Path(work) / "parent" / "model.safetensors")))
    parent_state = model.blocks[layer].state_dict()
    candidates = []
    for v in variants:
        spec = BlockSpec.from_dict(v["spec"])
        state = compose_state(parent_state, arch.blocks[layer], spec, load_subblocks(work, v["files"]))
        candidates.append((v["name"], build_block(arch, spec, state).eval()))
    h_in = load_hidden(holdout_dir, layer)
    targets = load_file(str(Path(holdout_dir) / "targets.safetensors"))["targets"]
    return {"layer": layer, "metrics": score_blocks(model, layer, h_in, targets, candidates, batch=batch)}
