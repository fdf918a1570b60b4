"""Hugging Face config interop: ``config.json`` to ``ArchSpec`` and back, for every format we read or write.

Read: ``model_type`` llama, mistral, qwen2, nemotron_h, and our heterogeneous ``nemotron-nas`` (DeciLM
``block_configs``) and ``nemotron_h_puzzle`` (one ``block_type`` per layer) -- see ``puzzle.model.hf_hetero``.

Write (``hf_config_from_arch``), by what the architecture is (``hf_format``):

* every layer the same Llama layer (GQA with RoPE + SwiGLU): a plain ``LlamaForCausalLM`` config
  (``Qwen2ForCausalLM`` when only q/k/v carry a bias);
* a Nemotron-H-style hybrid whose Mamba / attention / MLP layers are each all alike: a ``nemotron_h`` config
  that transformers' ``NemotronHForCausalLM`` loads;
* a heterogeneous Nemotron-H-style hybrid (one mixer per layer, sizes varying): ``nemotron_h_puzzle``;
* any other heterogeneous model: ``nemotron-nas`` (DeciLM) with ``block_configs`` and ``puzzle_arch``.

The two heterogeneous formats ship their own configuration / modeling code (``puzzle/child/remote``).

Nemotron-H dt clamp: transformers 5 clamps dt to ``(time_step_min, inf)`` (its ``time_step_limit`` key is not
used), and so do we when reading a nemotron_h config; that is the reference our parity tests hold us to.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import torch

from puzzle.arch import ArchSpec, AttentionSpec, BlockSpec, FFNSpec, MambaSpec, RopeSpec
from puzzle.errors import CheckpointError, ConfigError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "nemotron_h", "nemotron-nas", "nemotron_h_puzzle")
CONFIG_NAME = "config.json"

# --- config.json -> ArchSpec ---------------------------------------------------------------------------


def _json_floats(value: Any) -> Any:
    """Undo transformers' ``{"__float__": "Infinity"}`` encoding of non-finite floats."""
    if isinstance(value, dict):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: _json_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_floats(v) for v in value]
    return value


