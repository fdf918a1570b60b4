"""The heterogeneous hybrid causal LM and its Hugging Face interop.

    model = load_pretrained("parent/")            # or CausalLM(arch) for fresh weights
    logits = model(ids)                           # (B, T) -> (B, T, V)
    cache = model.new_cache()                     # incremental decoding: feed new tokens only
    logits = model(ids[:, :8], cache=cache); logits = model(ids[:, 8:9], cache=cache)
    logits, hidden = model(ids, return_hidden=True)   # hidden[i] / hidden[i+1]: block i's input / output
    h = model.embed(ids); h = model.blocks[3](h); logits = model.head(h)
    save_pretrained(model, "child/")              # Llama / Qwen2 / Nemotron-H, else nemotron_h_puzzle / nemotron-nas

Modules: ``norm`` (RMSNorm, gated group norm), ``rope``, ``attention`` (GQA via SDPA, linear), ``ffn`` (SwiGLU,
relu2, linear), ``ssd`` (chunked Mamba-2 scan + sequential reference + optional mamba-ssm kernel),
``mamba2`` (the mixer), ``block`` (``Block`` and the ``build_subblock`` registry), ``cache``, ``lm``, ``hf_config`` (config.json <-> ArchSpec), ``hf_hetero`` (nemotron-nas and
nemotron_h_puzzle), ``hf_io`` (tensor names, load / save).
"""

from __future__ import annotations

from puzzle.model.block import Block, ModelContext, build_subblock, register
from puzzle.model.cache import Cache, KVCache, LayerCache, MambaCache
from puzzle.model.hf_config import arch_from_hf_config, hf_config_from_arch, hf_format
from puzzle.model.hf_io import load_pretrained, save_pretrained
from puzzle.model.lm import CausalLM

__all__ = [
    "Block",
    "Cache",
    "CausalLM",
    "KVCache",
    "LayerCache",
    "MambaCache",
    "ModelContext",
    "arch_from_hf_config",
    "build_subblock",
    "hf_config_from_arch",
    "hf_format",
    "load_pretrained",
    "register",
    "save_pretrained",
]
