"""bench/quality.py's table and goal check read intervals from the report's per-sequence scores."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

import numpy as np

from bench.quality import goal_check, table
from puzzle.child.evaluate import SequenceScores


def _row(budget: float, method: str, nll: np.ndarray | None, tokens: np.ndarray) -> dict[str, Any]:
    row: dict[str, Any] = {"budget": budget, "method": method, "kl": 0.1, "measured_latency_ms": 10.0}
    row |= {"predicted_latency_ms": 10.0, "latency_error_pct": 0.0}
    if nll is None:
        return row | {"perplexity": 20.0}
    scores = SequenceScores(tokens, nll, kl=tokens * 0.1, agree=tokens * 0.8)
    return row | {"perplexity": scores.perplexity, "scores": scores.to_dict()}


def _result(rows: list[dict[str, Any]], parent_ppl: float) -> Any:
    return SimpleNamespace(rows=rows, parent_perplexity=parent_ppl, scenario="cpu-prefill")


def test_goal_check_calls_wins_and_ties_from_paired_intervals() -> None:
    rng = np.random.default_rng(0)
    tokens = np.full(40, 128.0)
    base = tokens * rng.gamma(4.0, 0.75, size=40)
    noise = lambda: rng.normal(0, 3.0, size=40)  # noqa: E731
    rows = [
        _row(1.0, "parent", base - tokens * 0.05, tokens),
        _row(1.0, "parent+tokens", base - tokens * 0.06 + noise(), tokens),
        _row(0.7, "puzzle+gkd", base, tokens),
        _row(0.7, "uniform+gkd", base + tokens * 0.05 + noise(), tokens),  # clearly worse: a win for us
        _row(0.7, "depth+gkd", base + noise(), tokens),  # no real difference: a tie
    ]
    parent_ppl = math.exp((base - tokens * 0.05).sum() / tokens.sum())
    text = "\n".join(goal_check(_result(rows, parent_ppl)))
    assert "70%: Puzzle+GKD" in text and ": TIE" in text
    assert "uniform+gkd win" in text and "depth+gkd tie" in text and "parent+tokens loss" in text
    assert "70 % goal ppl <= 1.10x parent: met" in text
    lines = table("tiny", _result(rows, parent_ppl))
    assert all("[" in line for line in lines[2:])  # every row shows its intervals
    rows[3] = _row(0.7, "uniform+gkd", base - tokens * 0.05 + noise(), tokens)
    assert ": LOSS" in "\n".join(goal_check(_result(rows, parent_ppl)))


def test_reports_without_scores_still_print() -> None:
    tokens = np.full(4, 8.0)
    rows = [_row(1.0, "parent", None, tokens), _row(0.7, "puzzle+gkd", None, tokens)]
    rows.append(_row(0.7, "depth+gkd", None, tokens))
    text = "\n".join(goal_check(_result(rows, 20.0)))
    assert "tie?" in text and "no interval" in text and "NO VERDICT" in text
    assert len(table("tiny", _result(rows, 20.0))) == 5
