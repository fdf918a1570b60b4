"""The heterogeneous formats: ``nemotron-nas`` (DeciLM ``block_configs``) and ``nemotron_h_puzzle``.

``nemotron-nas``: the standard DeciLM config (``block_configs`` of ``attention`` {no_op, replace_with_linear,
n_heads_in_group} and ``ffn`` {no_op, replace_with_linear, ffn_mult, intermediate_size}) plus ``puzzle_arch``
(our ``ArchSpec``, so anything round-trips) and an ``auto_map`` to our own configuration / modeling code.

``nemotron_h_puzzle``: NVIDIA's layout for pruned Nemotron-H-family models, as read by vLLM / SGLang: a
Nemotron-H config whose ``block_configs`` holds one entry per layer, ``{"block_type": "mamba" | "attention" |
"mlp" | "moe", ...keys}``, each key overriding the global config value of the same name for that layer.
We write the global sizes from the first layer of each kind and a per-layer key only where that layer
differs (so engines that read some sizes globally, e.g. vLLM's Mamba layers, load children whose layers of
that kind agree). Layers whose every subblock is a no-op are identities and are left out; a linear
replacement is our extension ``{"block_type": "linear", "replaces": "attention" | "mlp"}`` (read only by
our remote code).
"""

from __future__ import annotations

from typing import Any

from puzzle.arch import ArchSpec, AttentionSpec, BlockSpec, FFNSpec, from_block_configs, to_block_configs
from puzzle.errors import CheckpointError
from puzzle.model.hf_config import (
    _get,
    _rope_config,
    _rope_from_config,
    check_nemotron_activations,
    mamba_config_keys,
    nemotron_h_arch,
    nemotron_h_block,
)

NAS_AUTO_MAP = {
    "AutoConfig": "configuration_decilm.DeciLMConfig",
    "AutoModelForCausalLM": "modeling_decilm.DeciLMForCausalLM",
}
PUZZLE_AUTO_MAP = {
    "AutoConfig": "configuration_nemotron_h_puzzle.NemotronHPuzzleConfig",
    "AutoModelForCausalLM": "modeling_nemotron_h_puzzle.NemotronHPuzzleForCausalLM",
}
# Which remote-code files each format ships (from puzzle/child/remote).
REMOTE_CODE = {
    "nemotron-nas": ("configuration_decilm.py", "modeling_decilm.py", "puzzle_modeling_utils.py"),
    "nemotron_h": (
        "configuration_nemotron_h_puzzle.py",
        "modeling_nemotron_h_puzzle.py",
        "puzzle_modeling_utils.py",
    ),
    "nemotron_h_puzzle": (
        "configuration_nemotron_h_puzzle.py",
        "modeling_nemotron_h_puzzle.py",
        "puzzle_modeling_utils.py",
    ),
}
# An upper dt clamp of "none", written as a finite number so that config.json stays strict JSON.
NO_DT_LIMIT = 1e38
_PATTERN = {"mamba": "M", "attention": "*", "mlp": "-", "linear": "L"}


# --- nemotron-nas ----------------------------------------------------------------------------------------


def nas_config(arch: ArchSpec, common: dict[str, Any]) -> dict[str, Any]:
    """The DeciLM config of a heterogeneous Llama-style ``arch`` (globals from its first GQA / MLP layer)."""
    gqa = next((b.attention for b in arch.blocks if b.attention.kind == "gqa"), None)
    mlp = next((b.ffn for b in arch.blocks if b.ffn.kind == "mlp"), None)
    n_heads = gqa.n_heads if gqa else 1
    return {
        "architectures": ["DeciLMForCausalLM"],
        "model_type": "nemotron-nas",
        "auto_map": dict(NAS_AUTO_MAP),
        **common,
        "num_attention_heads": n_heads,
        "num_key_value_heads": gqa.n_kv_heads if gqa else 1,
        "head_dim": gqa.head_dim if gqa else arch.hidden_size // n_heads,
        "intermediate_size": mlp.intermediate_size if mlp else 4 * arch.hidden_size,
        "hidden_act": "silu" if mlp is None or mlp.activation == "swiglu" else "relu2",
        "attention_bias": bool(gqa and gqa.o_bias),
        "qkv_bias": bool(gqa and gqa.qkv_bias),
        "mlp_bias": bool(mlp and mlp.bias),
        "rms_norm_eps": arch.norm_eps,
        **_rope_config(arch.rope),
        # llama.cpp's DeciLM converter reads this one at the top level (default 8192), not from rope_scaling
        **(
            {"original_max_position_embeddings": arch.rope.original_max_position_embeddings}
            if arch.rope.scaling_type == "llama3"
            else {}
        ),
        "block_configs": to_block_configs(arch),
        "puzzle_arch": arch.to_dict(),
    }


