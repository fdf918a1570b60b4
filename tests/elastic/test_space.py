"""The nested space: candidate prefix sizes per layer, budgets, and the child architecture of a configuration."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from puzzle.arch import ArchSpec, AttentionSpec, BlockSpec, FFNSpec, MambaSpec
from puzzle.elastic import ElasticRequest
from puzzle.elastic.space import (
    ElasticConfig,
    ElasticGrid,
    ElasticSpace,
    LayerChoice,
    choice_block,
    config_arch,
    parse_budgets,
)
from puzzle.errors import ConfigError
from puzzle.targets import loadable_by
from tests.library import small_hybrid, small_llama
from tests.model.tiny import hetero_arch

LLAMA = BlockSpec(AttentionSpec(n_heads=8, n_kv_heads=4, head_dim=16), FFNSpec(intermediate_size=512))
MAMBA = BlockSpec(mamba=MambaSpec(n_heads=8, head_dim=16, n_groups=2, d_state=8))


def _arch(*blocks: BlockSpec) -> ArchSpec:
    return ArchSpec(vocab_size=32, hidden_size=128, blocks=blocks)


def test_layer_choices_are_prefix_sizes_with_the_full_layer_first() -> None:
    choices = ElasticSpace(attention=(1.0, 0.5, 0.0), ffn=(1.0, 0.5, 0.0)).grid(_arch(LLAMA)).layer_choices(0)
    assert choices[0] == LayerChoice.full(LLAMA) == LayerChoice(4, 512, 0)
    assert {(c.attention, c.ffn) for c in choices} == {(a, f) for a in (4, 2, 0) for f in (512, 256, 0)}
    mamba = ElasticSpace(mamba=(1.0, 0.5, 0.25, 0.0)).grid(_arch(MAMBA)).layer_choices(0)
    assert [c.mamba for c in mamba] == [4, 2, 1, 0]  # heads per group (4 per group in the parent)


def test_ffn_widths_round_up_to_the_multiple_capped_at_the_parents() -> None:
    arch = small_llama(intermediate=768)
    fractions = ElasticSpace(ffn=(1.0, 0.75, 0.5, 0.3, 0.0))
    assert fractions.grid(arch).axis_sizes(0, "ffn") == (768, 576, 384, 230, 0)  # no target: no multiple
    assert replace(fractions, ffn_multiple=128).grid(arch).axis_sizes(0, "ffn") == (768, 640, 384, 256, 0)
    assert replace(fractions, ffn_multiple=512).grid(arch).axis_sizes(0, "ffn") == (768, 512, 0)  # 0.75 -> 1024: full
    # a target that reads widths only from ffn_mult: its 256 grid by default, and sizes off that grid are dropped
    assert fractions.grid(arch, "sglang").axis_sizes(0, "ffn") == (768, 512, 256, 0)
    assert replace(fractions, ffn_multiple=128).grid(arch, "sglang").axis_sizes(0, "ffn") == (768, 256, 0)
    assert fractions.grid(arch, "vllm").axis_sizes(0, "ffn") == (768, 576, 384, 230, 0)  # vLLM reads any width
    with pytest.raises(ConfigError, match="ffn_multiple must be a positive integer"):
        ElasticSpace(ffn_multiple=0)


@pytest.mark.parametrize("target", ["vllm", "sglang", "trtllm", "llama.cpp"])
def test_a_target_grid_keeps_attention_whole_or_removed_and_every_config_loads(target: str) -> None:
    arch = small_llama(n_layers=3, n_kv_heads=2)
    grid, free = ElasticSpace().grid(arch, target), ElasticSpace().grid(arch)
    for i in range(arch.n_layers):
        assert grid.axis_sizes(i, "attention") == (2, 0) and free.axis_sizes(i, "attention") == (2, 1, 0)
    assert grid.target == target and grid.to_dict()["target"] == target
    _assert_configs_load(arch, grid, free, target)


def test_a_hybrid_keeps_mamba_whole_or_removed_for_vllm() -> None:
    arch = small_hybrid("M-*M")
    grid, free = ElasticSpace().grid(arch, "vllm"), ElasticSpace().grid(arch)
    for i in (0, 3):  # 8 heads in 2 groups: 4 per group
        assert grid.axis_sizes(i, "mamba") == (4, 0) and free.axis_sizes(i, "mamba") == (4, 3, 2, 1, 0)
    assert grid.axis_sizes(1, "ffn") == free.axis_sizes(1, "ffn")  # vLLM reads each hybrid MLP's own width
    assert ElasticSpace().grid(arch, "transformers").sizes == free.sizes  # our own modeling code loads every slice
    _assert_configs_load(arch, grid, free, "vllm")


def _assert_configs_load(arch: ArchSpec, grid: ElasticGrid, free: ElasticGrid, target: str) -> None:
    """Random configurations of ``grid`` all load in ``target``; some of the unrestricted ``free`` grid do not."""
    rng = random.Random(0)
    refused = 0
    for _ in range(40):
        for g in (grid, free):
            config = ElasticConfig(tuple(rng.choice(g.layer_choices(i)) for i in range(arch.n_layers)))
            loads = target in loadable_by(config_arch(arch, config))
            assert loads or g is free, config
            refused += not loads
    assert refused > 0  # the restriction is real: the unrestricted grid holds children the target cannot load


def test_a_target_that_cannot_load_the_parent_or_any_smaller_child_is_a_user_error() -> None:
    with pytest.raises(ConfigError, match=r"vllm cannot load the parent itself:\n  layer 2: linear attention"):
        ElasticSpace().grid(hetero_arch(), "vllm")
    arch = small_llama(n_layers=2)
    biased = replace(arch, blocks=tuple(replace(b, attention=replace(b.attention, qkv_bias=True)) for b in arch.blocks))
    assert "sglang" in loadable_by(biased)  # uniform: a plain qwen2 config, which every engine loads
    with pytest.raises(ConfigError, match="sglang loads no smaller child of this parent") as refused:
        ElasticSpace().grid(biased, "sglang")
    assert "layer 1: attention biases are not read by sglang" in str(refused.value)
    with pytest.raises(ConfigError, match="unknown target 'vlm'"):
        ElasticSpace().grid(arch, "vlm")


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
    assert ElasticRequest(parent="p", budgets=(0.5,), out="o").target == "vllm"  # as pipeline jobs build
    assert ElasticRequest(parent="p", budgets=(0.5,), out="o", target=None).to_dict()["target"] is None
    with pytest.raises(ConfigError, match="unknown target 'vlm'; choose one of transformers, vllm"):
        ElasticRequest(parent="p", budgets=(0.5,), out="o", target="vlm")
    with pytest.raises(ConfigError, match=r"include 1\.0"):
        ElasticSpace(ffn=(0.5, 0.0))
