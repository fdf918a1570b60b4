"""Bootstrap intervals, paired comparisons and verdicts on data with known distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from puzzle.child.stats import (
    Interval,
    bootstrap_interval,
    normal_interval,
    paired_bootstrap,
    sequences_for_precision,
    verdict,
)
from puzzle.errors import DataError


def _sequences(n: int, seed: int, tokens: int = 64, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-sequence NLL sums: each sequence has its own difficulty (the dominant spread), tokens add noise."""
    rng = np.random.default_rng(seed)
    difficulty = rng.gamma(4.0, 0.75, size=n)  # mean 3 nats / token
    nll = np.array([rng.normal(d + shift, 1.5, size=tokens).sum() for d in difficulty])
    return nll, np.full(n, float(tokens))


def test_bootstrap_agrees_with_the_normal_approximation() -> None:
    nll, tokens = _sequences(200, seed=1)
    boot, normal = bootstrap_interval(nll, tokens, resamples=4000), normal_interval(nll, tokens)
    assert boot.estimate == pytest.approx(normal.estimate) == pytest.approx(nll.sum() / tokens.sum())
    assert boot.low == pytest.approx(normal.low, abs=0.1 * normal.half_width)
    assert boot.high == pytest.approx(normal.high, abs=0.1 * normal.half_width)


def test_the_95_percent_interval_covers_the_true_mean_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(0)
    hits = 0
    for trial in range(200):
        values = rng.exponential(2.0, size=60)  # true mean 2, skewed
        hits += bootstrap_interval(values, resamples=500, seed=trial).contains(2.0)
    assert 0.88 <= hits / 200 <= 0.99


def test_identical_models_tie_with_an_interval_around_zero() -> None:
    nll, tokens = _sequences(32, seed=2)
    diff = paired_bootstrap(nll, nll.copy(), tokens)
    assert diff.contains(0.0) and verdict(diff) == "tie"
    rng = np.random.default_rng(3)
    noisy = nll + rng.normal(0.0, 2.0, size=len(nll))  # the same model up to noise: no real difference
    assert verdict(paired_bootstrap(noisy, nll, tokens)) == "tie"


def test_a_clearly_worse_model_loses_and_the_better_one_wins() -> None:
    nll, tokens = _sequences(32, seed=4)
    rng = np.random.default_rng(5)
    worse = nll + tokens * 0.05 + rng.normal(0.0, 2.0, size=len(nll))  # +0.05 nats / token
    assert verdict(paired_bootstrap(worse, nll, tokens)) == "loss"
    diff = paired_bootstrap(nll, worse, tokens)
    assert verdict(diff) == "win" and diff.contains(-0.05)


def test_pairing_cancels_the_sequences_difficulty() -> None:
    nll, tokens = _sequences(64, seed=6)
    rng = np.random.default_rng(7)
    other = nll + tokens * 0.02 + rng.normal(0.0, 1.0, size=len(nll))
    paired = paired_bootstrap(other, nll, tokens)
    separate = bootstrap_interval(other, tokens).half_width + bootstrap_interval(nll, tokens).half_width
    assert paired.half_width < separate / 5
    assert verdict(paired) == "loss"  # while the separate intervals overlap
    assert bootstrap_interval(other, tokens).low < bootstrap_interval(nll, tokens).high


def test_sequences_for_one_percent_perplexity() -> None:
    pilot, pilot_tokens = _sequences(32, seed=8)
    n = sequences_for_precision(pilot, pilot_tokens, rel=0.01)
    assert n > 32
    nll, tokens = _sequences(n, seed=9)
    ppl = bootstrap_interval(nll, tokens).map(math.exp)
    assert ppl.high / ppl.estimate - 1 < 0.0125 and 1 - ppl.low / ppl.estimate < 0.0125
    assert sequences_for_precision(pilot, pilot_tokens, rel=0.01, available=40) == 40  # capped at the split


def test_verdict_and_input_checks() -> None:
    assert verdict(Interval(-0.2, -0.3, -0.1)) == "win"
    assert verdict(Interval(0.2, 0.1, 0.3)) == "loss"
    assert verdict(Interval(0.0, -0.1, 0.1)) == "tie"
    with pytest.raises(DataError, match="same sequences"):
        paired_bootstrap(np.ones(3), np.ones(4))
    with pytest.raises(DataError, match="at least 2"):
        bootstrap_interval(np.ones(1))
