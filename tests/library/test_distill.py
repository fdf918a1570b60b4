from __future__ import annotations

import torch

from puzzle.arch import AttentionSpec, FFNSpec
from puzzle.library.distill import (
    BLDConfig,
    bld_task,
    build_block,
    cache_hidden_states,
    compose_state,
    load_hidden,
    load_subblocks,
    normalized_mse,
    write_parent_blocks,
)
from puzzle.model import CausalLM
from tests.library import small_llama


def _parent(seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM(small_llama(n_layers=2)).eval()


def _ids(n: int = 12, T: int = 32) -> torch.Tensor:
    return torch.randint(0, 128, (n, T), generator=torch.Generator().manual_seed(0))


def test_normalized_mse_is_one_for_zero_and_zero_for_exact() -> None:
    t = torch.randn(3, 5, 8)
    assert normalized_mse(torch.zeros_like(t), t).item() == 1.0
    assert normalized_mse(t, t).item() == 0.0


def test_parent_activations_are_computed_once_per_layer(tmp_path) -> None:
    model, ids = _parent(), _ids()
    calls = [0] * len(model.blocks)
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda *_a, i=i: calls.__setitem__(i, calls[i] + 1))
    directory = cache_hidden_states(model, ids, tmp_path / "act", batch=len(ids))
    assert calls == [1, 1]  # one parent forward per layer
    cache_hidden_states(model, ids, tmp_path / "act", batch=len(ids))
    assert calls == [1, 1]  # cached: nothing recomputed
    with torch.no_grad():
        h0 = load_hidden(directory, 0)
        assert torch.equal(h0, model.embed(ids))
        assert torch.allclose(load_hidden(directory, 1), model.blocks[0](h0), atol=1e-6)
        assert torch.allclose(model.head(load_hidden(directory, 2)), model(ids), atol=1e-5)


def test_bld_lowers_nmse_and_stores_composable_subblocks(tmp_path) -> None:
    model, ids = _parent(), _ids(n=64)
    work = tmp_path / "work"
    write_parent_blocks(model, work)
    act = cache_hidden_states(model, ids, tmp_path / "act")
    arch = model.arch
    cfg = BLDConfig(tokens=8192, lr=3e-4, batch=4).to_dict()
    small_ffn = FFNSpec(intermediate_size=64)
    ffn = bld_task(str(work), str(act), 1, {"ffn": small_ffn.to_dict()}, cfg)
    assert ffn["steps"] == 8192 // (4 * 32)
    assert ffn["train_loss_last"] < ffn["train_loss_first"]
    assert ffn["nmse_final"] < ffn["nmse_init"] < 1.0
    attn = bld_task(str(work), str(act), 1, {"attention": AttentionSpec.linear().to_dict()}, cfg)
    assert attn["nmse_final"] < attn["nmse_init"]
    # compose the two decoupled units into one block and load it strictly
    spec = arch.blocks[1].__class__(attention=AttentionSpec.linear(), ffn=small_ffn)
    trained = load_subblocks(work, {**ffn["files"], **attn["files"]})
    state = compose_state(model.blocks[1].state_dict(), arch.blocks[1], spec, trained)
    block = build_block(arch, spec, state)
    with torch.no_grad():
        out = block(load_hidden(act, 1))
    assert out.shape == load_hidden(act, 2).shape
