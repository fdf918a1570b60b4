"""The heterogeneous hybrid causal LM and its Hugging Face interop.

``CausalLM(arch)`` builds a model from an ``ArchSpec``; ``load_pretrained`` / ``save_pretrained`` read and
write Hugging Face directories (llama, mistral, qwen2, nemotron_h, and the heterogeneous nemotron-nas shape).
"""

from __future__ import annotations

from puzzle.model.block import Block, ModelContext, build_subblock, register
from puzzle.model.cache import Cache, KVCache, LayerCache, MambaCache
from puzzle.model.hf import arch_from_hf_config, hf_config_from_arch, hf_format, load_pretrained, save_pretrained
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
