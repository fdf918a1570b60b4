"""The elastic model: any configuration runs from the one set of weights and equals its sliced standalone child."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from puzzle.elastic.model import ElasticLM, n_params, slice_block_state
from puzzle.elastic.nest import nest_parent, subblock_inputs
from puzzle.elastic.space import ElasticConfig, ElasticSpace, LayerChoice, config_arch
from puzzle.errors import ConfigError
from puzzle.library.distill import build_block
from puzzle.library.prune import prune_ffn, prune_mamba
from puzzle.model import CausalLM, load_pretrained, save_pretrained
from tests.elastic.test_nest import ARCHS, _ids, _model


def _random_config(model: CausalLM, seed: int) -> ElasticConfig:
    rng = random.Random(seed)
    grid = ElasticSpace().grid(model.arch)
    return ElasticConfig(tuple(rng.choice(grid.layer_choices(i)) for i in range(model.arch.n_layers)))


@pytest.mark.parametrize("name", list(ARCHS))
def test_sliced_child_equals_the_elastic_model_at_that_config(name: str, tmp_path) -> None:
    model = _model(name)
    nest_parent(model, _ids(model, seed=2))
    elastic = ElasticLM(model)
    ids = _ids(model)
    for seed in range(4):
        config = _random_config(model, seed)
        child = elastic.slice(config=config)
        assert child.arch == config_arch(model.arch, config)
        with torch.no_grad():
            want = elastic(ids, config=config)
            torch.testing.assert_close(child(ids), want, rtol=0, atol=1e-5)
        if seed == 0:  # the standalone child survives save_pretrained / load_pretrained as it is
            loaded = load_pretrained(save_pretrained(child, tmp_path / name))
            with torch.no_grad():
                torch.testing.assert_close(loaded(ids), want, rtol=0, atol=1e-5)


def test_elastic_forward_shares_the_parent_weights() -> None:
    model = _model("llama")
    elastic = ElasticLM(model)
    config = ElasticConfig(tuple(LayerChoice(1, 64, 0) for _ in model.arch.blocks))
    spec, state = slice_block_state(model.blocks[0], config.layers[0])
    assert spec.attention.n_kv_heads == 1 and spec.attention.n_heads == 2 and spec.ffn.intermediate_size == 64
    for name, t in state.items():  # attention and FFN prefixes are views of the parent's storage, not copies
        assert (
            t.untyped_storage().data_ptr()
            == dict(model.blocks[0].named_parameters())[name].untyped_storage().data_ptr()
        )
    loss = elastic(_ids(model), config=config).square().mean()
    loss.backward()
    grad = model.blocks[0].ffn.up_proj.weight.grad
    assert grad is not None and grad[:64].abs().sum() > 0 and torch.all(grad[64:] == 0)


def test_prefix_of_the_nested_parent_is_the_builders_importance_pruning() -> None:
    """Keeping a prefix of the nested parent is what ``prune.py`` keeps from the original parent (same function)."""
    model = _model("hybrid")
    before = copy.deepcopy(model)
    calib = _ids(model, seed=2)
    inputs = subblock_inputs(before, calib)
    nest_parent(model, calib)
    h = torch.randn(2, 9, model.arch.hidden_size)
    checked = 0
    for old, new, x in zip(before.blocks, model.blocks, inputs, strict=True):
        if old.ffn is not None:
            choice, pruned = LayerChoice(ffn=64), prune_ffn(old.ffn, x["ffn"], 64)
            state = {f"ffn.{k}": v for k, v in pruned.items()} | {"ffn_norm.weight": old.ffn_norm.weight}
        elif old.mamba is not None:
            choice, pruned = LayerChoice(mamba=2), prune_mamba(old.mamba, x["mamba"], 2 * old.mamba.n_groups)
            state = {f"mamba.{k}": v for k, v in pruned.items()} | {"mamba_norm.weight": old.mamba_norm.weight}
        else:
            continue
        spec, sliced = slice_block_state(new, choice)
        with torch.no_grad():
            want = build_block(model.arch, spec, {k: v.detach() for k, v in state.items()})(h)
            got = build_block(model.arch, spec, {k: v.detach() for k, v in sliced.items()})(h)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
        checked += 1
    assert checked == 3


def test_budget_lookup_and_bad_configs_are_user_errors() -> None:
    model = _model("llama")
    full = ElasticConfig.full(model.arch)
    elastic = ElasticLM(model, {0.5: full})
    assert elastic.config_for(0.5) == full
    with pytest.raises(ConfigError, match=r"budget 0\.3 was not trained"):
        elastic(_ids(model), budget=0.3)
    too_wide = ElasticConfig(tuple(LayerChoice(attention=9, ffn=1) for _ in model.arch.blocks))
    with pytest.raises(ConfigError, match="exceeds the parent"):
        elastic(_ids(model), config=too_wide)
    assert n_params(elastic.slice(config=full)) == n_params(model)