def read_config(path: str | Path) -> dict[str, Any]:
    """The parsed ``config.json`` of a checkpoint directory."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(f"{file}: not found; a Hugging Face checkpoint directory needs a config.json")
    try:
        return _json_floats(json.loads(file.read_text()))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{file}: not valid JSON ({exc})") from exc


def _get(cfg: dict[str, Any], *names: str, default: Any = None) -> Any:
    for name in names:
        if cfg.get(name) is not None:
            return cfg[name]
    return default


def _rope_from_config(cfg: dict[str, Any]) -> RopeSpec:
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or {}
    merged = {**scaling, **params}
    theta = float(_get(merged, "rope_theta", default=_get(cfg, "rope_theta", default=10000.0)))
    if float(_get(merged, "partial_rotary_factor", default=cfg.get("partial_rotary_factor", 1.0))) != 1.0:
        raise CheckpointError("partial rotary embeddings (partial_rotary_factor != 1) are not supported")
    rope_type = _get(merged, "rope_type", "type", default="default")
    if rope_type == "default":
        return RopeSpec(theta=theta)
    if rope_type == "llama3":
        return RopeSpec(
            theta=theta,
            scaling_type="llama3",
            factor=float(merged["factor"]),
            low_freq_factor=float(merged["low_freq_factor"]),
            high_freq_factor=float(merged["high_freq_factor"]),
            original_max_position_embeddings=int(merged["original_max_position_embeddings"]),
        )
    raise CheckpointError(f"rope scaling type {rope_type!r} is not supported (supported: default, llama3)")


def _llama_arch(cfg: dict[str, Any]) -> ArchSpec:
    model_type = cfg["model_type"]
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise CheckpointError(f"{model_type}: hidden_act {act!r} is not supported (supported: silu)")
    window = cfg.get("sliding_window") if model_type != "qwen2" or cfg.get("use_sliding_window") else None
    if window is not None and window < cfg.get("max_position_embeddings", 0):
        warnings.warn(
            f"{model_type}: sliding_window={window} is ignored; attention is full over the sequence",
            stacklevel=3,
        )
    hidden, n_heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    bias = bool(cfg.get("attention_bias", False))
    attention = AttentionSpec(
        n_heads=n_heads,
        n_kv_heads=int(_get(cfg, "num_key_value_heads", default=n_heads)),
        head_dim=int(_get(cfg, "head_dim", default=hidden // n_heads)),
        qkv_bias=True if model_type == "qwen2" else bias,
        o_bias=False if model_type == "qwen2" else bias,
    )
    ffn = FFNSpec(intermediate_size=int(cfg["intermediate_size"]), bias=bool(cfg.get("mlp_bias", False)))
    return ArchSpec(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        blocks=(BlockSpec(attention=attention, ffn=ffn),) * int(cfg["num_hidden_layers"]),
        family="llama",
        norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        rope=_rope_from_config(cfg),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


# Nemotron-H layer types in all three spellings -> our subblock names.
_NEMOTRON_LAYER_TYPES = {
    "M": "mamba",
    "*": "attention",
    "-": "mlp",
    "mamba": "mamba",
    "attention": "attention",
    "mlp": "mlp",
    "linear_attention": "mamba",
    "full_attention": "attention",
}


def nemotron_layer_types(cfg: dict[str, Any]) -> list[str]:
    """Layer types (mamba / attention / mlp) from ``layers_block_type`` (either list spelling) or
    ``hybrid_override_pattern`` (``M`` / ``*`` / ``-``); the list wins when both are present, as in transformers."""
    raw = cfg.get("layers_block_type") or cfg.get("layer_types")
    if raw is None:
        raw = cfg.get("hybrid_override_pattern")
        if raw is None:
            raise CheckpointError("nemotron_h: config has neither layers_block_type nor hybrid_override_pattern")
        raw = list(raw)
    unknown = sorted({t for t in raw if t not in _NEMOTRON_LAYER_TYPES})
    if unknown:
        raise CheckpointError(
            f"nemotron_h: layer type(s) {', '.join(map(repr, unknown))} not supported "
            "(supported: M/mamba/linear_attention, */attention/full_attention, -/mlp; MoE layers are not)"
        )
    return [_NEMOTRON_LAYER_TYPES[t] for t in raw]


def check_nemotron_activations(cfg: dict[str, Any]) -> None:
    for key, expected in (("mlp_hidden_act", "relu2"), ("mamba_hidden_act", "silu")):
        if cfg.get(key, expected) != expected:
            raise CheckpointError(f"nemotron_h: {key} {cfg[key]!r} is not supported (supported: {expected})")


def _upper(value: float) -> float:
    return math.inf if value >= 1e38 else value  # nemotron_h_puzzle writes "no limit" as 1e38 (strict JSON)


def nemotron_h_block(kind: str, cfg: dict[str, Any]) -> BlockSpec:
    """One Nemotron-H layer of ``kind`` (mamba / attention / mlp) with the sizes of ``cfg``.

    A ``time_step_limit`` key (written by our nemotron_h_puzzle exports) sets the dt clamp; otherwise it is
    ``(time_step_min, inf)`` as in transformers 5.
    """
    hidden = int(cfg["hidden_size"])
    if kind == "mamba":
        limit = cfg.get("time_step_limit") if cfg.get("model_type") == "nemotron_h_puzzle" else None
        low = float(_get(cfg, "time_step_min", "mamba_dt_min", default=0.001))
        return BlockSpec(
            mamba=MambaSpec(
                n_heads=int(cfg["mamba_num_heads"]),
                head_dim=int(cfg["mamba_head_dim"]),
                n_groups=int(_get(cfg, "n_groups", "mamba_n_groups", default=8)),
                d_state=int(_get(cfg, "ssm_state_size", default=128)),
                conv_kernel=int(_get(cfg, "conv_kernel", "mamba_d_conv", default=4)),
                chunk_size=int(_get(cfg, "chunk_size", "mamba_chunk_size", default=128)),
                conv_bias=bool(_get(cfg, "use_conv_bias", "mamba_conv_bias", default=True)),
                proj_bias=bool(cfg.get("use_bias", False)),
                time_step_limit=(float(limit[0]), _upper(float(limit[1]))) if limit else (low, math.inf),
            )
        )
    if kind == "attention":
        n_heads = int(cfg["num_attention_heads"])
        attention = AttentionSpec(
            n_heads=n_heads,
            n_kv_heads=int(_get(cfg, "num_key_value_heads", default=n_heads)),
            head_dim=int(_get(cfg, "head_dim", "attention_head_dim", default=hidden // n_heads)),
            rope=False,
        )
        return BlockSpec(attention=attention)
    ffn = FFNSpec(
        intermediate_size=int(cfg["intermediate_size"]), activation="relu2", bias=bool(cfg.get("mlp_bias", False))
    )
    return BlockSpec(ffn=ffn)


def nemotron_h_arch(cfg: dict[str, Any], blocks: tuple[BlockSpec, ...]) -> ArchSpec:
    return ArchSpec(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=int(cfg["hidden_size"]),
        blocks=blocks,
        family="nemotron_h",
        norm_eps=float(_get(cfg, "layer_norm_epsilon", "rms_norm_eps", default=1e-5)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


def _nemotron_h_arch(cfg: dict[str, Any]) -> ArchSpec:
    check_nemotron_activations(cfg)
    return nemotron_h_arch(cfg, tuple(nemotron_h_block(kind, cfg) for kind in nemotron_layer_types(cfg)))


def arch_from_hf_config(config: dict[str, Any]) -> ArchSpec:
    """The ``ArchSpec`` of a Hugging Face ``config.json`` dict; ``CheckpointError`` when unsupported or invalid."""
    model_type = config.get("model_type")
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise CheckpointError(
            f"model_type {model_type!r} is not supported (supported: {', '.join(SUPPORTED_MODEL_TYPES)})"
        )
    config = _json_floats(config)
    try:
        if model_type == "nemotron_h":
            return _nemotron_h_arch(config)
        if model_type == "nemotron-nas":
            from puzzle.model.hf_hetero import nas_arch

            return nas_arch(config)
        if model_type == "nemotron_h_puzzle":
            from puzzle.model.hf_hetero import puzzle_arch

            return puzzle_arch(config)
        return _llama_arch(config)
    except KeyError as exc:
        raise CheckpointError(f"{model_type}: config is missing the key {exc.args[0]!r}") from exc
    except (ConfigError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{model_type}: invalid config: {exc}") from exc


# --- ArchSpec -> config.json ---------------------------------------------------------------------------


def _is_llama_layer(block: BlockSpec) -> bool:
    att, ffn = block.attention, block.ffn
    return (
        block.mamba.is_no_op
        and att.kind == "gqa"
        and att.rope
        and ffn.kind == "mlp"
        and ffn.activation == "swiglu"
        and (att.qkv_bias == att.o_bias or (att.qkv_bias and not att.o_bias and not ffn.bias))
    )


def _nemotron_h_kind(block: BlockSpec) -> str | None:
    """mamba / attention / mlp when ``block`` is exactly one transformers-NemotronH layer, else None."""
    present = [n for n in ("mamba", "attention", "ffn") if not getattr(block, n).is_no_op]
    if len(present) != 1:
        return None
    if present == ["mamba"]:
        return "mamba" if block.mamba.time_step_limit[1] == math.inf else None
    if present == ["attention"]:
        att = block.attention
        return "attention" if att.kind == "gqa" and not (att.rope or att.qkv_bias or att.o_bias) else None
    return "mlp" if block.ffn.kind == "mlp" and block.ffn.activation == "relu2" else None


def hf_format(arch: ArchSpec) -> str:
    """Which config ``save_pretrained`` writes: llama, qwen2, nemotron_h, nemotron_h_puzzle or nemotron-nas."""
    from puzzle.model.hf_hetero import puzzle_kind

    first = arch.blocks[0]
    if arch.family == "llama" and _is_llama_layer(first) and all(b == first for b in arch.blocks):
        return "qwen2" if first.attention.qkv_bias and not first.attention.o_bias else "llama"
    if arch.family == "nemotron_h":
        kinds = [_nemotron_h_kind(b) for b in arch.blocks]
        if None not in kinds:
            by_kind: dict[str | None, set[BlockSpec]] = {}
            for kind, block in zip(kinds, arch.blocks, strict=True):
                by_kind.setdefault(kind, set()).add(block)
            if all(len(v) == 1 for v in by_kind.values()):
                return "nemotron_h"
        kinds = [puzzle_kind(b) for b in arch.blocks]
        if None not in kinds and set(kinds) != {"identity"}:
            return "nemotron_h_puzzle"
    return "nemotron-nas"


def _rope_config(rope: RopeSpec) -> dict[str, Any]:
    if rope.scaling_type == "llama3":
        scaling: dict[str, Any] | None = {
            "rope_type": "llama3",
            "factor": rope.factor,
            "low_freq_factor": rope.low_freq_factor,
            "high_freq_factor": rope.high_freq_factor,
            "original_max_position_embeddings": rope.original_max_position_embeddings,
        }
    else:
        scaling = None
    params = {"rope_theta": rope.theta, **(scaling or {"rope_type": "default"})}
    return {"rope_theta": rope.theta, "rope_scaling": scaling, "rope_parameters": params}


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def hf_config_from_arch(arch: ArchSpec, dtype: torch.dtype = torch.float32) -> dict[str, Any]:
    """The ``config.json`` dict ``save_pretrained`` writes for ``arch`` (see ``hf_format``)."""
    fmt = hf_format(arch)
    common = {
        "vocab_size": arch.vocab_size,
        "hidden_size": arch.hidden_size,
        "num_hidden_layers": arch.n_layers,
        "max_position_embeddings": arch.max_position_embeddings,
        "tie_word_embeddings": arch.tie_embeddings,
        "dtype": _dtype_name(dtype),
        "torch_dtype": _dtype_name(dtype),
    }
    if fmt in ("llama", "qwen2"):
        att, ffn = arch.blocks[0].attention, arch.blocks[0].ffn
        cfg = {
            "architectures": ["Qwen2ForCausalLM" if fmt == "qwen2" else "LlamaForCausalLM"],
            "model_type": fmt,
            **common,
            "num_attention_heads": att.n_heads,
            "num_key_value_heads": att.n_kv_heads,
            "head_dim": att.head_dim,
            "intermediate_size": ffn.intermediate_size,
            "hidden_act": "silu",
            "rms_norm_eps": arch.norm_eps,
            **_rope_config(arch.rope),
        }
        if fmt == "llama":
            cfg |= {"attention_bias": att.qkv_bias, "mlp_bias": ffn.bias}
        return cfg
    if fmt == "nemotron_h":
        return _nemotron_h_config(arch, common)
    from puzzle.model.hf_hetero import nas_config, puzzle_config

    return puzzle_config(arch, common) if fmt == "nemotron_h_puzzle" else nas_config(arch, common)


def _nemotron_h_config(arch: ArchSpec, common: dict[str, Any]) -> dict[str, Any]:
    from puzzle.model.hf_hetero import PUZZLE_AUTO_MAP

    first: dict[str, BlockSpec] = {}
    for block in arch.blocks:
        kind = _nemotron_h_kind(block)
        assert kind is not None
        first.setdefault(kind, block)
    cfg: dict[str, Any] = {
        "architectures": ["NemotronHForCausalLM"],
        "model_type": "nemotron_h",
        **common,
        # the engines' spelling (vLLM / SGLang validate mamba / attention / mlp / moe); transformers 5 remaps it
        "layers_block_type": [_nemotron_h_kind(b) for b in arch.blocks],
        "layer_norm_epsilon": arch.norm_eps,
        "mlp_hidden_act": "relu2",
        "mamba_hidden_act": "silu",
        "attention_bias": False,
        # transformers 5 has Nemotron-H built in; earlier releases load ours with trust_remote_code
        "auto_map": dict(PUZZLE_AUTO_MAP),
        "hybrid_override_pattern": "".join(
            {"mamba": "M", "attention": "*", "mlp": "-"}[_nemotron_h_kind(b) or ""] for b in arch.blocks
        ),
    }
    att = first["attention"].attention if "attention" in first else AttentionSpec(n_heads=1, n_kv_heads=1, head_dim=8)
    cfg |= {"num_attention_heads": att.n_heads, "num_key_value_heads": att.n_kv_heads, "head_dim": att.head_dim}
    ffn = first["mlp"].ffn if "mlp" in first else FFNSpec(intermediate_size=4 * arch.hidden_size)
    cfg |= {"intermediate_size": ffn.intermediate_size, "mlp_bias": ffn.bias}
    m = first["mamba"].mamba if "mamba" in first else MambaSpec(n_heads=1, head_dim=8, d_state=8)
    cfg |= mamba_config_keys(m) | {"expand": max(1, m.d_inner // arch.hidden_size)}
    return cfg


def mamba_config_keys(m: MambaSpec) -> dict[str, Any]:
    """A Mamba-2 mixer's sizes under Nemotron-H's config key names (plain configs and per-block entries)."""
    return {
        "mamba_num_heads": m.n_heads,
        "mamba_head_dim": m.head_dim,
        "n_groups": m.n_groups,
        "ssm_state_size": m.d_state,
        "conv_kernel": m.conv_kernel,
        "chunk_size": m.chunk_size,
        "use_conv_bias": m.conv_bias,
        "use_bias": m.proj_bias,
        "mamba_proj_bias": m.proj_bias,
        "time_step_min": m.time_step_limit[0],
    }
