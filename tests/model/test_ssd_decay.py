"""The scan's decays stay out of fp32's underflow range, so its cost does not depend on dt (the latency a
library profiles with fresh weights holds for trained and pruned models whose dt is larger)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from puzzle.model.ssd import DECAY_FLOOR, _exp_decay, ssd_chunked

TINY = torch.finfo(torch.float32).tiny


class _Underflows(TorchDispatchMode):
    """Counts denormal values in the outputs of every op, and exp calls with arguments below fp32's underflow."""

    def __init__(self) -> None:
        super().__init__()
        self.denormal, self.deep_exp = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func is torch.ops.aten.exp.default:
            self.deep_exp += int((args[0] < -87.0).sum())
        out = func(*args, **(kwargs or {}))
        for o in out if isinstance(out, tuple | list) else [out]:
            if isinstance(o, torch.Tensor) and o.is_floating_point():
                self.denormal += int(((o != 0) & (o.abs() < TINY)).sum())
        return out


def _sequential(x, dt, A, B, C, D):  # type: ignore[no-untyped-def]
    """The recurrence with plain ``torch.exp`` in float64: an independent reference."""
    b, t, h, p = x.shape
    r = h // B.shape[2]
    state = torch.zeros(b, h, p, B.shape[-1], dtype=torch.float64)
    ys = []
    for i in range(t):
        Bh, Ch = B[:, i].double().repeat_interleave(r, 1), C[:, i].double().repeat_interleave(r, 1)
        decay = torch.exp(dt[:, i].double() * A.double())[..., None, None]
        state = state * decay + (dt[:, i].double()[..., None] * x[:, i].double())[..., None] * Bh[:, :, None]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch) + D.double()[:, None] * x[:, i].double())
    return torch.stack(ys, 1)


def test_large_steps_neither_underflow_nor_change_the_result() -> None:
    gen = torch.Generator().manual_seed(0)
    b, t, h, p, g, n = 2, 64, 4, 8, 2, 16
    x, B, C = (
        torch.randn(b, t, h, p, generator=gen),
        torch.randn(b, t, g, n, generator=gen),
        torch.randn(b, t, g, n, generator=gen),
    )
    A, D = -torch.arange(1.0, h + 1), torch.ones(h)
    dt = torch.rand(b, t, h, generator=gen) * 3  # trained-like steps: decays of exp(-12) per token and far below
    with _Underflows() as seen:
        y, _ = ssd_chunked(x, dt, A, B, C, 16, D)
    assert seen.deep_exp == 0 and seen.denormal == 0
    assert torch.allclose(y.double(), _sequential(x, dt, A, B, C, D), atol=1e-4, rtol=1e-4)


def test_exp_decay_is_exp_above_the_floor_and_zero_below() -> None:
    x = torch.tensor([0.0, -1.0, -59.0, DECAY_FLOOR - 0.5, -90.0, -1e4, -torch.inf])
    out = _exp_decay(x)
    assert torch.equal(out[:3], torch.exp(x[:3]))
    assert torch.equal(out[3:], torch.zeros(4))
    keep = torch.tensor([True, False, True, True, True, True, True])
    assert _exp_decay(x, keep)[1] == 0 and _exp_decay(x, keep)[0] == 1
