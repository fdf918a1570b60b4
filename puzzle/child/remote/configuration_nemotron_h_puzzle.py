# Written for Puzzle exports; depends only on transformers.
"""Nemotron-H-Puzzle configuration: a Nemotron-H config plus one ``block_configs`` entry per layer.

An entry is ``{"block_type": "mamba" | "attention" | "mlp", ...}`` (NVIDIA's ``nemotron_h_puzzle`` layout);
every other key overrides the global value of the same name for that layer (e.g. ``intermediate_size`` of
an MLP, ``num_key_value_heads`` of an attention layer, ``mamba_num_heads`` of a Mamba layer). Puzzle's
extension ``{"block_type": "linear", "replaces": "attention" | "mlp"}`` is one (hidden x hidden) linear map.
A plain ``nemotron_h`` config (no ``block_configs``) is read too, from its layer pattern: uniform Puzzle hybrids
ship this code so that transformers releases without a built-in Nemotron-H load them.
"""

from __future__ import annotations

import math
from typing import Any

from transformers import PretrainedConfig

_GLOBALS = {
    "vocab_size": 131072,
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "intermediate_size": 21504,
    "mlp_bias": False,
    "attention_bias": False,
    "layer_norm_epsilon": 1e-5,
    "mamba_num_heads": 128,
    "mamba_head_dim": 64,
    "n_groups": 8,
    "ssm_state_size": 128,
    "conv_kernel": 4,
    "chunk_size": 128,
    "use_conv_bias": True,
    "use_bias": False,
    "time_step_min": 0.001,
    "time_step_limit": None,
    "mlp_hidden_act": "relu2",
    "mamba_hidden_act": "silu",
    "max_position_embeddings": 4096,
}


_TYPES = {
    "M": "mamba",
    "*": "attention",
    "-": "mlp",
    "E": "moe",
    "linear_attention": "mamba",
    "full_attention": "attention",
}


def _layer_types(kwargs: dict[str, Any]) -> list[str]:
    raw = (
        kwargs.get("layers_block_type") or kwargs.get("layer_types") or list(kwargs.get("hybrid_override_pattern", "M"))
    )
    return [_TYPES.get(t, t) for t in raw]


class NemotronHPuzzleConfig(PretrainedConfig):
    model_type = "nemotron_h_puzzle"
    keys_to_ignore_at_inference = ["past_key_values"]  # noqa: RUF012  (transformers reads a list)

    def __init__(
        self, block_configs: list[dict[str, Any]] | None = None, tie_word_embeddings: bool = False, **kwargs: Any
    ) -> None:
        for key, default in _GLOBALS.items():
            setattr(self, key, kwargs.pop(key, default))
        if self.time_step_limit is None:
            self.time_step_limit = [self.time_step_min, math.inf]
        if block_configs is None:  # a plain nemotron_h config: one entry per layer type, all sizes global
            block_configs = [{"block_type": kind} for kind in _layer_types(kwargs)]
        self.block_configs = [dict(b) for b in block_configs]
        kwargs.pop("num_hidden_layers", None)
        self.num_hidden_layers = len(self.block_configs)
        self.hybrid_override_pattern = "".join(
            {"mamba": "M", "attention": "*", "mlp": "-", "moe": "E"}.get(b["block_type"], "L")
            for b in self.block_configs
        )
        kwargs.pop("hybrid_override_pattern", None)
        kwargs.pop("layers_block_type", None)
        kwargs.pop("layer_types", None)
        self.layers_block_type = [b["block_type"] for b in self.block_configs]
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    def layer_config(self, layer: int) -> dict[str, Any]:
        """The global values overridden by layer ``layer``'s entry."""
        return {**{key: getattr(self, key) for key in _GLOBALS}, **self.block_configs[layer]}
