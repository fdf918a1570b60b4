# Written for Puzzle exports; depends only on torch and transformers.
"""Nemotron-H-Puzzle: a Nemotron-H hybrid whose every layer (one mixer: Mamba-2, attention or MLP) has its own
sizes (see the config). Layer ``i`` is ``x + mixer(norm(x))``; attention has no positional encoding, the MLP
is non-gated squared ReLU. Tensor names are Nemotron-H's (``backbone.layers.i.{norm, mixer.*}``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel

from .configuration_nemotron_h_puzzle import NemotronHPuzzleConfig
from .puzzle_modeling_utils import (
    Attention,
    Linear,
    Mamba2,
    ReLU2MLP,
    RMSNorm,
    check_unpadded,
    finish,
    pick_cache,
    prepare_inputs,
    tied_weights_keys,
)


class NemotronHPuzzleBlock(nn.Module):
    def __init__(self, config: NemotronHPuzzleConfig, layer: int) -> None:
        super().__init__()
        cfg = config.layer_config(layer)
        hidden, eps = config.hidden_size, float(cfg["layer_norm_epsilon"])
        kind = cfg["block_type"]
        self.norm = RMSNorm(hidden, eps)
        if kind == "mamba":
            self.mixer: nn.Module = Mamba2(layer, hidden, cfg, eps)
        elif kind == "attention":
            self.mixer = Attention(
                layer,
                hidden,
                int(cfg["num_attention_heads"]),
                int(cfg["num_key_value_heads"]),
                int(cfg["head_dim"]),
                None,
                qkv_bias=bool(cfg["attention_bias"]),
                o_bias=bool(cfg["attention_bias"]),
            )
        elif kind == "mlp":
            self.mixer = ReLU2MLP(hidden, int(cfg["intermediate_size"]), bias=bool(cfg["mlp_bias"]))
        elif kind == "linear":
            self.mixer = Linear(hidden, "linear_attn" if cfg.get("replaces") == "attention" else "linear_mlp")
        else:
            raise ValueError(f"layer {layer}: block_type {kind!r} is not supported by this model's code")
        self.kind = kind

    def forward(self, x: torch.Tensor, cache: Any) -> torch.Tensor:
        h = self.norm(x)
        return x + (self.mixer(h) if self.kind == "mlp" else self.mixer(h, cache))


class NemotronHPuzzlePreTrainedModel(PreTrainedModel):
    config_class = NemotronHPuzzleConfig
    base_model_prefix = "backbone"
    _no_split_modules = ["NemotronHPuzzleBlock"]  # noqa: RUF012  (transformers reads a list)
    _supports_cache_class = False
    _is_stateful = True

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)


class NemotronHPuzzleModel(NemotronHPuzzlePreTrainedModel):
    def __init__(self, config: NemotronHPuzzleConfig) -> None:
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(NemotronHPuzzleBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm_f = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embeddings = value

    def forward(self, input_ids: torch.Tensor, cache: Any = None) -> torch.Tensor:
        x = self.embeddings(input_ids)
        for layer in self.layers:
            x = layer(x, cache)
        return self.norm_f(x)


class NemotronHPuzzleForCausalLM(NemotronHPuzzlePreTrainedModel, GenerationMixin):
    _tied_weights_keys = tied_weights_keys("lm_head.weight", "backbone.embeddings.weight")

    def __init__(self, config: NemotronHPuzzleConfig) -> None:
        super().__init__(config)
        self.backbone = NemotronHPuzzleModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.backbone.embeddings = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def prepare_inputs_for_generation(self, input_ids: torch.Tensor, **kwargs: Any) -> dict[str, Any]:
        return prepare_inputs(input_ids, **kwargs)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        past_key_values: Any = None,
        cache: Any = None,
        use_cache: bool | None = None,
        labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> Any:
        check_unpadded(attention_mask)
        state = pick_cache(past_key_values, cache, use_cache)
        logits = self.lm_head(self.backbone(input_ids, state))
        return finish(logits, labels, state, input_ids.shape[1])
