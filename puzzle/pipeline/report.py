"""The demo's report: rows of evaluated children, ``report.json``, a text table and ``frontier.html``."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from puzzle.files import write_text


@dataclass(frozen=True)
class Row:
    budget: float  # fraction of the parent's predicted latency (1.0 for the parent itself)
    method: str  # parent, puzzle, puzzle+gkd, uniform, uniform+gkd, depth, depth+gkd, greedy, greedy+gkd
    perplexity: float | None
    kl: float | None
    measured_latency_ms: float | None
    predicted_latency_ms: float | None
    layers: tuple[str, ...] = ()
    library_objective: float | None = None
    note: str = ""
    perplexity_ci: tuple[float, float] | None = None  # 95 % bootstrap interval over held-out sequences
    kl_ci: tuple[float, float] | None = None
    top1_agreement: float | None = None  # share of tokens whose most likely next token is the parent's
    scores: dict[str, Any] | None = None  # per-sequence scores (SequenceScores.to_dict()): paired comparisons

    @classmethod
    def evaluated(cls, budget: float, method: str, record: dict[str, Any], **fields: Any) -> Row:
        """A row from an evaluation record (``SequenceScores.summary()`` fields + latency + ``scores``)."""
        ci = record.get("perplexity_ci")
        kl_ci = record.get("kl_ci")
        return cls(
            budget,
            method,
            record["perplexity"],
            record.get("kl"),
            record.get("measured_ms"),
            record.get("predicted_ms"),
            perplexity_ci=None if ci is None else (ci[0], ci[1]),
            kl_ci=None if kl_ci is None else (kl_ci[0], kl_ci[1]),
            top1_agreement=record.get("top1_agreement"),
            scores=record.get("scores"),
            **fields,
        )

    @property
    def latency_error_pct(self) -> float | None:
        if self.measured_latency_ms is None or not self.predicted_latency_ms:
            return None
        return 100.0 * (self.measured_latency_ms - self.predicted_latency_ms) / self.predicted_latency_ms

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "layers": list(self.layers), "latency_error_pct": self.latency_error_pct}

    def comparison(self, other: Row) -> Any:
        """The paired comparison of this row's perplexity with ``other``'s over the same sequences (None without
        scores): ``.verdict`` is ``win`` only when this row is significantly better, ``tie`` when not significant."""
        from puzzle.child.evaluate import SequenceScores, compare

        if not self.scores or not other.scores:
            return None
        return compare(SequenceScores.from_dict(self.scores), SequenceScores.from_dict(other.scores), "nll")


@dataclass(frozen=True)
class DemoResult:
    out_dir: str
    scenario: str
    parent_perplexity: float
    rows: tuple[Row, ...]
    frontier: list[dict[str, Any]]
    exports: dict[str, str]
    timings_s: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir,
            "scenario": self.scenario,
            "parent_perplexity": self.parent_perplexity,
            "rows": [r.to_dict() for r in self.rows],
            "frontier": self.frontier,
            "exports": self.exports,
            "timings_s": self.timings_s,
        }


def write_report(path: Path, result: DemoResult) -> None:
    """``result`` as ``report.json`` (written atomically)."""
    write_text(path, json.dumps(result.to_dict(), indent=1) + "\n")


def format_table(rows: Sequence[Row]) -> str:
    """The report as a fixed-width text table."""
    lines = [
        f"{'budget':>6}  {'method':<13} {'perplexity':>10} {'95 % interval':>17} {'KL':>8} {'top-1':>6} "
        f"{'measured ms':>11} {'predicted ms':>12} {'err %':>6}"
    ]
    for r in rows:

        def num(v: float | None, fmt: str) -> str:
            return format(v, fmt) if v is not None else "-"

        ci = f"[{r.perplexity_ci[0]:.2f}, {r.perplexity_ci[1]:.2f}]" if r.perplexity_ci else "-"
        lines.append(
            f"{r.budget:>6.0%}  {r.method:<13} {num(r.perplexity, '10.3f')} {ci:>17} {num(r.kl, '8.4f')} "
            f"{num(r.top1_agreement, '6.3f')} {num(r.measured_latency_ms, '11.3f')} "
            f"{num(r.predicted_latency_ms, '12.3f')} {num(r.latency_error_pct, '+6.1f')}"
            + (f"  {r.note}" if r.note else "")
        )
    return "\n".join(lines)


def write_frontier_html(
    path: Path, frontier: list[dict[str, Any]], rows: Sequence[Row], parent_latency: float, scenario: str
) -> None:
    """Two panels: the library frontier (predicted latency vs summed KL) with every method's pick on it, and
    measured latency vs held-out perplexity of the evaluated children. plotly.js is inlined (no CDN)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=(
            f"Pareto frontier ({scenario}): predicted latency vs summed block KL",
            "Evaluated children: measured latency vs held-out perplexity",
        ),
    )
    pts = sorted((p for p in frontier if p.get("runtime_ms") is not None), key=lambda p: p["runtime_ms"])
    fig.add_trace(
        go.Scatter(
            x=[100 * p["runtime_ms"] / parent_latency for p in pts],
            y=[p["objective"] for p in pts],
            mode="lines+markers",
            name="frontier (MIP)",
        ),
        row=1,
        col=1,
    )
    for method in sorted({r.method for r in rows}):
        mine = [r for r in rows if r.method == method and r.perplexity is not None and r.predicted_latency_ms]
        if not mine:
            continue
        if not method.endswith("+gkd") and method != "parent":
            fig.add_trace(
                go.Scatter(
                    x=[100 * r.predicted_latency_ms / parent_latency for r in mine],
                    y=[r.library_objective for r in mine],
                    mode="markers",
                    name=f"{method} pick",
                    marker={"size": 10, "symbol": "diamond"},
                ),
                row=1,
                col=1,
            )
        fig.add_trace(
            go.Scatter(
                x=[r.measured_latency_ms for r in mine],
                y=[r.perplexity for r in mine],
                mode="markers",
                name=method,
                text=[f"budget {r.budget:.0%}" for r in mine],
                marker={"size": 9},
            ),
            row=1,
            col=2,
        )
    fig.update_xaxes(title_text="predicted latency (% of parent)", row=1, col=1)
    fig.update_yaxes(title_text="sum of replace-one-block KL", row=1, col=1)
    fig.update_xaxes(title_text="measured latency (ms)", row=1, col=2)
    fig.update_yaxes(title_text="held-out perplexity", type="log", row=1, col=2)
    fig.update_layout(title="Puzzle demo", height=520, width=1200)
    write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))
