"""The heterogeneous CausalLM itself: structure, per-block access, cached decode, nemotron-nas round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from puzzle.arch import ArchSpec, AttentionSpec, BlockSpec, FFNSpec, MambaSpec, from_block_configs
from puzzle.model import Block, CausalLM, ModelContext, build_subblock, hf_format, load_pretrained, save_pretrained
from puzzle.model.attention import Attention, LinearAttention
from puzzle.model.ffn import LinearFFN, ReLU2MLP, SwiGLU
from puzzle.model.mamba2 import Mamba2
from tests.model.tiny import HIDDEN, hetero_arch, hybrid_arch, tokens


@pytest.fixture(scope="module")
def hetero() -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(hetero_arch()).eval()


def test_registry_builds_each_kind_and_nothing_for_no_op() -> None:
    ctx = ModelContext(hidden_size=HIDDEN)
    assert isinstance(build_subblock(AttentionSpec(n_heads=4, n_kv_heads=2, head_dim=8), ctx), Attention)
    assert isinstance(build_subblock(AttentionSpec.linear(), ctx), LinearAttention)
    assert isinstance(build_subblock(FFNSpec(intermediate_size=8), ctx), SwiGLU)
    assert isinstance(build_subblock(FFNSpec(intermediate_size=8, activation="relu2"), ctx), ReLU2MLP)
    assert isinstance(build_subblock(FFNSpec.linear(), ctx), LinearFFN)
    assert isinstance(build_subblock(MambaSpec(n_heads=2, head_dim=4, d_state=4), ctx), Mamba2)
    for spec in (AttentionSpec.no_op(), FFNSpec.no_op(), MambaSpec.no_op()):
        assert build_subblock(spec, ctx) is None
    empty = Block(BlockSpec(), ctx)
    assert list(empty.parameters()) == []
    x = torch.randn(1, 3, HIDDEN)
    assert torch.equal(empty(x), x)


def test_no_op_and_linear_blocks_have_only_their_parameters(hetero: CausalLM) -> None:
    linear_attn, linear_ffn, mamba_only = hetero.blocks[2], hetero.blocks[3], hetero.blocks[4]
    assert sorted(n for n, _ in linear_attn.named_parameters()) == ["attn.linear_attn.weight", "attn_norm.weight"]
    assert sorted(n for n, _ in linear_ffn.named_parameters()) == ["ffn.linear_mlp.weight", "ffn_norm.weight"]
    assert mamba_only.attn is None and mamba_only.ffn is None and mamba_only.mamba is not None
    assert hetero.blocks[1].attn.k_proj.weight.shape == (8, HIDDEN)  # one KV head
    assert hetero.blocks[1].ffn.down_proj.weight.shape == (HIDDEN, 16)


def test_hidden_states_are_block_inputs_and_outputs(hetero: CausalLM) -> None:
    ids = tokens(length=9)
    with torch.no_grad():
        logits, hidden = hetero(ids, return_hidden=True)
        assert len(hidden) == len(hetero.blocks) + 1
        assert torch.equal(hidden[0], hetero.embed(ids))
        for i, block in enumerate(hetero.blocks):  # a block fed the parent's input gives its output
            assert torch.allclose(block(hidden[i]), hidden[i + 1], atol=1e-6)
        assert torch.allclose(hetero.head(hidden[-1]), logits, atol=1e-6)
        assert torch.equal(hetero(ids), logits)


@pytest.mark.parametrize("schedule", [[1] * 12, [5, 1, 1, 4, 1], [3, 9]])
def test_hetero_cached_decode_equals_full_forward(hetero: CausalLM, schedule: list[int]) -> None:
    ids = tokens(length=sum(schedule))
    with torch.no_grad():
        full = hetero(ids)
        cache, out, start = hetero.new_cache(), [], 0
        for n in schedule:
            out.append(hetero(ids[:, start : start + n], cache=cache))
            start += n
    assert (torch.cat(out, 1) - full).abs().max() < 1e-4


def test_hetero_save_reload_round_trip(hetero: CausalLM, tmp_path: Path) -> None:
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text('{"version": "1.0"}')
    out = save_pretrained(hetero, tmp_path / "child", tokenizer_dir=tmp_path / "tok")
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "nemotron-nas" and config["architectures"] == ["DeciLMForCausalLM"]
    assert hf_format(hetero.arch) == "nemotron-nas"
    assert [b["attention"]["n_heads_in_group"] for b in config["block_configs"][:3]] == [2, 4, None]
    assert config["block_configs"][2]["attention"]["replace_with_linear"] is True
    assert (out / "tokenizer.json").read_text() == '{"version": "1.0"}'
    reloaded = load_pretrained(out)
    assert reloaded.arch == hetero.arch
    ids = tokens(length=10)
    with torch.no_grad():
        assert torch.equal(reloaded(ids), hetero(ids))
    # save again over it (replace), from the reloaded model: the tokenizer follows from its source dir
    save_pretrained(reloaded, tmp_path / "again")
    assert (tmp_path / "again" / "tokenizer.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["again", "child", "tok"]  # no temp dirs left


def test_block_configs_without_puzzle_arch(hetero: CausalLM, tmp_path: Path) -> None:
    """A released-style nemotron-nas config (no ``puzzle_arch``) loads from ``block_configs`` alone."""
    arch = ArchSpec(
        vocab_size=hetero.arch.vocab_size,
        hidden_size=HIDDEN,
        blocks=from_block_configs(
            [
                {"attention": {"n_heads_in_group": 2}, "ffn": {"ffn_mult": 1.5}},
                {"attention": {"replace_with_linear": True}, "ffn": {"no_op": True}},
                {"attention": {"no_op": True}, "ffn": {"replace_with_linear": True}},
            ],
            hidden_size=HIDDEN,
            n_heads=4,
            head_dim=8,
        ),
    )
    model = CausalLM(arch).eval()
    save_pretrained(model, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    del config["puzzle_arch"]
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    reloaded = load_pretrained(tmp_path / "m")
    assert reloaded.arch == arch
    ids = tokens(length=6)
    with torch.no_grad():
        assert torch.equal(reloaded(ids), model(ids))


def test_sharded_save_and_load(hetero: CausalLM, tmp_path: Path) -> None:
    save_pretrained(hetero, tmp_path / "s", max_shard_bytes=20_000)
    shards = sorted(p.name for p in (tmp_path / "s").glob("*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "s" / "model.safetensors.index.json").is_file()
    ids = tokens(length=5)
    with torch.no_grad():
        assert torch.equal(load_pretrained(tmp_path / "s")(ids), hetero(ids))


def test_training_step_reaches_every_parameter() -> None:
    torch.manual_seed(0)
    model = CausalLM(hetero_arch()).train()
    ids = tokens(length=8)
    logits = model(ids[:, :-1])
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert abs(loss.item() - torch.log(torch.tensor(float(model.arch.vocab_size))).item()) < 0.5  # sane init


def test_tied_embeddings_share_one_tensor(tmp_path: Path) -> None:
    arch = hetero_arch()
    tied = CausalLM(ArchSpec.from_dict({**arch.to_dict(), "tie_embeddings": True}))
    assert tied.lm_head.weight is tied.embed_tokens.weight
    save_pretrained(tied, tmp_path / "t")
    reloaded = load_pretrained(tmp_path / "t")
    assert reloaded.lm_head.weight is reloaded.embed_tokens.weight


def test_bfloat16_forward_and_decode(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = CausalLM(hetero_arch()).eval()
    save_pretrained(model, tmp_path / "m")
    bf16 = load_pretrained(tmp_path / "m", dtype=torch.bfloat16)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    ids = tokens(length=7)
    with torch.no_grad():
        full32, full16 = model(ids), bf16(ids)
        cache = bf16.new_cache()
        steps = torch.cat([bf16(ids[:, t : t + 1], cache=cache) for t in range(ids.shape[1])], 1)
    assert full16.dtype == torch.bfloat16
    assert (full16.float() - full32).abs().max() < 0.05
    assert (steps.float() - full16.float()).abs().max() < 0.05


def test_tied_hybrid_is_loaded_identically_by_transformers(tmp_path: Path) -> None:
    import transformers

    model = CausalLM(hybrid_arch(tie=True)).eval()
    assert hf_format(model.arch) == "nemotron_h"
    save_pretrained(model, tmp_path / "h")
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "h").eval()
    ids = tokens(length=5)
    with torch.no_grad():
        assert (theirs(ids).logits - model(ids)).abs().max() < 1e-4
