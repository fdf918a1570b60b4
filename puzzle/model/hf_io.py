"""Hugging Face weight IO: tensor names, ``load_pretrained`` / ``save_pretrained``.

Tensor names are Hugging Face's: ``model.layers.N.{input_layernorm, self_attn.*, post_attention_layernorm,
mlp.*}`` (DeciLM's ``self_attn.linear_attn`` / ``mlp.linear_mlp`` for linear replacements; our extension for
Mamba in that layout: ``mamba_layernorm``, ``mamba.*``), and for nemotron_h / nemotron_h_puzzle
``backbone.layers.N.{norm, mixer.*}``, ``backbone.embeddings``, ``backbone.norm_f``, ``lm_head``. A
nemotron_h_puzzle export leaves out layers whose every subblock is a no-op (identity layers), so its layer
``N`` is the N-th kept layer.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from puzzle.arch import ArchSpec
from puzzle.errors import CheckpointError
from puzzle.files import replace_dir, staging_dir
from puzzle.model.hf_config import CONFIG_NAME, arch_from_hf_config, hf_config_from_arch, read_config
from puzzle.model.lm import CausalLM

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

# --- tensor names --------------------------------------------------------------------------------------

_LLAMA_SUBBLOCKS = {"attn": "self_attn", "ffn": "mlp", "mamba": "mamba"}
_LLAMA_NORMS = {"attn": "input_layernorm", "ffn": "post_attention_layernorm", "mamba": "mamba_layernorm"}
_BLOCK_PARAM = re.compile(r"blocks\.(\d+)\.(mamba|attn|ffn)(_norm)?\.(.+)")


def hf_tensor_name(name: str, layout: str, layer_map: dict[int, int] | None = None) -> str:
    """The Hugging Face name of our parameter ``name`` in ``layout`` (``llama`` or ``nemotron_h``); ``layer_map``
    renumbers layers (our index -> exported index) when identity layers are left out."""
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
    if layer_map is not None:
        layer = str(layer_map[int(layer)])
    if layout == "nemotron_h":
        return f"backbone.layers.{layer}.{'norm' if is_norm else 'mixer'}.{rest}"
    return f"model.layers.{layer}.{(_LLAMA_NORMS if is_norm else _LLAMA_SUBBLOCKS)[sub]}.{rest}"


def _layout(model_type: str) -> str:
    return "nemotron_h" if model_type in ("nemotron_h", "nemotron_h_puzzle") else "llama"


def _hf_names(model: CausalLM, layout: str, layer_map: dict[int, int] | None = None) -> dict[str, str]:
    """Our parameter name -> HF tensor name, for every stored tensor (a tied LM head is not stored)."""
    names = {}
    for name, _ in model.named_parameters(remove_duplicate=True):
        names[name] = hf_tensor_name(name, layout, layer_map)
    return names


def _layer_map(model: CausalLM, model_type: str) -> dict[int, int] | None:
    if model_type != "nemotron_h_puzzle":
        return None
    from puzzle.model.hf_hetero import kept_layers

    return {ours: exported for exported, ours in enumerate(kept_layers(model.arch))}


def remote_code_files(model_type: str) -> list[Path]:
    """The configuration / modeling files a checkpoint of ``model_type`` ships (none for built-in types)."""
    from puzzle.model.hf_hetero import REMOTE_CODE

    folder = Path(__file__).resolve().parent.parent / "child" / "remote"
    return [folder / name for name in REMOTE_CODE.get(model_type, ())]


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
    layer_map = _layer_map(model, config["model_type"])
    params = dict(model.named_parameters())
    # identity layers (left out of nemotron_h_puzzle exports) have no parameters, so every layer is mapped
    tensors = {
        hf: params[ours].detach().to("cpu").contiguous() for ours, hf in _hf_names(model, layout, layer_map).items()
    }
    if model.arch.tie_embeddings and layout == "nemotron_h":
        # transformers' NemotronHForCausalLM never ties its head: store it (a copy; safetensors refuses aliases)
        tensors["lm_head.weight"] = tensors[hf_tensor_name("embed_tokens.weight", layout)].clone()
    source = Path(tokenizer_dir) if tokenizer_dir is not None else getattr(model, "hf_source", None)

    tmp = staging_dir(path)
    try:
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        for file in remote_code_files(config["model_type"]):
            shutil.copyfile(file, tmp / file.name)
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
