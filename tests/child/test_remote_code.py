"""Every block kind, exported, loads in stock transformers with the code the export ships (trust_remote_code).

transformers is the independent reference here only for the loading machinery (AutoConfig / AutoModel /
generate); the modeling code it runs is ours, shipped in the export and never imported from ``puzzle``.
Set ``PUZZLE_TF4_PYTHON`` to a Python with a transformers 4.x to also check the exports there.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch

from puzzle.child.export import build_manifest, export_child
from puzzle.model import hf_format
from tests.child import ids, tiny_parent_dir
from tests.child.block_kinds import KINDS, build, greedy


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    return tiny_parent_dir(tmp_path_factory.mktemp("parent") / "parent")


def _export(model, out: Path, parent: Path) -> Path:
    manifest = build_manifest(parent_digest=None, library_digest=None, layers=["v"] * model.arch.n_layers)
    return export_child(model, out, manifest=manifest, tokenizer_dir=parent)


def _load(out: Path):
    import transformers

    config = transformers.AutoConfig.from_pretrained(out, trust_remote_code=True)
    model = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True, dtype=torch.float32)
    return config, model.eval()


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_block_kind_loads_in_transformers_with_equal_logits_and_generation(kind, tmp_path, parent) -> None:
    ours = build(KINDS[kind])
    fmt = hf_format(ours.arch)
    assert fmt in ("nemotron-nas", "nemotron_h_puzzle")
    out = _export(ours, tmp_path / "child", parent)
    config = json.loads((out / "config.json").read_text())
    assert set(config["auto_map"]) == {"AutoConfig", "AutoModelForCausalLM"}
    for ref in config["auto_map"].values():
        assert (out / f"{ref.split('.')[0]}.py").is_file()
    hf_config, hf = _load(out)
    assert type(hf_config).__name__ in ("DeciLMConfig", "NemotronHPuzzleConfig")
    x = ids(2, 12)
    with torch.no_grad():
        diff = (hf(x).logits - ours(x)).abs().max().item()
    assert diff <= 1e-4, f"{kind}: logits differ by {diff}"
    prompt = x[:1, :5]
    generated = hf.generate(prompt, max_new_tokens=6, do_sample=False, attention_mask=torch.ones_like(prompt))
    assert torch.equal(generated, greedy(ours, prompt, 6)), kind


@pytest.mark.parametrize("kind", ["fewer KV heads", "Mamba with fewer heads"])
def test_cached_decode_continues_the_prefix(kind, tmp_path, parent) -> None:
    """A KV / Mamba-state cache from a prefix, fed one token at a time, equals the full forward pass."""
    ours = build(KINDS[kind])
    _, hf = _load(_export(ours, tmp_path / "child", parent))
    x = ids(2, 10)
    with torch.no_grad():
        full = hf(x).logits
        first = hf(x[:, :7], use_cache=True)
        cache = first.past_key_values if hasattr(first, "past_key_values") else first.cache
        steps = [first.logits]
        for t in range(7, 10):
            steps.append(hf(x[:, t : t + 1], past_key_values=cache, use_cache=True).logits)
    assert (torch.cat(steps, dim=1) - full).abs().max().item() <= 1e-5


def test_off_grid_ffn_width_writes_no_ffn_mult(tmp_path, parent) -> None:
    """A 64-wide FFN has no ffn_mult that DeciLM's rule maps back to 64: the key is left out (engines then read
    intermediate_size); widths on the grid carry an ffn_mult that the rule maps back exactly."""
    ours = build(KINDS["several FFN widths"])
    config = json.loads((_export(ours, tmp_path / "child", parent) / "config.json").read_text())
    ffn = [b["ffn"] for b in config["block_configs"]]
    assert [e["intermediate_size"] for e in ffn] == [256, 512, 64] and "ffn_mult" not in ffn[2]
    hidden = config["hidden_size"]
    for entry in ffn[:2]:
        assert -(-int(2 * entry["ffn_mult"] * hidden / 3) // 256) * 256 == entry["intermediate_size"]


@pytest.mark.skipif(
    not os.environ.get("PUZZLE_TF4_PYTHON"), reason="PUZZLE_TF4_PYTHON (a transformers 4.x Python) not set"
)
@pytest.mark.parametrize(
    "kind", ["fewer KV heads", "linear attention", "tied embeddings", "Mamba with fewer heads", "uniform hybrid"]
)
def test_exports_load_in_transformers_4(kind, tmp_path, parent) -> None:
    from dataclasses import replace

    from tests.child import small_hybrid

    ours = build(replace(small_hybrid(), tie_embeddings=True) if kind == "uniform hybrid" else KINDS[kind])
    out = _export(ours, tmp_path / "child", parent)
    x = ids(2, 12)
    script = textwrap.dedent(
        f"""
        import torch, transformers
        assert transformers.__version__.startswith("4."), transformers.__version__
        m = transformers.AutoModelForCausalLM.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
        x = torch.tensor({x.tolist()})
        with torch.no_grad():
            logits = m(x).logits
        gen = m.generate(x[:1, :5], max_new_tokens=6, do_sample=False)
        torch.save({{"logits": logits, "gen": gen}}, {str(tmp_path / "tf4.pt")!r})
        """
    )
    subprocess.run([os.environ["PUZZLE_TF4_PYTHON"], "-c", script], check=True, capture_output=True, timeout=300)
    got = torch.load(tmp_path / "tf4.pt")
    with torch.no_grad():
        assert (got["logits"] - ours(x)).abs().max().item() <= 1e-4
    assert torch.equal(got["gen"], greedy(ours, x[:1, :5], 6))


def test_uniform_hybrid_stays_plain_nemotron_h_and_ships_code_for_older_transformers(tmp_path, parent) -> None:
    """transformers' built-in NemotronH and the shipped code (for releases without it) give our logits."""
    from dataclasses import replace

    import transformers

    from tests.child import small_hybrid

    ours = build(replace(small_hybrid(), tie_embeddings=True))
    out = _export(ours, tmp_path / "child", parent)
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "nemotron_h"
    # the spelling vLLM / SGLang validate (transformers 5 remaps it to linear_attention / full_attention)
    assert config["layers_block_type"] == ["mamba", "attention", "mlp"] and config["hybrid_override_pattern"] == "M*-"
    x = ids(2, 12)
    for remote in (False, True):
        hf = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=remote).eval()
        assert type(hf).__name__ == ("NemotronHPuzzleForCausalLM" if remote else "NemotronHForCausalLM")
        with torch.no_grad():
            assert (hf(x).logits - ours(x)).abs().max().item() <= 1e-4


def test_long_prompt_crosses_scan_chunks(tmp_path, parent) -> None:
    """A 150-token prompt spans three chunks of the shipped Mamba scan; a cached prefix of 70 then continues it."""
    ours = build(KINDS["Mamba with fewer heads"])
    _, hf = _load(_export(ours, tmp_path / "child", parent))
    x = ids(1, 150)
    with torch.no_grad():
        want = ours(x)
        assert (hf(x).logits - want).abs().max().item() <= 1e-4
        first = hf(x[:, :70], use_cache=True)
        cache = first.past_key_values if hasattr(first, "past_key_values") else first.cache
        rest = hf(x[:, 70:], past_key_values=cache, use_cache=True).logits
    assert (rest - want[:, 70:]).abs().max().item() <= 1e-4
