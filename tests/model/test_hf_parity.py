"""Our model against transformers on tiny random checkpoints: full logits, cached decode, save -> reload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from puzzle.model import hf_format, load_pretrained, save_pretrained
from tests.model.tiny import save_hf, tokens

KINDS = ["llama", "llama3", "mistral", "qwen2", "nemotron_h"]
TOL = 1e-4


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@torch.no_grad()
def _decode(model: torch.nn.Module, ids: torch.Tensor, prefix: int) -> torch.Tensor:
    """Logits from a prefill of ``prefix`` tokens, then one token at a time through our cache."""
    cache = model.new_cache()
    out = [model(ids[:, :prefix], cache=cache)]
    for t in range(prefix, ids.shape[1]):
        out.append(model(ids[:, t : t + 1], cache=cache))
    assert cache.length == ids.shape[1]
    return torch.cat(out, dim=1)


@pytest.fixture(scope="module", params=KINDS)
def checkpoint(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    path = tmp_path_factory.mktemp(request.param) / "hf"
    reference = save_hf(request.param, path)
    ids = tokens(length=13)  # not a multiple of the Mamba chunk size (4)
    with torch.no_grad():
        expected = reference(ids).logits
    return request.param, path, ids, expected


def test_logits_match_transformers(checkpoint) -> None:
    kind, path, ids, expected = checkpoint
    model = load_pretrained(path)
    with torch.no_grad():
        logits = model(ids)
    assert logits.shape == expected.shape
    assert _max_diff(logits, expected) < TOL, kind


@pytest.mark.parametrize("prefix", [1, 6])
def test_cached_decode_equals_full_forward(checkpoint, prefix: int) -> None:
    kind, path, ids, expected = checkpoint
    model = load_pretrained(path)
    assert _max_diff(_decode(model, ids, prefix), expected) < TOL, kind


def test_save_reload_and_transformers_loads_ours(checkpoint, tmp_path: Path) -> None:
    import transformers

    kind, path, ids, expected = checkpoint
    save_pretrained(load_pretrained(path), tmp_path / "ours")
    config = json.loads((tmp_path / "ours" / "config.json").read_text())
    want = {"qwen2": "qwen2", "nemotron_h": "nemotron_h"}.get(kind, "llama")
    assert config["model_type"] == want
    reloaded = load_pretrained(tmp_path / "ours")
    assert hf_format(reloaded.arch) == want
    with torch.no_grad():
        assert _max_diff(reloaded(ids), expected) < TOL
        theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "ours").eval()
        assert _max_diff(theirs(ids).logits, expected) < TOL
    assert _max_diff(_decode(reloaded, ids, 5), expected) < TOL
