"""Hugging Face interop: configs to ``ArchSpec`` and back, tensor names, ``load_pretrained`` / ``save_pretrained``.

Read: ``config.json`` + safetensors (one file, or shards listed in ``model.safetensors.index.json``) for
``model_type`` llama, mistral, qwen2, nemotron_h and our heterogeneous ``nemotron-nas`` (DeciLM
``block_configs``, plus a ``puzzle_arch`` key holding ``ArchSpec.to_dict()`` so anything round-trips).

Write (``save_pretrained``), by what the architecture is:

* every layer the same Llama layer (GQA with RoPE + SwiGLU): a plain ``LlamaForCausalLM`` config
  (``Qwen2ForCausalLM`` when only q/k/v carry a bias);
* a Nemotron-H-style hybrid whose Mamba / attention / MLP layers are each all alike: a ``nemotron_h`` config
  that transformers' ``NemotronHForCausalLM`` loads;
* anything else (heterogeneous): ``model_type: "nemotron-nas"`` with ``block_configs`` and ``puzzle_arch``.

Tensor names are Hugging Face's: ``model.layers.N.{input_layernorm, self_attn.*, post_attention_layernorm,
mlp.*}`` (our extension for Mamba in that layout: ``mamba_layernorm``, ``mamba.*``), and for nemotron_h
``backbone.layers.N.{norm, mixer.*}``, ``backbone.embeddings``, ``backbone.norm_f``, ``lm_head``.

Nemotron-H dt clamp: transformers 5 clamps dt to ``(time_step_min, inf)`` (its ``time_step_limit`` key is not
used), and so do we when reading a nemotron_h config; that is the reference our parity tests hold us to.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from puzzle.arch import (
    ArchSpec,
    AttentionSpec,
    BlockSpec,
    FFNSpec,
    MambaSpec,
    RopeSpec,
    from_block_configs,
    to_block_configs,
)
from puzzle.errors import CheckpointError, ConfigError
from puzzle.files import replace_dir, staging_dir
from puzzle.model.lm import CausalLM

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "nemotron_h", "nemotron-nas")
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "chat_template.jinja",
    "generation_config.json",
)
# Tensors some checkpoints carry that no forward pass reads.
_IGNORED_TENSORS = re.compile(r"(.*\.rotary_emb\.inv_freq$)|(^mtp\.)")

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


def _nemotron_h_arch(cfg: dict[str, Any]) -> ArchSpec:
    hidden = int(cfg["hidden_size"])
    for key, expected in (("mlp_hidden_act", "relu2"), ("mamba_hidden_act", "silu")):
        if cfg.get(key, expected) != expected:
            raise CheckpointError(f"nemotron_h: {key} {cfg[key]!r} is not supported (supported: {expected})")
    types = nemotron_layer_types(cfg)
    blocks = []
    for kind in types:
        if kind == "mamba":
            mamba = MambaSpec(
                n_heads=int(cfg["mamba_num_heads"]),
                head_dim=int(cfg["mamba_head_dim"]),
                n_groups=int(_get(cfg, "n_groups", "mamba_n_groups", default=8)),
                d_state=int(_get(cfg, "ssm_state_size", default=128)),
                conv_kernel=int(_get(cfg, "conv_kernel", "mamba_d_conv", default=4)),
                chunk_size=int(_get(cfg, "chunk_size", "mamba_chunk_size", default=128)),
                conv_bias=bool(_get(cfg, "use_conv_bias", "mamba_conv_bias", default=True)),
                proj_bias=bool(cfg.get("use_bias", False)),
                time_step_limit=(float(_get(cfg, "time_step_min", "mamba_dt_min", default=0.001)), math.inf),
            )
            blocks.append(BlockSpec(mamba=mamba))
        elif kind == "attention":
            n_heads = int(cfg["num_attention_heads"])
            attention = AttentionSpec(
                n_heads=n_heads,
                n_kv_heads=int(_get(cfg, "num_key_value_heads", default=n_heads)),
                head_dim=int(_get(cfg, "head_dim", "attention_head_dim", default=hidden // n_heads)),
                rope=False,
            )
            blocks.append(BlockSpec(attention=attention))
        else:
            ffn = FFNSpec(
                intermediate_size=int(cfg["intermediate_size"]),
                activation="relu2",
                bias=bool(cfg.get("mlp_bias", False)),
            )
            blocks.append(BlockSpec(ffn=ffn))
    return ArchSpec(
        vocab_size=int(cfg["vocab_size"]),
        hidden_size=hidden,
        blocks=tuple(blocks),
        family="nemotron_h",
        norm_eps=float(_get(cfg, "layer_norm_epsilon", "rms_norm_eps", default=1e-5)),
        max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
        tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


def _nas_arch(cfg: dict[str, Any]) -> ArchSpec:
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
            return _nas_arch(config)
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
    """Which config ``save_pretrained`` writes: llama, qwen2, nemotron_h or nemotron-nas."""
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
    gqa = next((b.attention for b in arch.blocks if b.attention.kind == "gqa"), None)
    mlp = next((b.ffn for b in arch.blocks if b.ffn.kind == "mlp"), None)
    return {
        "architectures": ["DeciLMForCausalLM"],
        "model_type": "nemotron-nas",
        **common,
        "num_attention_heads": gqa.n_heads if gqa else 1,
        "head_dim": gqa.head_dim if gqa else arch.hidden_size,
        "intermediate_size": mlp.intermediate_size if mlp else 4 * arch.hidden_size,
        "hidden_act": "silu" if mlp is None or mlp.activation == "swiglu" else "relu2",
        "rms_norm_eps": arch.norm_eps,
        **_rope_config(arch.rope),
        "block_configs": to_block_configs(arch),
        "puzzle_arch": arch.to_dict(),
    }


def _nemotron_h_config(arch: ArchSpec, common: dict[str, Any]) -> dict[str, Any]:
    first: dict[str, BlockSpec] = {}
    for block in arch.blocks:
        kind = _nemotron_h_kind(block)
        assert kind is not None
        first.setdefault(kind, block)
    cfg: dict[str, Any] = {
        "architectures": ["NemotronHForCausalLM"],
        "model_type": "nemotron_h",
        **common,
        "layers_block_type": [
            {"mamba": "linear_attention", "attention": "full_attention", "mlp": "mlp"}[_nemotron_h_kind(b) or ""]
            for b in arch.blocks
        ],
        "layer_norm_epsilon": arch.norm_eps,
        "mlp_hidden_act": "relu2",
        "mamba_hidden_act": "silu",
        "attention_bias": False,
    }
    att = first["attention"].attention if "attention" in first else AttentionSpec(n_heads=1, n_kv_heads=1, head_dim=8)
    cfg |= {"num_attention_heads": att.n_heads, "num_key_value_heads": att.n_kv_heads, "head_dim": att.head_dim}
    ffn = first["mlp"].ffn if "mlp" in first else FFNSpec(intermediate_size=4 * arch.hidden_size)
    cfg |= {"intermediate_size": ffn.intermediate_size, "mlp_bias": ffn.bias}
    m = first["mamba"].mamba if "mamba" in first else MambaSpec(n_heads=1, head_dim=8, d_state=8)
    cfg |= {
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
        "expand": max(1, m.d_inner // arch.hidden_size),
    }
    return cfg


# --- tensor names --------------------------------------------------------------------------------------

_LLAMA_SUBBLOCKS = {"attn": "self_attn", "ffn": "mlp", "mamba": "mamba"}
_LLAMA_NORMS = {"attn": "input_layernorm", "ffn": "post_attention_layernorm", "mamba": "mamba_layernorm"}
_BLOCK_PARAM = re.compile(r"blocks\.(\d+)\.(mamba|attn|ffn)(_norm)?\.(.+)")


def hf_tensor_name(name: str, layout: str) -> str:
    """The Hugging Face name of our parameter ``name`` in ``layout`` (``llama`` or ``nemotron_h``)."""
    top = {
        "llama": {"embed_tokens.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight"},
        "nemotron_h": {"embed_tokens.weight": "backbone.embeddings.weight", "norm.weight": "backbone.norm_f.weight"},
    }[layout]
    if name in top:
        return top[name]
    if name == "lm_head.weight":
        return name
    match = _BLOCK_PARAM.fullmatch(name)
    if match is None:
        raise ValueError(f"no Hugging Face name for parameter {name!r}")
    layer, sub, is_norm, rest = match.groups()
    if layout == "nemotron_h":
        return f"backbone.layers.{layer}.{'norm' if is_norm else 'mixer'}.{rest}"
    return f"model.layers.{layer}.{(_LLAMA_NORMS if is_norm else _LLAMA_SUBBLOCKS)[sub]}.{rest}"


def _layout(model_type: str) -> str:
    return "nemotron_h" if model_type == "nemotron_h" else "llama"


def _hf_names(model: CausalLM, layout: str) -> dict[str, str]:
    """Our parameter name -> HF tensor name, for every stored tensor (a tied LM head is not stored)."""
    names = {}
    for name, _ in model.named_parameters(remove_duplicate=True):
        names[name] = hf_tensor_name(name, layout)
    return names


# --- load ----------------------------------------------------------------------------------------------


def _weight_files(path: Path) -> dict[str, Path]:
    """HF tensor name -> the safetensors file holding it."""
    from safetensors import safe_open

    index, single = path / INDEX_NAME, path / WEIGHTS_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{index}: not a valid safetensors index ({exc!r})") from exc
        files = {name: path / shard for name, shard in weight_map.items()}
        for shard in sorted(set(files.values())):
            if not shard.is_file():
                raise CheckpointError(f"{shard}: weight shard listed in {index.name} not found")
        return files
    if single.is_file():
        with safe_open(single, "pt") as f:
            return dict.fromkeys(f.keys(), single)
    found = sorted(p.name for p in path.glob("*.safetensors"))
    hint = f" (found {', '.join(found)}; expected {WEIGHTS_NAME} or an index)" if found else ""
    if not found and any(path.glob("*.bin")):
        hint = " (found only PyTorch .bin weights; only safetensors are supported)"
    raise CheckpointError(f"{single}: weights not found and no {INDEX_NAME}{hint}")


def read_tensors(
    path: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> tuple[ArchSpec, Callable[[Sequence[str]], dict[str, torch.Tensor]]]:
    """The arch of the checkpoint directory ``path`` and a reader of its tensors by *our* parameter names.

    ``read(names)`` opens only the (sharded) safetensors files holding ``names`` and returns just those tensors,
    shape-checked against the config and converted to ``dtype`` when given (floating tensors only), so a caller
    can hold one layer at a time. The directory is checked whole first: missing or unexpected tensors raise
    ``CheckpointError`` naming the file or tensor.
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: checkpoint directory not found")
    cfg = read_config(path)
    arch = arch_from_hf_config(cfg)
    layout = _layout(cfg["model_type"])
    files = _weight_files(path)
    with torch.device("meta"):
        model = CausalLM(arch)
    names = _hf_names(model, layout)
    expected = dict(model.named_parameters())
    missing = [hf for hf in names.values() if hf not in files]
    if missing:
        raise CheckpointError(
            f"{path}: tensor {missing[0]} missing from the checkpoint ({len(missing)} missing in all)"
        )
    used = set(names.values()) | {"lm_head.weight"}
    unexpected = sorted(n for n in files if n not in used and not _IGNORED_TENSORS.match(n))
    if unexpected:
        raise CheckpointError(
            f"{path}: tensor {unexpected[0]} is not part of this {cfg['model_type']} model "
            f"({len(unexpected)} unexpected in all); does config.json match the weights?"
        )

    def read(wanted: Sequence[str]) -> dict[str, torch.Tensor]:
        by_file: dict[Path, list[tuple[str, str]]] = {}
        for ours in wanted:
            by_file.setdefault(files[names[ours]], []).append((ours, names[ours]))
        state: dict[str, torch.Tensor] = {}
        for file, pairs in by_file.items():
            with safe_open(file, "pt", device=str(device)) as f:
                for ours, hf in pairs:
                    tensor = f.get_tensor(hf)
                    want = tuple(expected[ours].shape)
                    if tuple(tensor.shape) != want:
                        raise CheckpointError(
                            f"{file.name}: tensor {hf} has shape {tuple(tensor.shape)}, expected {want} from config.json"
                        )
                    if dtype is not None and tensor.is_floating_point():
                        tensor = tensor.to(dtype)
                    state[ours] = tensor
        return state

    return arch, read


