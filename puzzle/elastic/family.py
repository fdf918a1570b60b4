"""What each budget of a built elastic folder is: its configuration, parameters, predicted cost and quality, and
its measured held-out perplexity.

Read from ``elastic.json`` (each budget's configuration, chosen by the MIP or by the router) and the nested library
the build scored (``select.nested_library``): a configuration's cost is the non-block part plus its layers' slices
under the family's cost key (``select.config_cost``, as the MIP bounds it), its predicted quality the sum of its
layers' replace-one-block metric (the family's objective, the MIP's too), ``params`` the parameters of the
child ``slice_budget`` writes for it, and ``perplexity`` that child's on the build's held-out rows (None in a
folder written before the build measured it, schema 1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from puzzle.elastic.build import read_summary
from puzzle.elastic.select import config_cost
from puzzle.elastic.space import ElasticConfig


@dataclass(frozen=True)
class FamilyMember:
    """One budget of an elastic family."""

    budget: float
    config: ElasticConfig
    params: int
    cost: float  # under the family's cost key, whole model
    cost_ratio: float  # cost / the parent's
    objective: float  # summed replace-one-block metric (lower is better)
    perplexity: float | None = None  # measured on the build's held-out rows (None: a schema-1 folder)

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "layers": self.config.to_list(),
            "params": self.params,
            "cost": self.cost,
            "cost_ratio": self.cost_ratio,
            "objective": self.objective,
            "perplexity": self.perplexity,
        }


def family(path: str | Path) -> tuple[FamilyMember, ...]:
    """Every budget of the elastic folder ``path``, largest first."""
    from puzzle.library import BlockLibrary

    summary = read_summary(path)
    library = BlockLibrary.load(Path(path) / summary["library"])
    members = []
    for entry in summary["budgets"].values():
        config = ElasticConfig.from_list(entry["layers"])
        cost, parent = config_cost(library, config, summary["cost"])
        params, _ = config_cost(library, config, "num_params")
        variants = [layer.variant(c.name) for layer, c in zip(library.layers, config.layers, strict=True)]
        members.append(
            FamilyMember(
                budget=float(entry["budget"]),
                config=config,
                params=round(params),
                cost=cost,
                cost_ratio=cost / parent,
                objective=sum(v.metrics[summary["objective"]] for v in variants),
                perplexity=entry.get("perplexity"),
            )
        )
    return tuple(sorted(members, key=lambda m: -m.budget))
