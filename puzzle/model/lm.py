"""``CausalLM``: the heterogeneous causal language model built from an ``ArchSpec``.

    logits = head(blocks[L-1](... blocks[0](embed(input_ids))))      head = lm_head(norm(.))

Stages that work block by block (pruning, distillation, scoring) use the pieces directly::

    h = model.embed(ids)                       # (B, T, C)
    h = model.blocks[i](h)                     # any block on any hidden states
    logits = model.head(h)                     # (B, T, V)

and ``model(ids, return_hidden=True)`` returns ``(logits, hidden)`` where ``hidden[i]`` is block ``i``'s
input and ``hidden[i + 1]`` its output (``len(hidden) == n_layers + 1``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from puzzle.arch import ArchSpec
from puzzle.model.block import Block, ModelContext
from puzzle.model.cache import Cache
from puzzle.model.mamba2 import Mamba2
from puzzle.model.norm import GatedRMSNorm, RMSNorm


class CausalLM(nn.Module):
    def __init__(self, arch: ArchSpec) -> None:
        super().__init__()
        self.arch = arch
        ctx = ModelContext.from_arch(arch)
        self.embed_tokens = nn.Embedding(arch.vocab_size, arch.hidden_size)
        self.blocks = nn.ModuleList(Block(spec, ctx) for spec in arch.blocks)
        self.norm = RMSNorm(arch.hidden_size, arch.norm_eps)
        self.lm_head = nn.Linear(arch.hidden_size, arch.vocab_size, bias=False)
        if arch.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        if self.embed_tokens.weight.device.type != "meta":
            self.init_weights()

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, C)
        return self.embed_tokens(input_ids)

    def head(self, h: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, V)
        return self.lm_head(self.norm(h))

    def new_cache(self) -> Cache:
        """An empty decoding cache for this model (pass it to successive ``forward`` calls)."""
        return Cache(len(self.blocks))

    def forward(
        self, input_ids: torch.Tensor, cache: Cache | None = None, *, return_hidden: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B, T, V) of ``input_ids`` (B, T), continuing after ``cache``'s tokens when given."""
        h = self.embed(input_ids)  # (B, T, C)
        hidden = [h]
        for i, block in enumerate(self.blocks):
            h = block(h, cache[i] if cache is not None else None)
            if return_hidden:
                hidden.append(h)
        if cache is not None:
            cache.length += input_ids.shape[1]
        logits = self.head(h)
        return (logits, hidden) if return_hidden else logits

    def tie_weights(self) -> None:
        if self.arch.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Fresh-training init: N(0, std) weights, residual outputs scaled by 1/sqrt(2 L), Mamba as in mamba-ssm."""
        out_std = std / math.sqrt(2 * len(self.blocks))
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                last = name.rsplit(".", 1)[-1]
                is_output = last in ("o_proj", "down_proj", "out_proj", "linear_attn", "linear_mlp")
                nn.init.normal_(module.weight, std=out_std if is_output else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, Mamba2):
                init_mamba(module)
            elif isinstance(module, (RMSNorm, GatedRMSNorm)):
                nn.init.ones_(module.weight)


def init_mamba(m: Mamba2, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
    m.A_log.copy_(torch.log(torch.arange(1, m.n_heads + 1, dtype=torch.float32)))
    m.D.fill_(1.0)
    dt = torch.exp(torch.rand(m.n_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    dt = dt.clamp(min=dt_floor)
    m.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
    m.conv1d.reset_parameters()
