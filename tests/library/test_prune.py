from __future__ import annotations

import pytest
import torch

from puzzle.arch import AttentionSpec, FFNSpec, MambaSpec
from puzzle.library.prune import (
    ffn_channel_scores,
    init_subblock,
    mamba_head_scores,
    mamba_keep_heads,
    prune_mamba,
)
from puzzle.model import ModelContext, build_subblock

CTX = ModelContext(hidden_size=64)


def _module(spec, state=None, seed=0):
    torch.manual_seed(seed)
    module = build_subblock(spec, CTX)
    for p in module.parameters():  # break symmetry beyond the default init
        if p.dim() > 1:
            torch.nn.init.normal_(p, std=0.2)
    if state is not None:
        module.load_state_dict(state, strict=True)
    return module


def _x(T=32, B=4, seed=1):
    return torch.randn(B, T, CTX.hidden_size, generator=torch.Generator().manual_seed(seed))


def _mse(a, b):
    return (a - b).pow(2).mean().item()


def test_ffn_keeping_all_channels_is_the_parent_and_importance_beats_random() -> None:
    spec = FFNSpec(intermediate_size=256)
    parent, x = _module(spec), _x()
    full = _module(spec, init_subblock("ffn", parent, spec, spec, x))
    with torch.no_grad():
        assert torch.equal(full(x), parent(x))
        half = FFNSpec(intermediate_size=64)
        child = _module(half, init_subblock("ffn", parent, spec, half, x))
        scores = ffn_channel_scores(parent, x)
        rand_keep = torch.randperm(256, generator=torch.Generator().manual_seed(0))[:64].sort().values
        rand = _module(half)
        rand.gate_proj.weight.copy_(parent.gate_proj.weight[rand_keep])
        rand.up_proj.weight.copy_(parent.up_proj.weight[rand_keep])
        rand.down_proj.weight.copy_(parent.down_proj.weight[:, rand_keep])
        assert scores.shape == (256,)
        assert _mse(child(x), parent(x)) < _mse(rand(x), parent(x))


@pytest.mark.parametrize("method", ["mean", "importance"])
def test_kv_head_reduction(method) -> None:
    spec = AttentionSpec(n_heads=8, n_kv_heads=4, head_dim=8)
    parent, x = _module(spec), _x()
    with torch.no_grad():
        same = _module(spec, init_subblock("attention", parent, spec, AttentionSpec(**{**spec.to_dict()}), x))
        assert torch.equal(same(x), parent(x))
        from puzzle.library.prune import prune_kv_heads

        kept = _module(spec, prune_kv_heads(parent, x, 4, method))  # merging groups of one changes nothing
        assert torch.allclose(kept(x), parent(x), atol=1e-6)
        for n_kv in (2, 1):
            child_spec = AttentionSpec(n_heads=8, n_kv_heads=n_kv, head_dim=8)
            child = _module(child_spec, init_subblock("attention", parent, spec, child_spec, x, kv_method=method))
            assert child.k_proj.weight.shape == (n_kv * 8, 64)
            assert torch.equal(child.q_proj.weight, parent.q_proj.weight)
            assert 0 < _mse(child(x), parent(x)) < _mse(torch.zeros_like(x), parent(x)) * 4


@pytest.mark.parametrize(
    "kind,spec",
    [("attention", AttentionSpec(n_heads=8, n_kv_heads=2, head_dim=8)), ("ffn", FFNSpec(intermediate_size=128))],
)
def test_least_squares_linear_beats_weight_product_on_calibration_data(kind, spec) -> None:
    parent, x = _module(spec), _x(T=64)
    lin = AttentionSpec.linear() if kind == "attention" else FFNSpec.linear()
    with torch.no_grad():
        target = parent(x)
        fitted = _module(lin, init_subblock(kind, parent, spec, lin, x, linear_method="lstsq"))
        product = _module(lin, init_subblock(kind, parent, spec, lin, x, linear_method="product"))
        assert _mse(fitted(x), target) < _mse(product(x), target)
        assert _mse(fitted(x), target) < _mse(torch.zeros_like(target), target)


MAMBA = MambaSpec(n_heads=8, head_dim=8, n_groups=2, d_state=8, chunk_size=8)


def test_mamba_nothing_pruned_is_the_parent_mixer_exactly() -> None:
    parent, x = _module(MAMBA), _x()
    child = _module(MAMBA, prune_mamba(parent, x, MAMBA.n_heads))
    with torch.no_grad():
        assert torch.equal(child(x), parent(x))


def test_mamba_pruning_is_group_aware_and_slices_every_tensor() -> None:
    parent, x = _module(MAMBA), _x()
    with torch.no_grad():  # silence heads 1, 2 (group 0) and 4, 7 (group 1): their x (and conv bias) -> 0, so y = 0
        P = MAMBA.head_dim
        for h in (1, 2, 4, 7):
            parent.in_proj.weight[MAMBA.d_inner + h * P : MAMBA.d_inner + (h + 1) * P] = 0
            parent.conv1d.bias[h * P : (h + 1) * P] = 0
        scores = mamba_head_scores(parent, x)
        assert scores[[1, 2, 4, 7]].max() == 0 < scores[[0, 3, 5, 6]].min()
        assert mamba_keep_heads(scores, 2, 4).tolist() == [0, 3, 5, 6]
        child_spec = MambaSpec(**{**MAMBA.__dict__, "n_heads": 4})
        state = prune_mamba(parent, x, 4)
        child = _module(child_spec, state)  # strict load: every tensor has the child's shape
        d_in = 4 * P
        keep = torch.tensor([0, 3, 5, 6])
        chans = (keep[:, None] * P + torch.arange(P)).flatten()
        assert torch.equal(child.in_proj.weight[:d_in], parent.in_proj.weight[chans])  # z
        assert torch.equal(child.in_proj.weight[-4:], parent.in_proj.weight[-8:][keep])  # dt
        assert torch.equal(child.A_log, parent.A_log[keep]) and torch.equal(child.D, parent.D[keep])
        assert torch.equal(child.out_proj.weight, parent.out_proj.weight[:, chans])
        assert torch.equal(child.norm.weight, parent.norm.weight[chans])
        assert child.norm.group_size == d_in // 2
        assert child(x).shape == x.shape
    with pytest.raises(ValueError, match="evenly"):
        mamba_keep_heads(scores, 2, 3)
