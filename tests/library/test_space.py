from __future__ import annotations

import pytest

from puzzle.arch import AttentionSpec, FFNSpec, MambaSpec
from puzzle.errors import ConfigError
from puzzle.library.space import (
    SearchSpace,
    default_space,
    expand,
    ffn_width,
    load_space,
    mamba_heads,
    parse_space,
    variant_name,
)
from tests.library import small_hybrid, small_llama


def test_default_llama_space_has_at_least_12_variants_per_layer() -> None:
    arch = small_llama(n_layers=3, n_kv_heads=4, intermediate=512)
    layers = expand(default_space("llama"), arch)
    assert len(layers) == 3
    for layer in layers:
        assert layer.attention[0] == arch.blocks[0].attention  # parent first
        assert [a.n_kv_heads for a in layer.attention if a.kind == "gqa"] == [4, 2, 1]
        assert [a.kind for a in layer.attention[3:]] == ["linear", "no_op"]
        assert [f.intermediate_size for f in layer.ffn if f.kind == "mlp"] == [512, 384, 256, 128, 64]
        variants = layer.variants()
        assert len(variants) == 5 * 7 >= 12
        assert variants[0] == arch.blocks[0]
        assert len({variant_name(v, layer.parent) for v in variants}) == len(variants)


def test_ffn_width_rounds_to_multiple_and_never_exceeds_parent() -> None:
    assert ffn_width(1000, 0.5, 64) == 512
    assert ffn_width(1000, 0.01, 64) == 64
    assert ffn_width(1000, 1.0, 64) == 1000
    assert ffn_width(1000, 0.99, 256) == 1000


def test_mamba_heads_stay_group_aligned() -> None:
    parent = MambaSpec(n_heads=24, head_dim=16, n_groups=4, d_state=16)
    for frac in (1.0, 0.75, 0.5, 0.3, 0.01):
        heads = mamba_heads(parent, frac)
        assert heads % 4 == 0 and 4 <= heads <= 24
    assert mamba_heads(parent, 0.5) == 12


def test_hybrid_space_varies_one_subblock_per_layer_type() -> None:
    arch = small_hybrid(pattern="M*-")
    mamba, attn, mlp = expand(default_space("nemotron_h"), arch)
    assert mamba.varied == ("mamba",)
    assert [m.n_heads for m in mamba.mamba if not m.is_no_op] == [8, 6, 4, 2]
    assert all(m.n_heads % 2 == 0 for m in mamba.mamba if not m.is_no_op)
    assert attn.varied == ("attention",)
    assert all(not a.rope for a in attn.attention if a.kind == "gqa")
    assert mlp.varied == ("ffn",)
    assert all(f.activation == "relu2" for f in mlp.ffn if f.kind == "mlp")
    assert mamba.variants()[-1].is_no_op  # the no-op layer


def test_yaml_file_with_override(tmp_path) -> None:
    path = tmp_path / "space.yaml"
    path.write_text(
        "mode: coupled\n"
        "attention: {kv_heads: [2, 1], linear: false}\n"
        "ffn: {fractions: [0.5], multiple: 32}\n"
        "overrides:\n"
        "  - layers: ['1-2', last]\n"
        "    attention: {kv_heads: [1], no_op: false, linear: false}\n"
    )
    space = load_space(path)
    assert space.mode == "coupled"
    layers = expand(space, small_llama(n_layers=4))
    assert [a.kind for a in layers[0].attention] == ["gqa", "gqa", "gqa", "no_op"]
    for i in (1, 2, 3):
        assert [a.n_kv_heads for a in layers[i].attention] == [4, 1]
    assert [f.intermediate_size for f in layers[0].ffn if f.kind == "mlp"] == [256, 128]
    assert parse_space(space.to_dict()) == space


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse_space(
            {
                "mode": "sideways",
                "attention": {"kv_heads": [0, "two"], "linear": "yes"},
                "ffn": {"fractions": [1.5], "multiple": -8},
                "mamba": {"head_fractions": []},
                "overrides": [{"attention": {}}, {"layers": ["x"]}],
                "colour": "red",
            }
        )
    message = str(info.value)
    for fragment in (
        "unknown key 'colour'",
        "space.mode",
        "kv_heads[0]",
        "kv_heads[1]",
        "attention.linear",
        "ffn.fractions[0]",
        "ffn.multiple",
        "mamba.head_fractions",
        "overrides[0]: missing 'layers'",
        "overrides[1].layers",
    ):
        assert fragment in message, fragment


def test_space_that_does_not_fit_the_parent_lists_every_layer_problem() -> None:
    space = parse_space({"attention": {"kv_heads": [8, 3]}, "overrides": [{"layers": [7], "ffn": {"multiple": 4096}}]})
    with pytest.raises(ConfigError) as info:
        expand(space, small_llama(n_layers=2, n_kv_heads=4))
    message = str(info.value)
    assert "8 is more than the parent's 4 KV heads" in message
    assert "3 does not divide" in message
    assert "out of range" in message


def test_non_gqa_parent_layers_keep_their_own_option() -> None:
    arch = small_llama().with_block(0, small_llama().blocks[0].__class__(AttentionSpec.linear(), FFNSpec.no_op()))
    layer = expand(SearchSpace(), arch)[0]
    assert layer.attention == (AttentionSpec.linear(),)
    assert layer.ffn == (FFNSpec.no_op(),)
    assert layer.variants() == (arch.blocks[0],)


def test_cli_lists_every_space_problem_one_per_line_and_exits_2(tmp_path) -> None:
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "space.yaml"
    path.write_text("mode: sideways\nffn: {fractions: [0.5, 2], colour: red}\noverrides:\n  - layers: [x]\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "puzzle",
            "library",
            "build",
            "--parent",
            str(tmp_path / "none"),
            "--out",
            str(tmp_path / "lib"),
            "--space",
            str(path),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0] == f"puzzle: error: {path}: invalid search space:"
    assert [line.strip().split(":")[0] for line in lines[1:]] == [
        "space.ffn.fractions[1]",
        "space.ffn",
        "space.mode",
        "space.overrides[0].layers[0]",
    ]
