"""Config parsing edge cases and the errors a user gets for broken or unsupported checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from puzzle.errors import CheckpointError
from puzzle.model import arch_from_hf_config, load_pretrained, save_pretrained
from puzzle.model.hf_config import nemotron_layer_types
from tests.model.tiny import save_hf, tokens


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("llama") / "hf"
    save_hf("llama", path)
    return path


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_unsupported_model_type_names_the_supported_ones() -> None:
    with pytest.raises(
        CheckpointError, match=r"'gpt2' is not supported \(supported: llama, mistral, qwen2, nemotron_h"
    ):
        arch_from_hf_config({"model_type": "gpt2"})


def test_missing_directory_config_and_weights(llama_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="checkpoint directory not found"):
        load_pretrained(tmp_path / "nowhere")
    bare = _copy(llama_dir, tmp_path / "bare")
    (bare / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"bare/model\.safetensors: weights not found"):
        load_pretrained(bare)
    (bare / "config.json").unlink()
    with pytest.raises(CheckpointError, match=r"bare/config\.json: not found"):
        load_pretrained(bare)


def test_wrong_tensor_shape_names_tensor_and_shapes(llama_dir: Path, tmp_path: Path) -> None:
    bad = _copy(llama_dir, tmp_path / "bad")
    tensors = load_file(bad / "model.safetensors")
    tensors["model.layers.1.self_attn.k_proj.weight"] = torch.zeros(8, 32)
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(
        CheckpointError, match=r"model\.layers\.1\.self_attn\.k_proj\.weight has shape \(8, 32\), expected \(16, 32\)"
    ):
        load_pretrained(bad)


def test_missing_and_unexpected_tensors(llama_dir: Path, tmp_path: Path) -> None:
    bad = _copy(llama_dir, tmp_path / "bad")
    tensors = load_file(bad / "model.safetensors")
    del tensors["model.layers.2.mlp.up_proj.weight"]
    save_file(tensors, bad / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"tensor model\.layers\.2\.mlp\.up_proj\.weight missing"):
        load_pretrained(bad)
    config = json.loads((bad / "config.json").read_text())
    (bad / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    with pytest.raises(CheckpointError, match=r"tensor model\.layers\.1\..* is not part of this llama model"):
        load_pretrained(bad)


def test_missing_shard_is_named(llama_dir: Path, tmp_path: Path) -> None:
    sharded = tmp_path / "sharded"
    save_pretrained(load_pretrained(llama_dir), sharded, max_shard_bytes=4000)
    victim = sorted(sharded.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(
        CheckpointError, match=f"{victim.name}: weight shard listed in model.safetensors.index.json not found"
    ):
        load_pretrained(sharded)


def test_save_refuses_to_clobber_a_non_model_directory(llama_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "notes.txt").write_text("keep me")
    with pytest.raises(CheckpointError, match="not a model directory"):
        save_pretrained(load_pretrained(llama_dir), tmp_path / "docs")
    assert (tmp_path / "docs" / "notes.txt").read_text() == "keep me"


def test_unsupported_rope_and_activation() -> None:
    base = {
        "model_type": "llama",
        "vocab_size": 10,
        "hidden_size": 8,
        "num_attention_heads": 2,
        "num_hidden_layers": 1,
        "intermediate_size": 16,
    }
    with pytest.raises(CheckpointError, match="rope scaling type 'yarn' is not supported"):
        arch_from_hf_config({**base, "rope_scaling": {"rope_type": "yarn", "factor": 2.0}})
    with pytest.raises(CheckpointError, match="hidden_act 'gelu' is not supported"):
        arch_from_hf_config({**base, "hidden_act": "gelu"})
    with pytest.raises(CheckpointError, match="missing the key 'intermediate_size'"):
        arch_from_hf_config({k: v for k, v in base.items() if k != "intermediate_size"})
    with pytest.raises(CheckpointError, match="not divisible by 3 KV heads"):
        arch_from_hf_config({**base, "num_attention_heads": 4, "num_key_value_heads": 3})


def test_nemotron_layer_type_spellings_agree() -> None:
    want = ["mamba", "attention", "mlp", "mamba"]
    assert nemotron_layer_types({"hybrid_override_pattern": "M*-M"}) == want
    assert nemotron_layer_types({"layers_block_type": ["mamba", "attention", "mlp", "mamba"]}) == want
    assert (
        nemotron_layer_types({"layers_block_type": ["linear_attention", "full_attention", "mlp", "linear_attention"]})
        == want
    )
    with pytest.raises(CheckpointError, match=r"'E'.*MoE layers are not"):
        nemotron_layer_types({"hybrid_override_pattern": "M*E"})


def test_nemotron_h_legacy_config_loads_with_same_logits(tmp_path: Path) -> None:
    """A released-style config (pattern string, ``mamba_*`` key names) gives the same model as transformers'."""
    path = tmp_path / "nh"
    reference = save_hf("nemotron_h", path)
    config = json.loads((path / "config.json").read_text())
    pattern = {"linear_attention": "M", "full_attention": "*", "mlp": "-"}
    config["hybrid_override_pattern"] = "".join(pattern[t] for t in config.pop("layers_block_type"))
    for new, old in (
        ("n_groups", "mamba_n_groups"),
        ("conv_kernel", "mamba_d_conv"),
        ("chunk_size", "mamba_chunk_size"),
        ("time_step_min", "mamba_dt_min"),
    ):
        config[old] = config.pop(new)
    (path / "config.json").write_text(json.dumps(config))
    model = load_pretrained(path)
    assert [b.mamba.is_no_op for b in model.arch.blocks] == [False, True, True, False, True]
    assert model.arch.blocks[0].mamba.time_step_limit == (0.001, math.inf)
    ids = tokens(length=9)
    with torch.no_grad():
        assert (model(ids) - reference(ids).logits).abs().max() < 1e-4
