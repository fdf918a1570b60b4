# Written for Puzzle exports; depends only on torch and transformers.
"""DeciLM (``nemotron-nas``): a Llama whose every layer has its own attention and FFN (see the config).

Per layer: attention is GQA with ``num_attention_heads // n_heads_in_group`` KV heads, a single linear map
(``self_attn.linear_attn``) or nothing; the FFN is a SwiGLU of the layer's width, a single linear map
(``mlp.linear_mlp``) or nothing. Each present subblock is ``x + sub(norm(x))``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel

from .configuration_decilm import DeciLMConfig
from .puzzle_modeling_utils import (
    Attention,
    Linear,
    ReLU2MLP,
    RMSNorm,
    SwiGLU,
    check_unpadded,
    finish,
    pick_cache,
    prepare_inputs,
    tied_weights_keys,
)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def ffn_width(ffn: Any, hidden: int) -> int:
    """The FFN width of a block: ``intermediate_size`` when given, else DeciLM's ``ffn_mult`` rule."""
    if ffn.get("intermediate_size"):
        return int(ffn["intermediate_size"])
    return _round_up(int(2 * float(ffn["ffn_mult"]) * hidden / 3), 256)


class DeciLMDecoderLayer(nn.Module):
    def __init__(self, config: DeciLMConfig, layer: int) -> None:
        super().__init__()
        block = config.block_configs[layer]
        att, ffn = block["attention"], block["ffn"]
        hidden, eps = config.hidden_size, config.rms_norm_eps
        self.self_attn: nn.Module | None = None
        self.mlp: nn.Module | None = None
        if not att.get("no_op"):
            if att.get("replace_with_linear"):
                self.self_attn = Linear(hidden, "linear_attn")
            else:
                n_heads = config.num_attention_heads
                self.self_attn = Attention(
                    layer,
                    hidden,
                    n_heads,
                    n_heads // int(att["n_heads_in_group"]),
                    config.head_dim,
                    config.rope_parameters,
                    qkv_bias=config.qkv_bias,
                    o_bias=config.attention_bias,
                )
            self.input_layernorm = RMSNorm(hidden, eps)
        if not ffn.get("no_op"):
            if ffn.get("replace_with_linear"):
                self.mlp = Linear(hidden, "linear_mlp")
            else:
                cls = ReLU2MLP if config.hidden_act == "relu2" else SwiGLU
                self.mlp = cls(hidden, ffn_width(ffn, hidden), bias=config.mlp_bias)
            self.post_attention_layernorm = RMSNorm(hidden, eps)

    def forward(self, x: torch.Tensor, cache: Any) -> torch.Tensor:
        if self.self_attn is not None:
            x = x + self.self_attn(self.input_layernorm(x), cache)
        if self.mlp is not None:
            x = x + self.mlp(self.post_attention_layernorm(x))
        return x


class DeciLMPreTrainedModel(PreTrainedModel):
    config_class = DeciLMConfig
    base_model_prefix = "model"
    _no_split_modules = ["DeciLMDecoderLayer"]  # noqa: RUF012  (transformers reads a list)
    _supports_cache_class = False
    _is_stateful = True  # our own cache: generate must not build a transformers one (4.x)

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, RMSNorm):
            nn.init.ones_(module.weight)


class DeciLMModel(DeciLMPreTrainedModel):
    def __init__(self, config: DeciLMConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DeciLMDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.embed_tokens = value

    def forward(self, input_ids: torch.Tensor, cache: Any = None) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x, cache)
        return self.norm(x)


class DeciLMForCausalLM(DeciLMPreTrainedModel, GenerationMixin):
    _tied_weights_keys = tied_weights_keys("lm_head.weight", "model.embed_tokens.weight")

    def __init__(self, config: DeciLMConfig) -> None:
        super().__init__(config)
        self.model = DeciLMModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

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
        logits = self.lm_head(self.model(input_ids, state))
        return finish(logits, labels, state, input_ids.shape[1])