def nas_arch(cfg: dict[str, Any]) -> ArchSpec:
    if "puzzle_arch" in cfg:
        return ArchSpec.from_dict(cfg["puzzle_arch"])
    if "block_configs" not in cfg:
        raise CheckpointError("nemotron-nas: config has no block_configs")
    hidden, n_heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
    blocks = from_block_configs(
        cfg["block_configs"],
        hidden_size=hidden,
        n_heads=n_heads,
        head_dim=int(_get(cfg, "head_dim", default=hidden // n_heads)),
    )
    return ArchSpec(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        blocks=blocks,
        family="llama",
        norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        rope=_rope_from_config(cfg),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


# --- nemotron_h_puzzle -----------------------------------------------------------------------------------


def puzzle_kind(block: BlockSpec) -> str | None:
    """mamba / attention / mlp / linear / identity when ``block`` is one nemotron_h_puzzle layer, else None."""
    present = [n for n in ("mamba", "attention", "ffn") if not getattr(block, n).is_no_op]
    if not present:
        return "identity"
    if len(present) > 1:
        return None
    if present == ["mamba"]:
        return "mamba"
    if present == ["attention"]:
        att = block.attention
        if att.kind == "linear":
            return "linear"
        return "attention" if not (att.rope or att.qkv_bias or att.o_bias) else None
    if block.ffn.kind == "linear":
        return "linear"
    return "mlp" if block.ffn.activation == "relu2" else None


def kept_layers(arch: ArchSpec) -> list[int]:
    """Indices of the layers a nemotron_h_puzzle export keeps (all but identities)."""
    return [i for i, b in enumerate(arch.blocks) if puzzle_kind(b) != "identity"]


def _mamba_keys(block: BlockSpec) -> dict[str, Any]:
    m = block.mamba
    return mamba_config_keys(m) | {"time_step_limit": [m.time_step_limit[0], min(m.time_step_limit[1], NO_DT_LIMIT)]}


def _attention_keys(block: BlockSpec) -> dict[str, Any]:
    a = block.attention
    return {"num_attention_heads": a.n_heads, "num_key_value_heads": a.n_kv_heads, "head_dim": a.head_dim}


def _mlp_keys(block: BlockSpec) -> dict[str, Any]:
    return {"intermediate_size": block.ffn.intermediate_size, "mlp_bias": block.ffn.bias}


_KEYS = {"mamba": _mamba_keys, "attention": _attention_keys, "mlp": _mlp_keys}


def puzzle_config(arch: ArchSpec, common: dict[str, Any]) -> dict[str, Any]:
    """The nemotron_h_puzzle config of a heterogeneous Nemotron-H-style ``arch`` (see the module doc)."""
    kept = [(puzzle_kind(arch.blocks[i]), arch.blocks[i]) for i in kept_layers(arch)]
    globals_: dict[str, Any] = {}
    for kind in ("mamba", "attention", "mlp"):
        first = next((b for k, b in kept if k == kind), None)
        if first is not None:
            globals_ |= _KEYS[kind](first)
    entries = []
    for kind, block in kept:
        entry: dict[str, Any] = {"block_type": kind}
        if kind == "linear":
            entry["replaces"] = "attention" if block.attention.kind == "linear" else "mlp"
        elif kind == "mlp":
            entry["intermediate_size"] = block.ffn.intermediate_size  # always, as in NVIDIA's schema
        if kind in _KEYS:
            entry |= {k: v for k, v in _KEYS[kind](block).items() if globals_.get(k) != v}
        entries.append(entry)
    defaults = {
        "num_attention_heads": 1,
        "num_key_value_heads": 1,
        "head_dim": arch.hidden_size,
        "intermediate_size": 4 * arch.hidden_size,
        "mlp_bias": False,
        "mamba_num_heads": 1,
        "mamba_head_dim": arch.hidden_size,
        "n_groups": 1,
        "ssm_state_size": 16,
        "conv_kernel": 4,
        "chunk_size": 128,
        "use_conv_bias": True,
        "use_bias": False,
        "mamba_proj_bias": False,
        "time_step_min": 0.001,
        "time_step_limit": [0.0, NO_DT_LIMIT],
    }
    m = globals_.get("mamba_num_heads", 0) * globals_.get("mamba_head_dim", 0)
    return {
        "architectures": ["NemotronHPuzzleForCausalLM"],
        "model_type": "nemotron_h_puzzle",
        "auto_map": dict(PUZZLE_AUTO_MAP),
        **common,
        "num_hidden_layers": len(entries),
        "block_configs": entries,
        "hybrid_override_pattern": "".join(_PATTERN[e["block_type"]] for e in entries),
        "layers_block_type": [e["block_type"] for e in entries],
        "layer_norm_epsilon": arch.norm_eps,
        "mlp_hidden_act": "relu2",
        "mamba_hidden_act": "silu",
        "attention_bias": False,
        **defaults,
        **globals_,
        "expand": max(1, m // arch.hidden_size),
        "num_nextn_predict_layers": 0,
    }


def puzzle_arch(cfg: dict[str, Any]) -> ArchSpec:
    """The ``ArchSpec`` of a nemotron_h_puzzle config: each layer from the globals overridden by its entry."""
    check_nemotron_activations(cfg)
    entries = cfg.get("block_configs")
    if not isinstance(entries, list) or not entries:
        raise CheckpointError("nemotron_h_puzzle: config has no block_configs list")
    blocks = []
    for i, entry in enumerate(entries):
        kind = entry.get("block_type") if isinstance(entry, dict) else None
        if kind == "linear":
            if entry.get("replaces") == "attention":
                blocks.append(BlockSpec(attention=AttentionSpec.linear()))
            else:
                blocks.append(BlockSpec(ffn=FFNSpec.linear()))
        elif kind in ("mamba", "attention", "mlp"):
            blocks.append(nemotron_h_block(kind, {**cfg, **entry}))
        else:
            raise CheckpointError(
                f"nemotron_h_puzzle: block_configs[{i}] has block_type {kind!r} "
                "(supported: mamba, attention, mlp, linear; MoE layers are not)"
            )
    return nemotron_h_arch(cfg, tuple(blocks))
