"""The chunked SSD scan against its sequential reference twin."""

from __future__ import annotations

import pytest
import torch

from puzzle.model.ssd import _decay, ssd, ssd_chunked, ssd_ref, ssd_step


def _inputs(b: int, t: int, h: int, p: int, g: int, n: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, t, h, p, generator=gen)
    dt = torch.nn.functional.softplus(torch.randn(b, t, h, generator=gen))
    A = -torch.rand(h, generator=gen) * 2 - 0.1
    B = torch.randn(b, t, g, n, generator=gen)
    C = torch.randn(b, t, g, n, generator=gen)
    D = torch.randn(h, generator=gen)
    init = torch.randn(b, h, p, n, generator=gen)
    return x, dt, A, B, C, D, init


@pytest.mark.parametrize("chunk", [1, 3, 4, 16])
@pytest.mark.parametrize("length", [1, 7, 16, 21])
def test_chunked_equals_sequential(chunk: int, length: int) -> None:
    x, dt, A, B, C, D, init = _inputs(2, length, 4, 3, 2, 5)
    for initial in (None, init):
        y_ref, s_ref = ssd_ref(x, dt, A, B, C, chunk, D, initial)
        y, s = ssd_chunked(x, dt, A, B, C, chunk, D, initial)
        assert y.shape == (2, length, 4, 3) and s.shape == (2, 4, 3, 5)
        assert (y - y_ref).abs().max() < 1e-4
        assert (s - s_ref).abs().max() < 1e-4


def test_split_sequence_continues_from_state() -> None:
    """Scanning a prefix, then the rest from its final state, equals one scan of the whole."""
    x, dt, A, B, C, D, _ = _inputs(1, 19, 2, 4, 1, 3, seed=3)
    y_all, s_all = ssd_chunked(x, dt, A, B, C, 8, D)
    y1, s1 = ssd_chunked(x[:, :9], dt[:, :9], A, B[:, :9], C[:, :9], 8, D)
    y2, s2 = ssd_chunked(x[:, 9:], dt[:, 9:], A, B[:, 9:], C[:, 9:], 8, D, s1)
    assert (torch.cat([y1, y2], 1) - y_all).abs().max() < 1e-4
    assert (s2 - s_all).abs().max() < 1e-4


def test_step_is_one_token_of_the_scan() -> None:
    x, dt, A, B, C, D, init = _inputs(2, 1, 4, 3, 2, 5, seed=5)
    state = init.clone()
    y = ssd_step(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D)
    y_ref, s_ref = ssd_chunked(x, dt, A, B, C, 4, D, init)
    assert (y - y_ref[:, 0]).abs().max() < 1e-5
    assert (state - s_ref).abs().max() < 1e-5


def test_dispatch_uses_pure_pytorch_on_cpu() -> None:
    x, dt, A, B, C, D, _ = _inputs(1, 5, 2, 2, 1, 2)
    y, s = ssd(x, dt, A, B, C, 2, D)
    y_ref, s_ref = ssd_chunked(x, dt, A, B, C, 2, D)
    assert torch.equal(y, y_ref) and torch.equal(s, s_ref)


def test_decay_matrix() -> None:
    a_cum = torch.tensor([1.0, 3.0, 6.0]).log().cumsum(0)  # cumulative log-decays
    out = _decay(a_cum)
    assert torch.allclose(out, torch.tensor([[1.0, 0, 0], [3.0, 1, 0], [18.0, 6, 1]]))
