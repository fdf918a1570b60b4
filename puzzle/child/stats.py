"""Uncertainty of held-out measurements: bootstrap intervals over sequences, paired comparisons, verdicts.

Per-token losses are correlated within a sequence, so every interval here resamples whole *sequences* (a
block bootstrap): a statistic is the token-weighted mean ``sum(values) / sum(tokens)`` over the resampled
sequences. Perplexity is ``exp`` of the mean loss, so its interval is ``exp`` of the loss interval.

* ``bootstrap_interval(values, tokens)``: percentile interval of the token-weighted mean;
* ``paired_bootstrap(a, b, tokens)``: interval of ``mean(a) - mean(b)`` with the *same* resampled
  sequences for both models, which cancels the sequences' own difficulty (much tighter than two separate
  intervals);
* ``normal_interval``: the delta-method normal approximation of the same ratio estimator (a cross-check);
* ``verdict(diff)``: ``"win"`` / ``"loss"`` only when the paired interval excludes 0, else ``"tie"``;
* ``sequences_for_precision``: how many sequences make the perplexity's interval ``+-rel`` wide.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from puzzle.errors import ConfigError, DataError

Verdict = Literal["win", "tie", "loss"]
Z95 = 1.959963984540054


@dataclass(frozen=True)
class Interval:
    """A point estimate and its ``level`` confidence interval [low, high]."""

    estimate: float
    low: float
    high: float
    level: float = 0.95

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def map(self, fn: Callable[[float], float]) -> Interval:
        """The interval of a monotone increasing function of the statistic (e.g. ``math.exp``)."""
        return Interval(fn(self.estimate), fn(self.low), fn(self.high), self.level)

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level}


def _check(values: np.ndarray, tokens: np.ndarray, level: float) -> None:
    if values.ndim != 1 or values.shape != tokens.shape:
        raise DataError(f"per-sequence values {values.shape} and token counts {tokens.shape} must be equal 1-D arrays")
    if len(values) < 2:
        raise DataError(f"an interval needs at least 2 sequences, got {len(values)}")
    if not 0 < level < 1:
        raise ConfigError(f"confidence level must be in (0, 1), got {level}")


def _weighted_means(values: np.ndarray, tokens: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """``resamples`` bootstrap replicates of ``sum(values) / sum(tokens)``, resampling sequences."""
    rng = np.random.default_rng(seed)
    n = len(values)
    out = np.empty(resamples)
    step = max(1, 2_000_000 // n)  # bound the index matrix to ~16 MB
    for start in range(0, resamples, step):
        idx = rng.integers(0, n, size=(min(step, resamples - start), n))
        out[start : start + len(idx)] = values[idx].sum(axis=1) / tokens[idx].sum(axis=1)
    return out


def bootstrap_interval(
    values: np.ndarray,
    tokens: np.ndarray | None = None,
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap interval of ``sum(values) / sum(tokens)`` over sequences (``tokens``: 1 each)."""
    values = np.asarray(values, dtype=np.float64)
    tokens = np.ones_like(values) if tokens is None else np.asarray(tokens, dtype=np.float64)
    _check(values, tokens, level)
    reps = _weighted_means(values, tokens, resamples, seed)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(reps, [tail, 100 - tail])
    return Interval(float(values.sum() / tokens.sum()), float(low), float(high), level)


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray,
    tokens: np.ndarray | None = None,
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Interval:
    """Interval of ``mean(a) - mean(b)`` (token-weighted), both models scored on the same sequences.

    ``a`` and ``b`` are per-sequence sums (e.g. NLL in nats) of two models over the same sequences, in the
    same order; the same resampled sequences enter both means."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise DataError(f"paired comparison needs the same sequences for both models, got {a.shape} and {b.shape}")
    return bootstrap_interval(a - b, tokens, level=level, resamples=resamples, seed=seed)


def normal_interval(values: np.ndarray, tokens: np.ndarray | None = None, *, level: float = 0.95) -> Interval:
    """Normal (delta-method) interval of the ratio estimator ``sum(values) / sum(tokens)`` over sequences."""
    from statistics import NormalDist

    values = np.asarray(values, dtype=np.float64)
    tokens = np.ones_like(values) if tokens is None else np.asarray(tokens, dtype=np.float64)
    _check(values, tokens, level)
    n = len(values)
    mean = values.sum() / tokens.sum()
    residual = values - mean * tokens  # linearisation of the ratio
    se = math.sqrt(float((residual**2).sum()) / (n - 1) / n) / float(tokens.mean())
    z = NormalDist().inv_cdf(0.5 + level / 2)
    return Interval(float(mean), float(mean - z * se), float(mean + z * se), level)


def verdict(diff: Interval) -> Verdict:
    """``diff`` is the interval of (ours - rival) for a lower-is-better measure (loss, KL): ``"win"`` when it
    lies wholly below 0, ``"loss"`` wholly above, ``"tie"`` when it contains 0 (not significant)."""
    if diff.high < 0:
        return "win"
    if diff.low > 0:
        return "loss"
    return "tie"


def sequences_for_precision(
    pilot_losses: np.ndarray,
    pilot_tokens: np.ndarray,
    *,
    rel: float = 0.01,
    available: int | None = None,
    level: float = 0.95,
) -> int:
    """Sequences needed so the perplexity's ``level`` interval is within ``+-rel`` (relative), estimated from
    a pilot evaluation's per-sequence NLL sums and token counts; capped at ``available`` (the whole split).

    The perplexity interval is ``exp(loss +- z se)``, so ``+-rel`` needs ``z se <= log(1 + rel)`` with
    ``se = sd / sqrt(n)`` (``sd``: the per-sequence spread of the delta-method linearisation)."""
    from statistics import NormalDist

    if not rel > 0:
        raise ConfigError(f"relative precision must be positive, got {rel}")
    losses, tokens = np.asarray(pilot_losses, dtype=np.float64), np.asarray(pilot_tokens, dtype=np.float64)
    _check(losses, tokens, level)
    mean = losses.sum() / tokens.sum()
    sd = float(np.std(losses - mean * tokens, ddof=1)) / float(tokens.mean())
    z = NormalDist().inv_cdf(0.5 + level / 2)
    needed = max(2, math.ceil((z * sd / math.log1p(rel)) ** 2))
    return needed if available is None else min(needed, available)