def load_pretrained(
    path: str | Path, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu"
) -> CausalLM:
    """A ``CausalLM`` (in eval mode) with the weights of the Hugging Face checkpoint directory ``path``.

    ``dtype`` converts floating tensors (default: as stored). Raises ``CheckpointError`` naming the file or
    tensor when the directory is incomplete, of an unsupported type, or its tensors do not fit the config.
    """
    arch, read = read_tensors(path, dtype=dtype, device=device)
    with torch.device("meta"):
        model = CausalLM(arch)
    state = read([name for name, _ in model.named_parameters(remove_duplicate=True)])
    if arch.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    model.load_state_dict(state, assign=True, strict=True)
    model.tie_weights()
    model.hf_source = Path(path)  # type: ignore[assignment]  # tokenizer files are copied from here on save
    return model.eval()


# --- save ----------------------------------------------------------------------------------------------


def _shards(tensors: dict[str, torch.Tensor], max_shard_bytes: int) -> list[dict[str, torch.Tensor]]:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    return shards


def save_pretrained(
    model: CausalLM,
    path: str | Path,
    *,
    tokenizer_dir: str | Path | None = None,
    max_shard_bytes: int = 4 * 2**30,
) -> Path:
    """Write ``model`` as a Hugging Face directory at ``path`` (atomically: a temp dir renamed into place).

    The config is Llama/Qwen2, Nemotron-H or nemotron-nas (see ``hf_format``); tensors keep HF names and are
    sharded with an index above ``max_shard_bytes``. Tokenizer files are copied from ``tokenizer_dir``, else
    from the directory the model was loaded from, when present. An existing model directory is replaced.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and (not path.is_dir() or (any(path.iterdir()) and not (path / CONFIG_NAME).exists())):
        raise CheckpointError(f"{path}: exists and is not a model directory; choose a new or empty directory")
    dtype = model.embed_tokens.weight.dtype
    config = hf_config_from_arch(model.arch, dtype)
    layout = _layout(config["model_type"])
    params = dict(model.named_parameters())
    tensors = {hf: params[ours].detach().to("cpu").contiguous() for ours, hf in _hf_names(model, layout).items()}
    if model.arch.tie_embeddings and layout == "nemotron_h":
        # transformers' NemotronHForCausalLM never ties its head: store it (a copy; safetensors refuses aliases)
        tensors["lm_head.weight"] = tensors[hf_tensor_name("embed_tokens.weight", layout)].clone()
    source = Path(tokenizer_dir) if tokenizer_dir is not None else getattr(model, "hf_source", None)

    tmp = staging_dir(path)
    try:
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        shards = _shards(tensors, max_shard_bytes)
        if len(shards) == 1:
            save_file(shards[0], tmp / WEIGHTS_NAME, metadata={"format": "pt"})
        else:
            weight_map: dict[str, str] = {}
            for i, shard in enumerate(shards, 1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                save_file(shard, tmp / name, metadata={"format": "pt"})
                weight_map |= dict.fromkeys(shard, name)
            total = sum(t.numel() * t.element_size() for t in tensors.values())
            index = {"metadata": {"total_size": total}, "weight_map": weight_map}
            (tmp / INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        if source is not None:
            for name in TOKENIZER_FILES:
                if (Path(source) / name).is_file():
                    shutil.copyfile(Path(source) / name, tmp / name)
        replace_dir(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
