"""Deployment targets: the table's verdicts checked against each engine's own shape rules, export refusal,
the manifest's ``loadable_by``, and the search side (unloadable variants, restricted spaces, ``--target``).

``expected_shapes`` re-derives every tensor of an export from ``config.json`` alone, the way each engine's
source builds its layers (written from those sources, independently of ``puzzle.model``): for every target
that the manifest says loads a child, the derived shapes must equal the safetensors'; for every other target
the derivation must fail or disagree (the refusal is warranted).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from puzzle.child.export import build_manifest, export_child, read_manifest
from puzzle.errors import ConfigError
from puzzle.library.space import default_space, expand
from puzzle.targets import TARGETS, offending_layers, restrict_space, unloadable_variants
from tests.child import small_hybrid, small_llama, tiny_library, tiny_parent_dir
from tests.child.block_kinds import KINDS, build

ALL = set(TARGETS)
EXPECTED_LOADABLE = {
    "fewer KV heads": ALL,
    "linear attention": {"transformers", "trtllm", "llama.cpp"},
    "no-op attention": ALL,
    "several FFN widths": {"transformers", "vllm"},  # 64 is off DeciLM's ffn_mult grid
    "linear FFN": {"transformers", "trtllm"},
    "no-op FFN": ALL,
    "tied embeddings": ALL,
    "untied embeddings": ALL,
    "llama3 rope scaling": ALL,
    "Mamba with fewer heads": {"transformers"},  # engines read Mamba sizes from the global config
    "no-op Mamba": ALL,
    "hybrid, tied embeddings": ALL,
}


def _grid(ffn_mult: float, hidden: int) -> int:
    return -(-int(2 * ffn_mult * hidden / 3) // 256) * 256


def _nas_layer(p: str, cfg: dict[str, Any], entry: dict[str, Any], target: str) -> dict[str, tuple[int, ...]]:
    h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    hd = cfg["head_dim"] if target in ("transformers", "vllm") else h // heads
    att, ffn = entry["attention"], entry["ffn"]
    out: dict[str, tuple[int, ...]] = {}
    if target == "llama.cpp":  # n_heads_in_group null: linear when replace_with_linear, else nothing
        a = "gqa" if att["n_heads_in_group"] is not None else "linear" if att["replace_with_linear"] else None
        f = "mlp" if ffn.get("ffn_mult") is not None else None
    elif target in ("vllm", "sglang"):  # no branch for replace_with_linear
        a = None if att["no_op"] else "gqa"
        f = None if ffn["no_op"] else "mlp"
    else:
        a = None if att["no_op"] else "linear" if att["replace_with_linear"] else "gqa"
        f = None if ffn["no_op"] else "linear" if ffn["replace_with_linear"] else "mlp"
    if a == "gqa":
        kv = heads // att["n_heads_in_group"]
        out |= {f"{p}self_attn.{n}_proj.weight": (s * hd, h) for n, s in (("q", heads), ("k", kv), ("v", kv))}
        out[f"{p}self_attn.o_proj.weight"] = (h, heads * hd)
    elif a == "linear":
        out[f"{p}self_attn.linear_attn.weight"] = (h, h)
    if a:
        out[f"{p}input_layernorm.weight"] = (h,)
    if f == "mlp":
        if target == "vllm":
            w = _grid(ffn["ffn_mult"], h) if "ffn_mult" in ffn else ffn["intermediate_size"]
        elif target == "transformers":
            w = ffn.get("intermediate_size") or _grid(ffn["ffn_mult"], h)
        else:
            w = _grid(ffn["ffn_mult"], h)
        out |= {
            f"{p}mlp.gate_proj.weight": (w, h),
            f"{p}mlp.up_proj.weight": (w, h),
            f"{p}mlp.down_proj.weight": (h, w),
        }
    elif f == "linear":
        out[f"{p}mlp.linear_mlp.weight"] = (h, h)
    if f:
        out[f"{p}post_attention_layernorm.weight"] = (h,)
    return out


def _puzzle_layer(p: str, cfg: dict[str, Any], entry: dict[str, Any], target: str) -> dict[str, tuple[int, ...]]:
    kind = entry["block_type"]
    per_layer = target == "transformers" or kind in ("attention", "mlp")  # engines: Mamba from the globals only
    c = {**cfg, **entry} if per_layer else cfg
    h = cfg["hidden_size"]
    out: dict[str, tuple[int, ...]] = {f"{p}norm.weight": (h,)}
    if kind == "mamba":
        H, P, G, N, K = c["mamba_num_heads"], c["mamba_head_dim"], c["n_groups"], c["ssm_state_size"], c["conv_kernel"]
        conv = H * P + 2 * G * N
        out |= {
            f"{p}mixer.in_proj.weight": (H * P + conv + H, h),
            f"{p}mixer.conv1d.weight": (conv, 1, K),
            f"{p}mixer.dt_bias": (H,),
            f"{p}mixer.A_log": (H,),
            f"{p}mixer.D": (H,),
            f"{p}mixer.norm.weight": (H * P,),
            f"{p}mixer.out_proj.weight": (h, H * P),
        }
        if c["use_conv_bias"]:
            out[f"{p}mixer.conv1d.bias"] = (conv,)
    elif kind == "attention":
        heads, kv, hd = c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
        out |= {f"{p}mixer.{n}_proj.weight": (s * hd, h) for n, s in (("q", heads), ("k", kv), ("v", kv))}
        out[f"{p}mixer.o_proj.weight"] = (h, heads * hd)
    elif kind == "mlp":
        w = c["intermediate_size"]
        out |= {f"{p}mixer.up_proj.weight": (w, h), f"{p}mixer.down_proj.weight": (h, w)}
    elif kind == "linear" and target == "transformers":
        name = "linear_attn" if entry["replaces"] == "attention" else "linear_mlp"
        out[f"{p}mixer.{name}.weight"] = (h, h)
    else:
        raise KeyError(f"{target} has no {kind!r} layer")
    return out


def expected_shapes(cfg: dict[str, Any], target: str) -> dict[str, tuple[int, ...]]:
    """Every tensor ``target`` builds for the export whose ``config.json`` is ``cfg`` (name -> shape)."""
    V, h = cfg["vocab_size"], cfg["hidden_size"]
    if cfg["model_type"] == "nemotron-nas":
        shapes = {"model.embed_tokens.weight": (V, h), "model.norm.weight": (h,)}
        if not cfg["tie_word_embeddings"]:
            shapes["lm_head.weight"] = (V, h)
        for i, entry in enumerate(cfg["block_configs"]):
            shapes |= _nas_layer(f"model.layers.{i}.", cfg, entry, target)
        return shapes
    assert cfg["model_type"] == "nemotron_h_puzzle"
    shapes = {"backbone.embeddings.weight": (V, h), "backbone.norm_f.weight": (h,), "lm_head.weight": (V, h)}
    for i, entry in enumerate(cfg["block_configs"]):
        shapes |= _puzzle_layer(f"backbone.layers.{i}.", cfg, entry, target)
    return shapes


def _stored_shapes(out: Path) -> dict[str, tuple[int, ...]]:
    from safetensors import safe_open

    with safe_open(out / "model.safetensors", "pt") as f:
        return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}  # noqa: SIM118


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> Path:
    return tiny_parent_dir(tmp_path_factory.mktemp("parent") / "parent")


def _manifest(n: int) -> dict[str, Any]:
    return build_manifest(parent_digest=None, library_digest=None, layers=["v"] * n)


@pytest.mark.parametrize("kind", list(KINDS))
def test_shapes_rederived_by_each_target_match_the_weights_exactly_when_the_table_says_it_loads(
    kind, tmp_path, parent
) -> None:
    model = build(KINDS[kind])
    out = export_child(model, tmp_path / "child", manifest=_manifest(model.arch.n_layers), tokenizer_dir=parent)
    cfg = json.loads((out / "config.json").read_text())
    stored = _stored_shapes(out)
    loadable = set(read_manifest(out)["loadable_by"])
    assert loadable == EXPECTED_LOADABLE[kind]
    if kind == "llama3 rope scaling":  # llama.cpp reads it at the top level only
        assert (
            cfg["original_max_position_embeddings"] == cfg["rope_parameters"]["original_max_position_embeddings"] == 8
        )
    for target in TARGETS:
        try:
            derived = expected_shapes(cfg, target)
        except (KeyError, TypeError) as exc:
            derived = {"error": (repr(exc),)}  # type: ignore[dict-item]
        if target in loadable:
            assert derived == stored, f"{kind}: {target} would build other tensors"
        else:
            assert derived != stored, f"{kind}: {target} is refused yet would load the same tensors"
            assert offending_layers(model.arch, target)


def test_export_for_a_target_that_cannot_load_the_child_names_every_offending_layer(tmp_path, parent) -> None:
    from dataclasses import replace

    from puzzle.arch import AttentionSpec, BlockSpec, FFNSpec

    arch = KINDS["linear attention"]
    arch = replace(arch, blocks=(*arch.blocks, BlockSpec(AttentionSpec.no_op(), FFNSpec.linear())))
    model = build(arch)
    with pytest.raises(ConfigError) as err:
        export_child(model, tmp_path / "child", manifest=_manifest(3), tokenizer_dir=parent, target="vllm")
    message = str(err.value)
    assert "cannot be loaded by vllm" in message
    assert "layer 1: linear attention" in message and "layer 2: linear FFN" in message
    assert "layer 0" not in message
    assert not (tmp_path / "child").exists()
    out = export_child(model, tmp_path / "child", manifest=_manifest(3), tokenizer_dir=parent, target="trtllm")
    manifest = read_manifest(out)
    assert manifest["target"] == "trtllm" and manifest["loadable_by"] == ["transformers", "trtllm"]


def test_unknown_target_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown target 'tgi'.*vllm"):
        offending_layers(small_llama(), "tgi")


def _wide_llama():
    from dataclasses import replace

    from puzzle.arch import FFNSpec

    arch = small_llama()
    return replace(arch, blocks=tuple(replace(b, ffn=FFNSpec(intermediate_size=1024)) for b in arch.blocks))


def test_restricted_spaces_expand_to_loadable_variants_only() -> None:
    wide = _wide_llama()  # FFN 1024: on DeciLM's grid, so every variant of a restricted space must load
    for target in TARGETS:
        for layer in expand(restrict_space(default_space("llama"), target, wide), wide):
            for block in layer.variants():
                assert not offending_layers(wide.with_block(layer.index, block), target), (target, block)
    sizes = {f.intermediate_size for layer in expand(restrict_space(default_space(), "sglang", wide), wide)
             for f in layer.ffn if f.kind == "mlp"}  # fmt: skip
    assert len(sizes) > 1 and all(s % 256 == 0 for s in sizes)
    assert any(s % 256 for layer in expand(default_space(), wide) for f in layer.ffn if f.kind == "mlp"
               for s in [f.intermediate_size])  # fmt: skip
    # FFN 128, under the grid: no smaller widths are built; the parent width stays (and is flagged, see below)
    small = small_llama()
    kept = {f.intermediate_size for layer in expand(restrict_space(default_space(), "sglang", small), small)
            for f in layer.ffn if f.kind == "mlp"}  # fmt: skip
    assert kept == {128}
    hybrid = small_hybrid()
    vllm = expand(restrict_space(default_space("nemotron_h"), "vllm", hybrid), hybrid)
    assert {m.n_heads for layer in vllm for m in layer.mamba if not m.is_no_op} == {hybrid.blocks[0].mamba.n_heads}
    assert all(a.kind != "linear" for layer in vllm for a in layer.attention)
    for layer in vllm:
        for block in layer.variants():
            assert not offending_layers(hybrid.with_block(layer.index, block), "vllm"), block
    full = expand(restrict_space(default_space("nemotron_h"), "transformers", hybrid), hybrid)
    assert len({m.n_heads for layer in full for m in layer.mamba if not m.is_no_op}) > 1


def test_unloadable_variants_of_a_real_library(tmp_path, parent) -> None:
    library = tiny_library(tmp_path / "lib", parent)  # FFN 128 and its 50 % prune (64): both off the 256 grid
    assert unloadable_variants(library, "vllm") == set()
    assert unloadable_variants(library, "transformers") == set()
    off_grid = unloadable_variants(library, "sglang")
    for layer in library.layers:
        for variant in layer.variants:
            spec = variant.spec
            has_mlp = spec is not None and spec.ffn.kind == "mlp"
            assert ((layer.index, variant.name) in off_grid) == has_mlp, variant.name


def test_library_build_accepts_only_known_targets(tmp_path, capsys) -> None:
    from puzzle.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["library", "build", "--parent", str(tmp_path), "--out", str(tmp_path / "o"), "--target", "tgi"])
    assert exit_.value.code == 2 and "llama.cpp" in capsys.readouterr().err
