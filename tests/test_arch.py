from __future__ import annotations

import json
import math

import pytest

from puzzle.arch import (
    ArchSpec,
    AttentionSpec,
    BlockSpec,
    FFNSpec,
    MambaSpec,
    RopeSpec,
    ffn_mult_to_intermediate_size,
    from_block_configs,
    to_block_configs,
)
from puzzle.errors import ConfigError


def _llama_blocks() -> tuple[BlockSpec, ...]:
    return (
        BlockSpec(AttentionSpec(n_heads=8, n_kv_heads=4, head_dim=32), FFNSpec(intermediate_size=768)),
        BlockSpec(AttentionSpec(n_heads=8, n_kv_heads=1, head_dim=32), FFNSpec(intermediate_size=512)),
        BlockSpec(AttentionSpec.linear(), FFNSpec.linear()),
        BlockSpec(AttentionSpec.no_op(), FFNSpec.no_op()),
    )


def test_query_heads_must_divide_by_kv_heads() -> None:
    with pytest.raises(ConfigError, match="8 query heads are not divisible by 3 KV heads"):
        AttentionSpec(n_heads=8, n_kv_heads=3, head_dim=32)


def test_mamba_heads_must_divide_by_groups() -> None:
    with pytest.raises(ConfigError, match="10 heads are not divisible by 4 groups"):
        MambaSpec(n_heads=10, head_dim=16, n_groups=4, d_state=16)


@pytest.mark.parametrize(
    "make",
    [
        lambda: AttentionSpec(n_heads=0, n_kv_heads=1, head_dim=8),
        lambda: AttentionSpec(kind="sparse"),  # type: ignore[arg-type]
        lambda: AttentionSpec(n_heads=4, n_kv_heads=2, head_dim=7),
        lambda: FFNSpec(intermediate_size=-1),
        lambda: FFNSpec(intermediate_size=8, activation="gelu"),  # type: ignore[arg-type]
        lambda: ArchSpec(vocab_size=10, hidden_size=8, blocks=()),
    ],
)
def test_invalid_specs_raise_config_error(make) -> None:
    with pytest.raises(ConfigError):
        make()


def test_no_op_and_linear_need_no_sizes() -> None:
    assert AttentionSpec.no_op().is_no_op
    assert FFNSpec.linear().kind == "linear"
    assert BlockSpec().is_no_op


def test_arch_json_round_trip_with_mamba_and_rope_scaling() -> None:
    blocks = (
        *_llama_blocks(),
        BlockSpec(mamba=MambaSpec(n_heads=8, head_dim=16, n_groups=2, d_state=16)),
        BlockSpec(ffn=FFNSpec(intermediate_size=640, activation="relu2")),
    )
    arch = ArchSpec(
        vocab_size=1000,
        hidden_size=256,
        blocks=blocks,
        rope=RopeSpec(theta=500000.0, scaling_type="llama3", factor=8.0),
    )
    text = json.dumps(arch.to_dict())
    back = ArchSpec.from_dict(json.loads(text))
    assert back == arch
    assert back.blocks[4].mamba.time_step_limit == (0.0, math.inf)


def test_unknown_field_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown field.*n_kv"):
        AttentionSpec.from_dict({"kind": "gqa", "n_kv": 2})


def test_block_configs_round_trip_keeps_explicit_sizes() -> None:
    blocks = _llama_blocks()
    configs = to_block_configs(ArchSpec(vocab_size=100, hidden_size=256, blocks=blocks))
    assert configs[0]["attention"] == {"no_op": False, "replace_with_linear": False, "n_heads_in_group": 2}
    assert configs[2]["ffn"]["replace_with_linear"] and configs[3]["attention"]["no_op"]
    # DeciLM's rule reproduces 768 from the written ffn_mult, and 512 via the explicit size.
    assert ffn_mult_to_intermediate_size(configs[0]["ffn"]["ffn_mult"], 256) == 768
    back = from_block_configs(configs, hidden_size=256, n_heads=8, head_dim=32)
    assert back == blocks


def test_block_configs_ffn_mult_only_uses_decilm_rule() -> None:
    # Llama-3.3-70B: hidden 8192, ffn_mult 5.25 -> 28672 (DeciLM rule: 2 * 5.25 * 8192 / 3, rounded up to 256).
    entry = {"attention": {"n_heads_in_group": 8}, "ffn": {"ffn_mult": 5.25}}
    (block,) = from_block_configs([entry], hidden_size=8192, n_heads=64, head_dim=128)
    assert block.ffn.intermediate_size == 28672
    assert block.attention.n_kv_heads == 8


def test_block_configs_bad_group_is_reported_with_index() -> None:
    with pytest.raises(ConfigError, match=r"block_configs\[0\].*does not divide"):
        from_block_configs(
            [{"attention": {"n_heads_in_group": 3}, "ffn": {"no_op": True}}], hidden_size=8, n_heads=8, head_dim=4
        )
