"""The nested space: candidate prefix sizes per layer, budgets, and the child architecture of a configuration."""

from __future__ import annotations

import pytest

from puzzle.arch import AttentionSpec, BlockSpec, FFNSpec, MambaSpec
from puzzle.elastic import ElasticRequest
from puzzle.elastic.space import ElasticConfig, ElasticSpace, LayerChoice, choice_block, config_arch, parse_budgets
from puzzle.errors import ConfigError
from tests.model.tiny import hetero_arch

LLAMA = BlockSpec(AttentionSpec(n_heads=8, n_kv_heads=4, head_dim=16), FFNSpec(intermediate_size=512))
MAMBA = BlockSpec(mamba=MambaSpec(n_heads=8, head_dim=16, n_groups=2, d_state=8))


def test_layer_choices_are_prefix_sizes_with_the_full_layer_first() -> None:
    choices = ElasticSpace(attention=(1.0, 0.5, 0.0), ffn=(1.0, 0.5, 0.0)).layer_choices(LLAMA)
    assert choices[0] == LayerChoice.full(LLAMA) == LayerChoice(4, 512, 0)
    assert {(c.attention, c.ffn) for c in choices} == {(a, f) for a in (4, 2, 0) for f in (512, 256, 0)}
    mamba = ElasticSpace(mamba=(1.0, 0.5, 0.25, 0.0)).layer_choices(MAMBA)
    assert [c.mamba for c in mamba] == [4, 2, 1, 0]  # heads per group (4 per group in the parent)
    rounded = ElasticSpace(ffn=(1.0, 0.3), ffn_multiple=128).layer_choices(LLAMA)
    assert sorted({c.ffn for c in rounded}) == [256, 512]  # 0.3 * 512 = 154 rounded up to the 128 grid


def test_choice_block_keeps_queries_with_their_kv_groups_and_mamba_groups_whole() -> None:
    block = choice_block(LLAMA, LayerChoice(attention=1, ffn=128))
    assert (block.attention.n_heads, block.attention.n_kv_heads, block.ffn.intermediate_size) == (2, 1, 128)
    mamba = choice_block(MAMBA, LayerChoice(mamba=1)).mamba
    assert (mamba.n_heads, mamba.n_groups) == (2, 2)
    assert choice_block(LLAMA, LayerChoice()).is_no_op
    with pytest.raises(ConfigError, match="exceeds"):
        choice_block(LLAMA, LayerChoice(attention=5, ffn=512))


def test_config_arch_and_round_trip() -> None:
    arch = hetero_arch()
    config = ElasticConfig(tuple(LayerChoice.full(b) for b in arch.blocks))
    assert config_arch(arch, config) == arch
    assert ElasticConfig.from_list(config.to_list()) == config
    assert LayerChoice.from_name(LayerChoice(2, 96, 1).name) == LayerChoice(2, 96, 1)
    with pytest.raises(ConfigError, match="has 2 layers"):
        config_arch(arch, ElasticConfig(config.layers[:2]))


def test_budgets_and_requests_are_validated_at_the_edge() -> None:
    assert parse_budgets("0.4,0.8,0.6") == (0.8, 0.6, 0.4)
    for bad, message in (("0.8,x", "not a number"), ("0", r"\(0, 1\]"), ("0.5,0.5", "repeat"), ("", "not a number")):
        with pytest.raises(ConfigError, match=message):
            parse_budgets(bad)
    with pytest.raises(ConfigError, match="selection must be mip or router"):
        ElasticRequest(parent="p", budgets=(0.5,), out="o", selection="greedy")
    with pytest.raises(ConfigError, match=r"include 1\.0"):
        ElasticSpace(ffn=(0.5, 0.0))
