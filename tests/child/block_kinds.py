"""One tiny child per block kind an export must carry (the cases of the remote-code and target tests).

Llama-style children are heterogeneous (``nemotron-nas``): a full GQA + SwiGLU layer next to the kind under
test. Hybrid children (``nemotron_h_puzzle``) vary one Mamba layer. Weights are random with perturbed norms
and Mamba ``D`` / ``dt_bias`` so that a wrong mapping shows in the logits.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from puzzle.arch import ArchSpec, AttentionSpec, BlockSpec, FFNSpec, RopeSpec
from puzzle.model import CausalLM
from tests.child import small_hybrid, small_llama


def _gqa(kv: int) -> AttentionSpec:
    return AttentionSpec(n_heads=4, n_kv_heads=kv, head_dim=16)


def _llama(*blocks: BlockSpec, **kw: object) -> ArchSpec:
    base = BlockSpec(_gqa(2), FFNSpec(intermediate_size=256))  # hidden 64: 4 heads / 2 KV heads of 16
    return replace(small_llama(1), blocks=(base, *blocks), **kw)  # type: ignore[arg-type]


def _hybrid(mamba_heads: int | None, *, tie: bool = False) -> ArchSpec:
    arch = small_hybrid()  # M * -
    extra = arch.blocks[0]
    # no-op Mamba (mamba_heads None): an identity layer
    layer0 = BlockSpec() if mamba_heads is None else replace(extra, mamba=replace(extra.mamba, n_heads=mamba_heads))
    return replace(arch, blocks=(layer0, *arch.blocks[1:], extra), tie_embeddings=tie)


LLAMA3 = RopeSpec(
    theta=500000.0, scaling_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
    original_max_position_embeddings=8,
)  # fmt: skip

KINDS: dict[str, ArchSpec] = {
    "fewer KV heads": _llama(BlockSpec(_gqa(1), FFNSpec(intermediate_size=256))),
    "linear attention": _llama(BlockSpec(AttentionSpec.linear(), FFNSpec(intermediate_size=256))),
    "no-op attention": _llama(BlockSpec(AttentionSpec.no_op(), FFNSpec(intermediate_size=256))),
    "several FFN widths": _llama(
        BlockSpec(_gqa(2), FFNSpec(intermediate_size=512)), BlockSpec(_gqa(2), FFNSpec(intermediate_size=64))
    ),
    "linear FFN": _llama(BlockSpec(_gqa(2), FFNSpec.linear())),
    "no-op FFN": _llama(BlockSpec(_gqa(2), FFNSpec.no_op())),
    "tied embeddings": _llama(BlockSpec(_gqa(1), FFNSpec(intermediate_size=256)), tie_embeddings=True),
    "untied embeddings": _llama(BlockSpec(_gqa(1), FFNSpec(intermediate_size=256)), tie_embeddings=False),
    "llama3 rope scaling": _llama(BlockSpec(_gqa(1), FFNSpec(intermediate_size=256)), rope=LLAMA3),
    "Mamba with fewer heads": _hybrid(2),
    "no-op Mamba": _hybrid(None),
    "hybrid, tied embeddings": _hybrid(None, tie=True),
}


def build(arch: ArchSpec, seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    model = CausalLM(arch).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("norm.weight", ".D", ".dt_bias")):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def greedy(model: CausalLM, prompt: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy continuation by full forward passes (no cache): the reference for generate()."""
    seq = prompt
    with torch.no_grad():
        for _ in range(new_tokens):
            seq = torch.cat([seq, model(seq)[:, -1:].argmax(-1)], dim=1)
    return seq
