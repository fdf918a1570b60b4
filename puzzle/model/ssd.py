"""The Mamba-2 state-space scan (SSD): a chunked pure-PyTorch form and its sequential reference twin.

Both take the *discretisation inputs*, already processed:

* ``x``  (B, T, H, P)  values per head,
* ``dt`` (B, T, H)     step sizes (softplus'd, biased, clamped by the caller),
* ``A``  (H,)          negative decay rates (``-exp(A_log)``),
* ``B``, ``C`` (B, T, G, N) input / output projections shared by the ``H / G`` heads of each group,
* ``D``  (H,) or None  skip connection, ``initial_state`` (B, H, P, N) or None,

and return ``(y (B, T, H, P), final_state (B, H, P, N))``. The recurrence, per head::

    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T        y_t = h_t C_t + D x_t

``ssd_chunked`` evaluates it as the SSD block decomposition: exact quadratic attention-like form inside
chunks of ``chunk_size`` and a linear recurrence over chunk states. Everything runs in fp32.
``ssd_kernel`` is mamba-ssm's Triton kernel when that package imports and the tensors are on CUDA.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

try:  # optional CUDA fast path; any failure to import means "not available"
    from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined as _mamba_chunk_scan_combined
except Exception:
    _mamba_chunk_scan_combined = None


def _heads(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Broadcast group tensors (..., G, N) to heads (..., H, N)."""
    return t.repeat_interleave(n_heads // t.shape[-2], dim=-2)


def ssd_step(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
) -> torch.Tensor:
    """One recurrence step, updating ``state`` (B, H, P, N) in place. x (B, H, P), dt (B, H), B/C (B, G, N)."""
    H = x.shape[1]
    xf, dt = x.float(), dt.float()
    decay = _exp_decay(dt * A.float())  # (B, H)
    Bh, Ch = _heads(B.float(), H), _heads(C.float(), H)  # (B, H, N)
    state.mul_(decay[..., None, None]).add_((dt[..., None] * xf)[..., None] * Bh[:, :, None, :])
    y = torch.einsum("bhpn,bhn->bhp", state, Ch)  # (B, H, P)
    if D is not None:
        y = y + D.float()[:, None] * xf
    return y.to(x.dtype)


def ssd_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequential reference: the recurrence one token at a time (``chunk_size`` is accepted and unused)."""
    b, t, h, p = x.shape
    n = B.shape[-1]
    state = initial_state.float().clone() if initial_state is not None else x.new_zeros(b, h, p, n, dtype=torch.float32)
    ys = [ssd_step(state, x[:, i], dt[:, i], A, B[:, i], C[:, i], D) for i in range(t)]
    return torch.stack(ys, dim=1), state  # (B, T, H, P), (B, H, P, N)


# Decays below exp(-60) (~1e-26, far under fp32's resolution next to the O(1) terms they are summed with) are
# exactly 0. On CPU, exp of an argument under about -87 takes a slow path (~200x: it underflows through the
# denormal range) and a denormal result slows every later matmul reading it (~400x), so with plain exp the
# scan's runtime grew with dt: 30 ms at dt 0.05, 124 ms at dt 1 for a tiny-hybrid block, and the latency a
# library profiles with fresh weights no longer held for trained or pruned models.
DECAY_FLOOR = -60.0


def _exp_decay(x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """``exp(x)``, exactly 0 where ``x < DECAY_FLOOR`` (and where ``keep`` is False), at a cost that does not grow
    as ``x`` gets more negative."""
    if keep is not None:
        x = x.masked_fill(~keep, DECAY_FLOOR - 1.0)
    return torch.exp(x.clamp(min=DECAY_FLOOR)).masked_fill(x < DECAY_FLOOR, 0.0)  # not in place: exp saves its output


def _decay(a_cum: torch.Tensor) -> torch.Tensor:
    """``exp(a_cum[i] - a_cum[j])`` for j <= i, else 0: the decay from position j to i. (..., L) -> (..., L, L)."""
    L = a_cum.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=a_cum.device).tril()
    return _exp_decay(a_cum[..., :, None] - a_cum[..., None, :], causal)


def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD in pure PyTorch; same contract as ``ssd_ref``.

    Heads stay grouped as (G, R = H / G) so that B and C are never copied per head: the C.B products are
    computed once per group. Shapes below: c chunks of l (= s) positions, h = (g r) heads.
    """
    b, t, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r, pad = h // g, (-t) % chunk_size
    xf = x.float()
    xdt = xf * dt.float()[..., None]  # (b, t, h, p)
    dA = dt.float() * A.float()  # (b, t, h)
    Bf, Cf = B.float(), C.float()
    if pad:
        xdt, Bf, Cf = (F.pad(v, (0, 0, 0, 0, 0, pad)) for v in (xdt, Bf, Cf))
        dA = F.pad(dA, (0, 0, 0, pad))
    c, L = (t + pad) // chunk_size, chunk_size
    xdt = xdt.view(b, c, L, g, r, p).permute(0, 1, 3, 4, 2, 5)  # (b, c, g, r, l, p)
    Bc = Bf.view(b, c, L, g, n).transpose(2, 3)  # (b, c, g, l, n)
    Cc = Cf.view(b, c, L, g, n).transpose(2, 3)  # (b, c, g, l, n)
    A_cum = dA.view(b, c, L, g, r).permute(0, 1, 3, 4, 2).cumsum(dim=-1)  # (b, c, g, r, l)

    # 1. within each chunk: y_l = sum_{s<=l} (C_l . B_s) exp(A_cum_l - A_cum_s) xdt_s
    CB = Cc @ Bc.transpose(-1, -2)  # (b, c, g, l, s), once per group
    y_diag = (CB[:, :, :, None] * _decay(A_cum)) @ xdt  # (b, c, g, r, l, p)

    # 2. each chunk's own contribution to the state at its end: sum_l exp(A_cum_end - A_cum_l) xdt_l B_l^T
    decay_to_end = _exp_decay(A_cum[..., -1:] - A_cum)  # (b, c, g, r, l)
    weighted = (xdt * decay_to_end[..., None]).transpose(-1, -2).reshape(b, c, g, r * p, L)  # (b, c, g, rp, l)
    chunk_states = (weighted @ Bc).view(b, c, h, p, n)  # (b, c, h, p, n)

    # 3. recurrence over chunks: the state entering each chunk, and the final state
    init = initial_state.float() if initial_state is not None else xdt.new_zeros(b, h, p, n)
    chunk_states = torch.cat([init[:, None], chunk_states], dim=1)  # (b, c+1, h, p, n)
    chunk_cum = F.pad(A_cum[..., -1].reshape(b, c, h).cumsum(dim=1).transpose(1, 2), (1, 0))  # (b, h, c+1)
    states = torch.einsum("bhzc,bchpn->bzhpn", _decay(chunk_cum), chunk_states)  # (b, c+1, h, p, n)
    states, final_state = states[:, :-1], states[:, -1]

    # 4. the entering state's contribution inside each chunk: exp(A_cum_l) C_l . state
    states = states.reshape(b, c, g, r * p, n).transpose(-1, -2)  # (b, c, g, n, rp)
    y_off = (Cc @ states).view(b, c, g, L, r, p).transpose(3, 4)  # (b, c, g, r, l, p)
    y = y_diag + y_off * _exp_decay(A_cum)[..., None]  # (b, c, g, r, l, p)

    y = y.permute(0, 1, 4, 2, 3, 5).reshape(b, c * L, h, p)[:, :t]  # (b, t, h, p)
    if D is not None:
        y = y + D.float()[:, None] * xf
    return y.to(x.dtype), final_state


def ssd_kernel_available(x: torch.Tensor) -> bool:
    return _mamba_chunk_scan_combined is not None and x.is_cuda


def ssd_kernel(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """mamba-ssm's fused chunked scan; same contract as ``ssd_ref`` (CUDA only, see ``ssd_kernel_available``)."""
    assert _mamba_chunk_scan_combined is not None
    y, final_state = _mamba_chunk_scan_combined(
        x, dt, A, B, C, chunk_size, D=D, initial_states=initial_state, return_final_states=True
    )
    return y, final_state


def ssd(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fastest available implementation: the mamba-ssm kernel on CUDA when installed, else ``ssd_chunked``."""
    scan = ssd_kernel if ssd_kernel_available(x) else ssd_chunked
    return scan(x, dt, A, B, C, chunk_size, D, initial_state)
