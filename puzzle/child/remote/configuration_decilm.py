# Written for Puzzle exports; depends only on transformers.
"""DeciLM (``nemotron-nas``) configuration: a Llama config plus one ``block_configs`` entry per layer.

Each entry is ``{"attention": {"no_op", "replace_with_linear", "n_heads_in_group"}, "ffn": {"no_op",
"replace_with_linear", "ffn_mult", "intermediate_size"}}``, readable by attribute (``block.attention.no_op``)
as serving engines read it. An MLP's width is ``intermediate_size`` when given, else DeciLM's rule
``round_up(int(2 * ffn_mult * hidden / 3), 256)``; our exports write both and they agree.
"""

from __future__ import annotations

from typing import Any

from transformers import PretrainedConfig


class Section(dict):
    """A JSON object whose keys also read as attributes (a missing key is a missing attribute)."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def as_sections(value: Any) -> Any:
    if isinstance(value, dict):
        return Section({k: as_sections(v) for k, v in value.items()})
    return value


def rope_parameters(kwargs: dict[str, Any]) -> dict[str, Any]:
    """One rope dict (``rope_type``, ``rope_theta``, scaling keys) from any spelling, popped from ``kwargs``."""
    params = dict(kwargs.pop("rope_parameters", None) or {})
    scaling = dict(kwargs.pop("rope_scaling", None) or {})
    theta = kwargs.pop("rope_theta", None)
    merged = {**scaling, **params}
    merged.setdefault("rope_theta", theta if theta is not None else 10000.0)
    merged.setdefault("rope_type", merged.pop("type", "default"))
    return merged


def set_rope(config: PretrainedConfig, params: dict[str, Any]) -> None:
    config.rope_parameters = params
    config.rope_theta = params["rope_theta"]
    if not isinstance(getattr(type(config), "rope_scaling", None), property):  # transformers 4.x
        config.rope_scaling = None if params["rope_type"] == "default" else dict(params)


class DeciLMConfig(PretrainedConfig):
    model_type = "nemotron-nas"
    keys_to_ignore_at_inference = ["past_key_values"]  # noqa: RUF012  (transformers reads a list)

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 4096,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = None,
        head_dim: int | None = None,
        intermediate_size: int = 11008,
        hidden_act: str = "silu",
        rms_norm_eps: float = 1e-5,
        max_position_embeddings: int = 4096,
        attention_bias: bool = False,
        qkv_bias: bool | None = None,
        mlp_bias: bool = False,
        block_configs: list[dict[str, Any]] | None = None,
        tie_word_embeddings: bool = False,
        **kwargs: Any,
    ) -> None:
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.head_dim = head_dim or hidden_size // num_attention_heads
        self.intermediate_size = intermediate_size
        self.hidden_act = hidden_act
        self.rms_norm_eps = rms_norm_eps
        self.max_position_embeddings = max_position_embeddings
        self.attention_bias = attention_bias
        self.qkv_bias = attention_bias if qkv_bias is None else qkv_bias
        self.mlp_bias = mlp_bias
        if block_configs is None:
            group = num_attention_heads // self.num_key_value_heads
            block_configs = [
                {
                    "attention": {"no_op": False, "replace_with_linear": False, "n_heads_in_group": group},
                    "ffn": {"no_op": False, "replace_with_linear": False, "intermediate_size": intermediate_size},
                }
            ] * num_hidden_layers
        self.block_configs = [as_sections(b) for b in block_configs]
        set_rope(self, rope_parameters(kwargs))
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        out["block_configs"] = [
            dict(b) | {k: dict(v) for k, v in b.items() if isinstance(v, dict)} for b in self.block_configs
        ]
        return out
