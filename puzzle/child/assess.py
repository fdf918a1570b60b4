"""Real evaluation of a child: held-out quality against its parent, and measured latency against prediction.

* perplexity: ``puzzle.child.evaluate.evaluate`` on held-out tokens (same packing as parent evaluation);
* KL to the parent: mean over the same predicted tokens of ``KL(p_parent || q_child)`` (nats / token;
  ``puzzle.child.evaluate.score_sequences`` gives it per sequence, with top-1 agreement, for intervals);
* latency: the assembled child measured per scenario with the builder's ``puzzle.library.cost.measure_model`` (same
  device, dtype and shapes the library's scenarios name), next to the library's prediction for the chosen
  variants (sum of their ``runtime_ms@scenario`` + the non-block cost), and the error in % of the prediction.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from puzzle.errors import ConfigError

if TYPE_CHECKING:
    import torch

    from puzzle.library import BlockLibrary


@dataclass(frozen=True)
class Latency:
    scenario: str
    measured_ms: float
    predicted_ms: float
    spread_ms: float

    @property
    def error_pct(self) -> float:
        return 100.0 * (self.measured_ms - self.predicted_ms) / self.predicted_ms

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "error_pct": self.error_pct}


def kl_to_parent(
    child: torch.nn.Module, parent: torch.nn.Module, tokens: np.ndarray, seq_len: int, *, batch_size: int = 8
) -> float:
    """Mean KL(parent || child) in nats per predicted token of ``tokens`` (packed like ``evaluate``)."""
    from puzzle.child.evaluate import score_sequences

    kl = score_sequences(child, tokens, seq_len, parent=parent, batch_size=batch_size).kl_mean
    assert kl is not None
    return kl


def predicted_cost(library: BlockLibrary, layers: Sequence[str], name: str, scenario: str | None) -> float:
    """Whole-model cost ``name`` of the variants ``layers`` as the library predicts it (blocks + non-block;
    ``puzzle.search.views.total``, the one whole-model totals function)."""
    from puzzle.search.request import Architecture
    from puzzle.search.views import total

    return total(library, Architecture.from_names(library, layers), name, scenario)


def measure_latency(
    child: torch.nn.Module,
    library: BlockLibrary,
    layers: Sequence[str],
    scenarios: Sequence[str] | None = None,
    *,
    device: str = "cpu",
    warmup: int = 3,
    repeats: int = 10,
) -> list[Latency]:
    """Measured vs predicted ``runtime_ms`` of ``child`` (built from ``layers``) in each of ``scenarios``."""
    from puzzle.library.cost import measure_model

    names = list(scenarios) if scenarios is not None else list(library.scenarios)
    unknown = [s for s in names if s not in library.scenarios]
    if unknown:
        raise ConfigError(f"unknown scenario(s) {', '.join(unknown)}; the library has {', '.join(library.scenarios)}")
    measured = measure_model(
        child, tuple(library.scenarios[s] for s in names), device=device, warmup=warmup, repeats=repeats
    )
    return [
        Latency(
            scenario=s,
            measured_ms=measured[s]["runtime_ms"],
            predicted_ms=predicted_cost(library, layers, "runtime_ms", s),
            spread_ms=measured[s]["runtime_spread_ms"],
        )
        for s in names
    ]
