"""Nesting: the permuted parent is the same function, and its prefixes are the smaller sizes the ranking chose."""

from __future__ import annotations

import copy

import pytest
import torch

from puzzle.arch import BlockSpec
from puzzle.elastic.model import ElasticLM
from puzzle.elastic.nest import depth_importance, nest_parent
from puzzle.elastic.space import ElasticConfig, LayerChoice
from puzzle.library.prune import attention_head_scores, ffn_channel_scores, mamba_head_scores
from puzzle.model import Block, CausalLM, ModelContext
from tests.library import small_hybrid, small_llama
from tests.model.tiny import hetero_arch, hybrid_arch

ARCHS = {
    "llama": lambda: small_llama(n_layers=3, n_kv_heads=2),
    "hybrid": lambda: small_hybrid("M-*M"),
    "hybrid-tiny": lambda: hybrid_arch("M*-M"),
    "hetero": hetero_arch,
}


def _model(name: str) -> CausalLM:
    torch.manual_seed(0)
    model = CausalLM(ARCHS[name]()).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a wrongly permuted one shows
        for n, p in model.named_parameters():
            if n.endswith(("norm.weight", "bias")):
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _ids(model: CausalLM, batch: int = 2, length: int = 12, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.arch.vocab_size, (batch, length), generator=g)


@pytest.mark.parametrize("name", list(ARCHS))
def test_nested_parent_computes_the_same_function(name: str) -> None:
    model = _model(name)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    ids = _ids(model)
    with torch.no_grad():
        want = model(ids)
    report = nest_parent(model, _ids(model, seed=2))
    with torch.no_grad():
        got = model(ids)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    changed = [n for n, t in model.state_dict().items() if not torch.equal(t, before[n])]
    assert changed, "nesting permuted nothing: the test would pass for a no-op"
    assert len(report.depth_nmse) == model.arch.n_layers
    for block, nmse in zip(model.arch.blocks, report.depth_nmse, strict=True):
        assert (nmse == 0) == block.is_no_op  # removing a layer that computes nothing changes nothing


def test_prefixes_are_sorted_by_importance() -> None:
    model = _model("hybrid")
    calib = _ids(model, seed=2)
    nest_parent(model, calib)
    from puzzle.elastic.nest import subblock_inputs

    inputs = subblock_inputs(model, calib)
    for block, x in zip(model.blocks, inputs, strict=True):
        if block.ffn is not None:
            s = ffn_channel_scores(block.ffn, x["ffn"])
            assert torch.all(s[:-1] >= s[1:] - 1e-6)
        if block.attn is not None:
            s = attention_head_scores(block.attn, x["attn"]).view(block.attn.n_kv_heads, -1).sum(-1)
            assert torch.all(s[:-1] >= s[1:] - 1e-6)
        if block.mamba is not None:
            s = mamba_head_scores(block.mamba, x["mamba"]).view(block.mamba.n_groups, -1)
            assert torch.all(s[:, :-1] >= s[:, 1:] - 1e-6)


def test_depth_importance_is_nmse_of_logits_without_the_layer() -> None:
    model = _model("llama")
    ids = _ids(model)
    nmse = depth_importance(model, ids)
    with torch.no_grad():
        ref = model(ids)
        skipped = copy.deepcopy(model)
        skipped.blocks[1] = Block(BlockSpec(), ModelContext.from_arch(model.arch))  # passes its input through
        out = skipped(ids)
    want = float((out - ref).pow(2).mean() / ref.pow(2).mean())
    assert nmse[1] == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("name", list(ARCHS))
def test_full_config_of_the_elastic_model_is_the_parent(name: str) -> None:
    model = _model(name)
    ids = _ids(model)
    elastic = ElasticLM(model)
    with torch.no_grad():
        torch.testing.assert_close(elastic(ids), model(ids), rtol=0, atol=0)
        skip_all = ElasticConfig(tuple(LayerChoice() for _ in model.arch.blocks))
        torch.testing.assert_close(elastic(ids, config=skip_all), model.head(model.embed(ids)), rtol=0, atol=0)
