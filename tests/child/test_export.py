from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from puzzle.arch import AttentionSpec, BlockSpec, FFNSpec
from puzzle.child.export import MANIFEST_NAME, build_manifest, export_child, read_manifest
from puzzle.errors import ConfigError
from puzzle.model import CausalLM, load_pretrained
from tests.child import ids, small_llama, tiny_parent_dir


def _hetero_child() -> CausalLM:
    arch = small_llama()
    arch = arch.with_block(
        0, BlockSpec(AttentionSpec(n_heads=4, n_kv_heads=1, head_dim=16), FFNSpec(intermediate_size=64))
    )
    arch = arch.with_block(1, BlockSpec(AttentionSpec.linear(), FFNSpec.no_op()))
    arch = arch.with_block(2, BlockSpec(AttentionSpec.no_op(), FFNSpec.linear()))
    torch.manual_seed(3)
    return CausalLM(arch).eval()


def _manifest(model: CausalLM) -> dict:
    return build_manifest(
        parent_digest="p" * 64,
        library_digest="l" * 64,
        layers=[f"v{i}" for i in range(model.arch.n_layers)],
        objective={"metric": "kl_div", "sense": "min", "value": 0.5},
        constraints=["runtime_ms<=70%"],
        predicted_costs={"runtime_ms": 1.5},
        measured_costs={"runtime_ms": 1.52},
        solver="pulp-cbc",
    )


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    return tiny_parent_dir(tmp_path_factory.mktemp("parent") / "parent")


def test_heterogeneous_child_is_nemotron_nas_and_reloads_with_identical_logits(tmp_path, parent) -> None:
    child = _hetero_child()
    out = export_child(child, tmp_path / "child", manifest=_manifest(child), tokenizer_dir=parent)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "nemotron-nas"
    assert config["architectures"] == ["DeciLMForCausalLM"]
    blocks = config["block_configs"]
    assert len(blocks) == 3
    assert blocks[0]["attention"] == {"no_op": False, "replace_with_linear": False, "n_heads_in_group": 4}
    assert blocks[0]["ffn"]["intermediate_size"] == 64
    assert blocks[1]["attention"]["replace_with_linear"] and blocks[1]["ffn"]["no_op"]
    assert blocks[2]["attention"]["no_op"] and blocks[2]["ffn"]["replace_with_linear"]
    assert config["eos_token_id"] == json.loads((parent / "config.json").read_text())["eos_token_id"]
    assert (out / "tokenizer.json").read_bytes() == (parent / "tokenizer.json").read_bytes()
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        names = set(f.keys())
    assert "model.layers.0.self_attn.k_proj.weight" in names
    assert "model.layers.0.mlp.down_proj.weight" in names and "model.embed_tokens.weight" in names
    manifest = read_manifest(out)
    assert manifest["parent_digest"] == "p" * 64 and manifest["library_digest"] == "l" * 64
    assert manifest["hf_format"] == "nemotron-nas"
    assert manifest["versions"]["torch"] == torch.__version__
    assert manifest["measured_costs"] == {"runtime_ms": 1.52}
    x = ids()
    with torch.no_grad():
        assert torch.equal(load_pretrained(out)(x), child(x))


def test_homogeneous_child_is_a_plain_llama_that_transformers_loads(tmp_path, parent) -> None:
    import transformers

    arch = small_llama()
    block = BlockSpec(AttentionSpec(n_heads=4, n_kv_heads=1, head_dim=16), FFNSpec(intermediate_size=96))
    for i in range(arch.n_layers):
        arch = arch.with_block(i, block)
    torch.manual_seed(4)
    child = CausalLM(arch).eval()
    out = export_child(child, tmp_path / "child", manifest=_manifest(child), tokenizer_dir=parent)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_key_value_heads"] == 1
    reference = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    x = ids()
    with torch.no_grad():
        ours = child(x)
        assert torch.allclose(reference(x).logits, ours, atol=1e-5, rtol=1e-5)
        assert torch.equal(load_pretrained(out)(x), ours)
    tokenizer = transformers.AutoTokenizer.from_pretrained(out)
    assert tokenizer("def f(): pass")["input_ids"]


def test_refuses_non_empty_target_unless_forced(tmp_path, parent) -> None:
    child = _hetero_child()
    target = tmp_path / "child"
    target.mkdir()
    export_child(child, target, manifest=_manifest(child), tokenizer_dir=parent)  # empty dir: fine
    (target / "keep.txt").write_text("user file")
    with pytest.raises(ConfigError, match=r"not empty.*--force"):
        export_child(child, target, manifest=_manifest(child), tokenizer_dir=parent)
    assert (target / "keep.txt").exists()
    export_child(child, target, manifest=_manifest(child), tokenizer_dir=parent, force=True)
    assert not (target / "keep.txt").exists() and (target / MANIFEST_NAME).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        export_child(child, tmp_path / "file", manifest=_manifest(child), tokenizer_dir=parent, force=True)


def test_a_manifest_that_cannot_be_written_leaves_nothing_behind(tmp_path, parent) -> None:
    child = _hetero_child()
    bad = {**_manifest(child), "measured_costs": {"runtime_ms": float("nan")}}
    with pytest.raises(ValueError):  # raised after the weights are already in the staging directory
        export_child(child, tmp_path / "child", manifest=bad, tokenizer_dir=parent)
    assert list(tmp_path.iterdir()) == []


def test_disk_quota_hit_while_writing_weights_keeps_the_old_export(tmp_path, parent) -> None:
    """A real fault: the file-size limit (RLIMIT_FSIZE) makes the safetensors write fail half-way."""
    child = _hetero_child()
    target = tmp_path / "child"
    export_child(child, target, manifest=_manifest(child), tokenizer_dir=parent)
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    weights = (target / "model.safetensors").stat().st_size
    script = textwrap.dedent(f"""
        import resource, signal, sys, torch
        sys.path.insert(0, {str(Path.cwd())!r})
        from puzzle.child.export import export_child
        from tests.child.test_export import _hetero_child, _manifest
        child = _hetero_child()
        torch.manual_seed(9)
        for p in child.parameters():
            p.data.normal_()
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, ({weights // 2}, {weights // 2}))
        try:
            export_child(child, {str(target)!r}, manifest=_manifest(child), tokenizer_dir={str(parent)!r}, force=True)
        except Exception as exc:
            print("FAILED", type(exc).__name__, exc)
            sys.exit(3)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stdout + result.stderr
    assert "FAILED" in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child"]  # no staging or half-written directory
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before


def test_heterogeneous_hybrid_child_round_trips(tmp_path, parent) -> None:
    from dataclasses import replace

    from tests.child import small_hybrid

    arch = small_hybrid()  # M * -
    mamba = arch.blocks[0].mamba
    arch = arch.with_block(0, replace(arch.blocks[0], mamba=replace(mamba, n_heads=2)))
    arch = arch.with_block(2, BlockSpec(AttentionSpec.no_op(), FFNSpec.no_op()))
    torch.manual_seed(5)
    child = CausalLM(arch).eval()
    out = export_child(child, tmp_path / "child", manifest=_manifest(child), tokenizer_dir=parent)
    config = json.loads((out / "config.json").read_text())
    # the engines' hybrid layout: one mixer per entry; the identity layer 2 is left out
    assert config["model_type"] == "nemotron_h_puzzle"
    assert config["mamba_num_heads"] == 2 and [b["block_type"] for b in config["block_configs"]] == [
        "mamba",
        "attention",
    ]
    x = ids()
    with torch.no_grad():
        assert torch.equal(load_pretrained(out)(x), child(x))
