"""Exact 2-D Pareto DP: the best objective for every total of one cost, with every layer's partial staircase.

One cost x (smaller is better) and the objective w (minimised). After layers in ``order`` the state set is the
staircase of (X, W) pairs: X strictly ascending, W strictly decreasing, W_p = min { W(x) : X(x) <= X_p }.
    Transition  staircase S x variants j of the next layer  ->  staircase of { (X + x_j, W + w_j) }
The candidates are |variants| shifted copies of S, each already sorted by X, so a stable sort of their
concatenation (timsort: a merge of presorted runs) and a running minimum of W give the next staircase; of
equal-X candidates only the best survives. Back-pointers (one index per kept state and layer) rebuild the
architectures at the end.

Used twice by the frontier (``pareto_front.py``):
    * the relaxed frontier (no bound but the axis) is the final staircase;
    * run backwards over the layers, the staircase after layers i..L-1 is the suffix table
      T_i(m) = min { W of layers i..L-1 : their X <= m }, an exact lower bound on what those layers add to the
      objective when their cost share must fit in m (``pareto.run`` prunes with it).
A ``caps[s]`` drops states with W > caps[s] after step s. That keeps the result exact for every W <= the
final cap as long as each cap is at least the final cap minus the smallest W the remaining steps can add
(``suffix_caps``): a state above its cap can only end above the final cap.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Staircase:
    """Pareto set of (cost, objective): ``x`` strictly ascending, ``w`` strictly decreasing."""

    x: np.ndarray
    w: np.ndarray

    def best_within(self, budget: np.ndarray) -> np.ndarray:
        """min w over points with x <= budget (elementwise), +inf where no point fits."""
        idx = np.searchsorted(self.x, budget, side="right") - 1
        return np.where(idx >= 0, self.w[np.maximum(idx, 0)], np.inf)


@dataclass(frozen=True)
class StaircaseDP:
    """The final staircase, its back-pointers and (when asked) the staircase after every step."""

    final: Staircase
    order: np.ndarray  # the layers in the order they were added
    variants: tuple[np.ndarray, ...]  # per step: the layer's variant indices that took part
    back: tuple[np.ndarray, ...]  # per step: kept candidate index = variant position * previous size + parent
    sizes: tuple[int, ...]  # per step: the size of the staircase before it
    steps: tuple[Staircase, ...] = ()  # steps[s] = staircase after steps 0..s (when keep_steps)

    def choices(self, points: np.ndarray | None = None) -> np.ndarray:
        """(P, L) variant per layer of the given final points (default: all)."""
        state = np.arange(len(self.final.x)) if points is None else np.asarray(points, dtype=np.int64)
        out = np.zeros((len(state), len(self.order)), dtype=np.int64)
        for s in range(len(self.order) - 1, -1, -1):
            cand = self.back[s][state]
            out[:, self.order[s]] = self.variants[s][cand // self.sizes[s]]
            state = cand % self.sizes[s]
        return out


def staircase_dp(
    x: np.ndarray,
    w: np.ndarray,
    valid: np.ndarray,
    *,
    order: np.ndarray | None = None,
    caps: np.ndarray | None = None,
    keep_steps: bool = False,
) -> StaircaseDP:
    """The DP of the module docstring over (L, J) arrays ``x``, ``w`` (``valid`` marks real variants)."""
    n_layers = x.shape[0]
    order = np.arange(n_layers) if order is None else np.asarray(order)
    cur_x, cur_w = np.zeros(1), np.zeros(1)
    variants, back, sizes, steps = [], [], [], []
    for s, layer in enumerate(order):
        js = np.nonzero(valid[layer])[0]
        size = len(cur_x)
        cand_x = (x[layer, js][:, None] + cur_x[None, :]).ravel()
        cand_w = (w[layer, js][:, None] + cur_w[None, :]).ravel()
        if caps is not None:
            live = np.nonzero(cand_w <= caps[s])[0]
            cand_x, cand_w = cand_x[live], cand_w[live]
        else:
            live = None
        sel, cur_x, cur_w = staircase_points(cand_x, cand_w)
        if live is not None:
            sel = live[sel]
        variants.append(js)
        back.append(sel)
        sizes.append(size)
        if keep_steps:
            steps.append(Staircase(cur_x, cur_w))
    return StaircaseDP(Staircase(cur_x, cur_w), order, tuple(variants), tuple(back), tuple(sizes), tuple(steps))


def staircase_points(cx: np.ndarray, cw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept indices, x, w) of the 2-D non-dominated candidates (smaller x and w better), by x ascending."""
    if cx.size == 0:
        return np.zeros(0, dtype=np.int64), cx, cw
    order = np.argsort(cx, kind="stable")
    ws = cw[order]
    keep = np.empty(len(ws), dtype=bool)
    keep[0] = True
    np.less(ws[1:], np.minimum.accumulate(ws)[:-1], out=keep[1:])
    sel = order[keep]
    xs, ws = cx[sel], ws[keep]
    # Of equal-x survivors (W strictly decreasing among them) only the last is non-dominated.
    last = np.ones(len(xs), dtype=bool)
    np.not_equal(xs[:-1], xs[1:], out=last[:-1])
    if not last.all():
        sel, xs, ws = sel[last], xs[last], ws[last]
    return sel, xs, ws


def suffix_tables(x: np.ndarray, w: np.ndarray, valid: np.ndarray, cap: float = np.inf) -> tuple[Staircase, ...]:
    """``tables[i]`` = staircase of (X, W) over layers i..L-1, ``tables[L]`` = the point (0, 0).

    With a finite ``cap`` only W <= cap - (smallest W of layers 0..i-1) is kept in ``tables[i]``: enough for
    bounds that are compared with ``cap`` (a dropped value would exceed it anyway; see the module docstring).
    """
    n_layers = x.shape[0]
    order = np.arange(n_layers)[::-1]
    caps = suffix_caps(w, valid, order, cap) if np.isfinite(cap) else None
    dp = staircase_dp(x, w, valid, order=order, caps=caps, keep_steps=True)
    zero = Staircase(np.zeros(1), np.zeros(1))
    return (*(dp.steps[n_layers - 1 - i] for i in range(n_layers)), zero)


def suffix_caps(w: np.ndarray, valid: np.ndarray, order: np.ndarray, final_cap: float) -> np.ndarray:
    """caps[s] = final_cap - (smallest W the layers after step s can add), for ``staircase_dp(caps=...)``."""
    wmin = np.where(valid, w, np.inf).min(axis=1)[np.asarray(order)]
    after = np.zeros(len(wmin))
    after[:-1] = np.cumsum(wmin[::-1])[::-1][1:]
    return final_cap - after


__all__ = ["Staircase", "StaircaseDP", "staircase_dp", "staircase_points", "suffix_caps", "suffix_tables"]
