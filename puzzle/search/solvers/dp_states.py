"""Exact dynamic programming over layers on Pareto sets, with dominance and bound pruning.

Notation (see ``problem.py``): layer i, variant j, objective w[i,j] (minimised), cost rows c[k,i,j],
block-level bounds lo[k] <= sum c[k] <= hi[k] (with tolerance tol[k]).

State after layers 0..i: a partial assignment, summarised by (C, W) = its partial costs (K,) and objective.
    Transition   (C, W) x variant j of layer i+1  ->  (C + c[:,i+1,j], W + w[i+1,j])
    Answer       min W over final states with lo - tol <= C <= hi + tol

Pruning (each rule removes only states that cannot lead to a better feasible answer, so the result is exact):
    (P1) capacity   C[k] + sum_{l>i} min_j c[k,l,j] > hi[k] + tol[k]   (or the lower-bound twin)
    (P2) dominance  state a dominates b if W_a <= W_b and C_a is at least as good as C_b on every bounded row
                    (smaller for upper-bounded rows, larger for lower-bounded rows, equal for rows with both);
                    a completion of b is then also a completion of a at no more cost. The filter is exact
                    (every dominated state goes) for up to two such dims, by a sweep in W order against the
                    2-D staircase of the earlier states; with more dims, for sets of up to _EXACT_LIMIT states
                    (pairwise), else only duplicates go (removing *some* dominated states keeps exactness).
    (P3) bound      W + LB_i(C) > UB + eps, UB the objective of a known feasible architecture and LB the
                    Lagrangian bound of the remaining layers for multipliers nu = lam - mu >= / <= 0:
                        LB_i(C) = sum_{l>i} min_j (w[l,j] + nu . c[:,l,j]) - lam . (hi + tol - C) + mu . (lo - tol - C)
                    valid for every completion that meets the bounds (weak duality); nu comes from coordinate
                    ascent on the root Lagrangian dual (any nu is valid; a good one prunes more).
    (P4) suffix     W + T_{i+1}(room - coef . C) > UB + eps, T the exact staircase of the remaining layers on
                    one combination of rows (``SuffixBound``): the exact version of (P3) for one row.
    UB comes from a first pass that keeps only the ``beam`` states with the smallest W + LB (a heuristic
    that usually finds the optimum); the second pass is exact.

Candidates are formed on the (variant, state) grid and the bounds (P1), (P3) are tested there, separably,
before any cost vector is gathered; states are stored as one index per layer into that grid (back-pointers).

The frontier (``pareto_front.py``) runs the same engine with the axis row kept in the dominance test.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from puzzle.search.pareto.staircase import Staircase, staircase_points

_EXACT_LIMIT = 1024  # states up to which the pairwise (exact) dominance test is used
_SWEEP_BLOCK = 256  # rows per block of the exact two-dimension sweep


@dataclass(frozen=True)
class Arrays:
    """Padded per-layer data: ``w`` (L, J) with +inf padding, ``c`` (L, J, K), ``valid`` (L, J)."""

    w: np.ndarray
    c: np.ndarray
    valid: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    tol: np.ndarray


def pad(weights: tuple[np.ndarray, ...], costs: tuple[np.ndarray, ...], lo, hi, tol) -> Arrays:
    n_layers, width = len(weights), max(len(w) for w in weights)
    k = costs[0].shape[1] if costs else 0
    w = np.full((n_layers, width), np.inf)
    c = np.zeros((n_layers, width, k))
    valid = np.zeros((n_layers, width), dtype=bool)
    for i, (wi, ci) in enumerate(zip(weights, costs, strict=True)):
        w[i, : len(wi)] = wi
        c[i, : len(wi)] = ci
        valid[i, : len(wi)] = True
    return Arrays(w, c, valid, np.asarray(lo, float), np.asarray(hi, float), np.asarray(tol, float))


def _bounds_used(a: Arrays) -> tuple[np.ndarray, np.ndarray]:
    return np.isfinite(a.hi), np.isfinite(a.lo)


def dual_value(a: Arrays, nu: np.ndarray) -> tuple[float, np.ndarray]:
    """Lagrangian dual g(nu) over all layers and the cost totals of its minimising assignment."""
    has_hi, has_lo = _bounds_used(a)
    lam, mu = np.where(has_hi, np.maximum(nu, 0), 0.0), np.where(has_lo, np.maximum(-nu, 0), 0.0)
    scores = np.where(a.valid, a.w + a.c @ nu, np.inf)
    j = scores.argmin(axis=1)
    rows = np.arange(len(j))
    value = scores[rows, j].sum() - lam @ np.where(has_hi, a.hi + a.tol, 0) + mu @ np.where(has_lo, a.lo - a.tol, 0)
    return float(value), a.c[rows, j].sum(axis=0)


def dual_ascent(a: Arrays, rounds: int = 3, steps: int = 30) -> np.ndarray:
    """Multipliers nu (K,) that (approximately) maximise the Lagrangian dual, by coordinate bisection.

    For row k, g is concave piecewise linear in nu[k]; its slope is ``total_k - hi_k`` for nu[k] > 0 and
    ``total_k - lo_k`` for nu[k] < 0, so bisection on the sign of the slope finds the maximum along k.
    Coordinate ascent can stall at a kink, so it starts once from each row (K cycles) and keeps the best.
    """
    k = a.c.shape[2]
    if k == 0:
        return np.zeros(0)
    best, best_g = np.zeros(k), dual_value(a, np.zeros(k))[0]
    for first in range(k):
        nu = np.zeros(k)
        order = [(first + r) % k for r in range(k)]
        for _ in range(rounds if k > 1 else 1):
            for r in order:
                nu = _line_max(a, nu, r, steps)
        g = dual_value(a, nu)[0]
        if g > best_g:
            best, best_g = nu, g
    return best


def _line_max(a: Arrays, nu: np.ndarray, r: int, steps: int) -> np.ndarray:
    """nu with coordinate r moved to the maximum of g along it (bisection on the slope's sign)."""
    has_hi, has_lo = _bounds_used(a)
    valid_c = a.c[:, :, r][a.valid]
    w_valid = a.w[a.valid]
    scale = max((float(w_valid.max() - w_valid.min()) + 1e-12) / (float(np.ptp(valid_c)) or 1.0), 1e-300)
    current = dual_value(a, nu)[0]
    best = nu
    for sign, used, bound in ((1.0, has_hi[r], a.hi[r] + a.tol[r]), (-1.0, has_lo[r], a.lo[r] - a.tol[r])):
        if not used:
            continue
        trial = nu.copy()
        trial[r] = 0.0
        _, totals = dual_value(a, trial)
        if sign * (totals[r] - bound) <= 0:  # the row holds without a penalty in this direction
            if dual_value(a, trial)[0] > current:
                best, current = trial, dual_value(a, trial)[0]
            continue
        low, high = 0.0, scale
        for _ in range(60):  # bracket: a penalty large enough to satisfy the row
            trial[r] = sign * high
            _, totals = dual_value(a, trial)
            if sign * (totals[r] - bound) <= 0:
                break
            low, high = high, high * 4
        for _ in range(steps):
            mid = 0.5 * (low + high)
            trial[r] = sign * mid
            _, totals = dual_value(a, trial)
            if sign * (totals[r] - bound) > 0:
                low = mid
            else:
                high = mid
        for m in (low, high):
            cand = _with(nu, r, sign * m)
            g = dual_value(a, cand)[0]
            if g > current:
                best, current = cand, g
    return best


def _with(nu: np.ndarray, r: int, value: float) -> np.ndarray:
    out = nu.copy()
    out[r] = value
    return out


def suffix_bounds(a: Arrays, nus: np.ndarray) -> np.ndarray:
    """``S[i, m] = sum_{l >= i} min_j (w[l,j] + nus[m] . c[:,l,j])`` for i = 0..L (S[L] = 0)."""
    scores = np.where(a.valid[:, :, None], a.w[:, :, None] + a.c @ nus.T, np.inf)  # (L, J, M)
    per_layer = scores.min(axis=1)  # (L, M)
    out = np.zeros((a.w.shape[0] + 1, nus.shape[0]))
    out[:-1] = np.cumsum(per_layer[::-1], axis=0)[::-1]
    return out


def dominance_dims(lo: np.ndarray, hi: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Matrix T (K, D): transformed costs C @ T are all 'smaller is better' (lower rows negated, both duplicated)."""
    cols = []
    k = len(lo)
    for r in range(k):
        upper, lower = np.isfinite(hi[r]) or r == axis, np.isfinite(lo[r])
        if upper:
            cols.append(np.eye(k)[r])
        if lower:
            cols.append(-np.eye(k)[r])
    return np.array(cols).T if cols else np.zeros((k, 0))


def nondominated(w: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Indices of states kept after dominance filtering, sorted by objective.

    ``w`` (S,), ``d`` (S, D) transformed costs (smaller is better). Exact (every dominated state and all but
    one of equal states removed) for D <= 2 (D = 2: ``_sweep_2d``) and for sets of up to ``_EXACT_LIMIT``
    states in any D (pairwise); for larger sets with D > 2 only exact duplicates are removed. Never removes a
    non-dominated state.
    """
    n, dims = d.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if dims == 1:
        return staircase_points(d[:, 0], w)[0]  # by the cost ascending, W strictly improving
    # By W (stable: the expansion's runs are already W-sorted); ties in W also by the costs, so that an
    # earlier state is never dominated by a later one.
    order = np.argsort(w, kind="stable")
    ws = w[order]
    if dims == 0:
        return order[:1]
    if np.any(ws[1:] == ws[:-1]):
        order = np.lexsort([d[:, r] for r in range(dims - 1, -1, -1)] + [w])
    ds = d[order]
    if n <= _EXACT_LIMIT:
        # t is dominated by an earlier (W-sorted) state that is no worse in every dim.
        le = ds[:, None, 0] <= ds[None, :, 0]
        for r in range(1, dims):
            le &= ds[:, None, r] <= ds[None, :, r]
        le &= _upper_mask(n)
        return order[~le.any(axis=0)]
    if dims == 2:
        return order[_sweep_2d(ds)]
    # Exact duplicates of the preceding state (same costs; W no better) are dominated.
    keep = np.ones(n, dtype=bool)
    keep[1:] = np.any(ds[1:] != ds[:-1], axis=1)
    return order[keep]


def _sweep_2d(ds: np.ndarray, block: int = _SWEEP_BLOCK) -> np.ndarray:
    """Exact: True where no earlier row of ``ds`` (S, 2) is <= in both columns (rows sorted by W).

    Blocks of rows in order: a row is first tested against the 2-D staircase of all earlier blocks
    (searchsorted: the staircase point with the largest d0 <= the row's has the smallest d1 among them);
    the few that pass are tested pairwise against the earlier passing rows of their block (a row dominated
    by a failing row is dominated by what made that one fail) and then join the staircase.
    """
    n = len(ds)
    keep = np.zeros(n, dtype=bool)
    st0, st1 = np.zeros(0), np.zeros(0)
    for start in range(0, n, block):
        blk = ds[start : start + block]
        if st0.size:
            k = np.searchsorted(st0, blk[:, 0], side="right") - 1
            idx = np.nonzero((k < 0) | (st1[np.maximum(k, 0)] > blk[:, 1]))[0]
            sub = blk[idx]
        else:
            idx, sub = np.arange(len(blk)), blk
        if idx.size > 1:
            le = (sub[:, None, 0] <= sub[None, :, 0]) & (sub[:, None, 1] <= sub[None, :, 1]) & _upper_mask(idx.size)
            free = ~le.any(axis=0)
            idx, sub = idx[free], sub[free]
        if idx.size:
            keep[start + idx] = True
            _, st0, st1 = staircase_points(np.concatenate([st0, sub[:, 0]]), np.concatenate([st1, sub[:, 1]]))
    return keep


_MASK = np.triu(np.ones((max(_EXACT_LIMIT, _SWEEP_BLOCK),) * 2, dtype=bool), k=1)
_MASK.flags.writeable = False


def _upper_mask(n: int) -> np.ndarray:
    """Boolean (n, n) with True where row < column."""
    if n <= len(_MASK):
        return _MASK[:n, :n]
    return np.triu(np.ones((n, n), dtype=bool), k=1)


@dataclass(frozen=True)
class SuffixBound:
    """(P4) an exact bound of the remaining layers on one combination of rows.

    Every final state that matters has ``coef . C <= room`` (e.g. ``coef`` = e_k and ``room`` = hi_k + tol_k
    for an upper-bounded row, -e_k and -(lo_k - tol_k) for a lower-bounded one). ``tables[i]`` is the
    staircase of (coef . c, w) over layers i..L-1 (``staircase.suffix_tables``; ``tables[L]`` = the point
    (0, 0)), so the layers after i add at least ``tables[i+1].best_within(room - coef . C)`` to W: exact for
    that one combination, where (P3) is its convex (Lagrangian) relaxation.
    """

    coef: np.ndarray
    room: float
    tables: tuple[Staircase, ...]


class StateLimit(RuntimeError):
    """The state sets grew past ``max_states`` (the caller falls back to a MIP backend)."""


class DeadlineReached(RuntimeError):
    """The DP passed its deadline (``time.monotonic()``); ``bound`` is the best objective bound known then."""

    def __init__(self, bound: float | None = None) -> None:
        super().__init__("deadline reached")
        self.bound = bound


def check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise DeadlineReached()


@dataclass
class DPResult:
    choices: np.ndarray | None  # (L,) variant per layer, or None when infeasible
    value: float
    states: int  # largest state set seen
    final_c: np.ndarray | None = None  # every final state's costs (frontier mode)
    final_w: np.ndarray | None = None
    final_choices: np.ndarray | None = None  # (S, L) when requested


def run(
    a: Arrays,
    *,
    ub: float = np.inf,
    beam: int | None = None,
    nus: np.ndarray | None = None,
    axis: int | None = None,
    keep_all: bool = False,
    max_states: int | None = None,
    suffix: Sequence[SuffixBound] = (),
    deadline: float | None = None,
) -> DPResult:
    """The DP described in the module docstring. ``keep_all`` returns every final non-dominated state.

    ``suffix`` adds (P4) (see ``SuffixBound``) to the bound pruning; like (P3) it needs a finite ``ub``.
    ``deadline`` (``time.monotonic()``) raises ``DeadlineReached`` between layers once passed.
    (Over 80 lines: one pass of the layer loop reads best as one piece; its steps are the numbered rules.)
    """
    n_layers, _, k = a.c.shape
    has_hi, has_lo = _bounds_used(a)
    hi_t = np.where(has_hi, a.hi + a.tol, np.inf)
    lo_t = np.where(has_lo, a.lo - a.tol, -np.inf)
    cmin = np.where(a.valid[:, :, None], a.c, np.inf).min(axis=1)  # (L, K)
    cmax = np.where(a.valid[:, :, None], a.c, -np.inf).max(axis=1)
    rem_min = np.zeros((n_layers + 1, k))
    rem_max = np.zeros((n_layers + 1, k))
    rem_min[:-1] = np.cumsum(cmin[::-1], axis=0)[::-1]
    rem_max[:-1] = np.cumsum(cmax[::-1], axis=0)[::-1]
    tmat = dominance_dims(a.lo, a.hi, axis)
    use_bound = nus is not None and nus.size > 0 and (np.isfinite(ub) or beam is not None)
    if use_bound:
        sb = suffix_bounds(a, nus)  # (L+1, M)
        lam = np.where(has_hi[None, :], np.maximum(nus, 0), 0.0)  # (M, K)
        mu = np.where(has_lo[None, :], np.maximum(-nus, 0), 0.0)
        hi_f = np.where(has_hi, hi_t, 0.0)
        lo_f = np.where(has_lo, lo_t, 0.0)
    eps = 1e-9 * max(1.0, float(np.abs(np.where(a.valid, a.w, 0)).max(axis=1).sum()))

    bounded = [r for r in range(k) if has_hi[r] or has_lo[r]]
    c_states = np.zeros((1, k))
    w_states = np.zeros(1)
    trail: list[tuple[np.ndarray, np.ndarray, int]] = []  # per layer: variants, kept candidates, state count
    largest = 1
    for i in range(n_layers):
        check_deadline(deadline)
        js = np.nonzero(a.valid[i])[0]
        cj, wj, n_s = a.c[i, js], a.w[i, js], len(w_states)
        # Candidates on the (variant, state) grid, variant-major: each variant's row is a shifted copy of the
        # (sorted) states, i.e. a sorted run. The bounds are tested on the grid before costs are gathered.
        ok = np.ones((len(js), n_s), dtype=bool)
        for r in bounded:  # (P1) capacity
            row = cj[:, r, None] + c_states[None, :, r]
            if has_hi[r]:
                ok &= row + rem_min[i + 1, r] <= hi_t[r]
            if has_lo[r]:
                ok &= row + rem_max[i + 1, r] >= lo_t[r]
        score = None
        if use_bound:
            # (P3) Lagrangian bound of the layers still to come; separable into a state and a variant part.
            key_s = w_states[:, None] + c_states @ (lam - mu).T  # (S, M)
            key_j = wj[:, None] + cj @ (lam - mu).T + (sb[i + 1] - lam @ hi_f + mu @ lo_f)[None, :]
            score = (key_j[:, None, :] + key_s[None, :, :]).max(axis=2)
            ok &= score <= ub + eps
        flat = np.nonzero(ok.ravel())[0]
        pos, st = np.divmod(flat, n_s)
        c_new, w_new = cj[pos] + c_states[st], wj[pos] + w_states[st]
        if suffix and np.isfinite(ub) and flat.size:
            for bound in suffix:  # (P4)
                room = bound.room - c_new @ bound.coef
                # A hair of slack: summation error may only weaken the bound, never prune a completion.
                room += 1e-12 * max(1.0, abs(bound.room))
                alive = np.nonzero(w_new + bound.tables[i + 1].best_within(room) <= ub + eps)[0]
                flat, c_new, w_new = flat[alive], c_new[alive], w_new[alive]
        if flat.size == 0:
            return DPResult(None, np.inf, largest)
        # (P2) dominance
        keep = nondominated(w_new, c_new @ tmat)
        if beam is not None and keep.size > beam and score is not None:
            s = score.ravel()[flat[keep]]
            keep = keep[np.argsort(s, kind="stable")[:beam]]
        c_states, w_states = c_new[keep], w_new[keep]
        trail.append((js, flat[keep], n_s))
        largest = max(largest, len(w_states))
        if max_states is not None and largest > max_states:
            raise StateLimit(f"more than {max_states} states at layer {i}")

    feasible = np.all(c_states <= hi_t, axis=1) & np.all(c_states >= lo_t, axis=1)
    if not feasible.any():
        return DPResult(None, np.inf, largest)
    if keep_all:
        final = np.nonzero(feasible)[0]
        return DPResult(
            None,
            float(w_states[final].min()),
            largest,
            final_c=c_states[final],
            final_w=w_states[final],
            final_choices=_backtrack(trail, final),
        )
    best = int(np.nonzero(feasible)[0][np.argmin(w_states[feasible])])
    return DPResult(_backtrack(trail, np.array([best]))[0], float(w_states[best]), largest)


def prune_variants(a: Arrays, axis: int | None = None) -> Arrays:
    """Drop variants dominated within their own layer (same test as (P2)); exactness is unaffected."""
    tmat = dominance_dims(a.lo, a.hi, axis)
    valid = np.zeros_like(a.valid)
    for i in range(a.w.shape[0]):
        js = np.nonzero(a.valid[i])[0]
        valid[i, js[nondominated(a.w[i, js], a.c[i, js] @ tmat)]] = True
    return Arrays(np.where(valid, a.w, np.inf), a.c, valid, a.lo, a.hi, a.tol)


def _backtrack(trail: list[tuple[np.ndarray, np.ndarray, int]], final: np.ndarray) -> np.ndarray:
    """(P, L) variant per layer of the given final states, from the per-layer kept candidate indices."""
    out = np.zeros((len(final), len(trail)), dtype=np.int64)
    state = np.asarray(final, dtype=np.int64)
    for i in range(len(trail) - 1, -1, -1):
        js, kept, n_s = trail[i]
        pos, state = np.divmod(kept[state], n_s)
        out[:, i] = js[pos]
    return out
