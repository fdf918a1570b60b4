"""Exact selection over the nested space: a block library of nested slices, and the MIP per budget.

For every layer of the nested parent and every candidate of ``ElasticGrid.layer_choices`` (a prefix of the
layer, or the layer skipped; only what the grid's deployment target loads), the slice is scored by replace-one-block (``puzzle.library.score``: the parent
with only that layer sliced, on held-out text; KL(parent || child) and friends) and costed like any library
variant (``puzzle.library.cost``: parameters, memory per scenario from the formula, and measured latency when
asked). The result is an ordinary ``BlockLibrary`` whose variant names are the choices (``a2.f128.m0``), so the
existing MIP (``puzzle.search.solve``) picks each budget's configuration: minimise the summed metric subject
to ``COST <= budget * parent`` (whole-model, non-block part included, as the search's ``%`` bounds are).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from puzzle.arch import BlockSpec
from puzzle.elastic.model import ElasticLM, slice_block_state
from puzzle.elastic.space import ElasticConfig, ElasticGrid, LayerChoice, budget_key
from puzzle.library import BlockLibrary, Layer, Scenario, Variant
from puzzle.library.cost import block_memory_mib, block_params, measure_block, non_block_memory_mib, non_block_params
from puzzle.library.score import score_blocks
from puzzle.model import Block, ModelContext

DEFAULT_COST = "num_params"


def _costs(
    elastic: ElasticLM,
    spec: BlockSpec,
    scenarios: Sequence[Scenario],
    measure: bool,
    device: str,
    repeats: int,
) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
    arch = elastic.arch
    params = block_params(arch, spec)
    per = {sc.name: {"memory_mib": block_memory_mib(arch, spec, sc, params)} for sc in scenarios}
    if measure:
        timing = measure_block(arch, spec, tuple(scenarios), device=device, warmup=1, repeats=repeats)
        for name, t in timing.items():
            per[name]["runtime_ms"] = t["runtime_ms"]
    return {"num_params": float(params)}, per


@torch.no_grad()
def nested_library(
    elastic: ElasticLM,
    grid: ElasticGrid,
    holdout: torch.Tensor,
    *,
    scenarios: Sequence[Scenario] = (),
    measure_latency: bool = False,
    device: str = "cpu",
    repeats: int = 5,
    batch: int = 8,
    on_layer: Callable[[int, int], None] | None = None,
) -> BlockLibrary:
    """Score and cost every nested slice of ``grid`` (``ElasticSpace.grid``) on held-out rows ``holdout`` (N, T + 1).

    Latency (``runtime_ms`` per scenario) is measured only with ``measure_latency``; memory always comes from
    the formula. ``on_layer(done, total)`` reports progress.
    """
    model = elastic.model.eval()
    arch = model.arch
    ids, targets = holdout[:, :-1], holdout[:, 1:]
    _, hidden = model(ids, return_hidden=True)
    ctx = ModelContext.from_arch(arch)
    cost_cache: dict[BlockSpec, tuple[dict[str, float], dict[str, dict[str, float]]]] = {}
    layers = []
    blocks: list[Block] = list(model.blocks)  # type: ignore[arg-type]  # a ModuleList of Block
    for i, parent_block in enumerate(blocks):
        choices = grid.layer_choices(i)
        candidates = []
        for choice in choices:
            spec, state = slice_block_state(parent_block, choice)
            block = Block(spec, ctx)
            block.load_state_dict({n: t.detach().clone() for n, t in state.items()}, strict=True)
            candidates.append((choice.name, block.eval()))
        metrics = score_blocks(model, i, hidden[i], targets, candidates, batch=batch)
        variants = []
        for choice, (name, block) in zip(choices, candidates, strict=True):
            if block.spec not in cost_cache:
                cost_cache[block.spec] = _costs(elastic, block.spec, scenarios, measure_latency, device, repeats)
            costs, per = cost_cache[block.spec]
            variants.append(
                Variant(
                    name=name,
                    is_parent=choice == LayerChoice.full(parent_block.spec),
                    spec=block.spec,
                    metrics=metrics[name],
                    costs=costs,
                    scenario_costs=per,
                )
            )
        layers.append(Layer(index=i, variants=tuple(variants)))
        if on_layer is not None:
            on_layer(i + 1, len(model.blocks))
    return BlockLibrary(
        layers=tuple(layers),
        scenarios={sc.name: sc for sc in scenarios},
        default_scenario=scenarios[0].name if scenarios else None,
        family=arch.family,
        hidden_size=arch.hidden_size,
        parent={"kind": "elastic-nested", "n_layers": arch.n_layers},
        non_block_costs={"num_params": float(non_block_params(arch))},
        non_block_scenario_costs={sc.name: {"memory_mib": non_block_memory_mib(arch, sc)} for sc in scenarios},
        notes={
            "elastic_grid": grid.to_dict(),
            "scored_tokens": int(targets.numel()),
            "non_block": "num_params and memory_mib include the embedding and head; runtime_ms is blocks only",
        },
    )


@dataclass(frozen=True)
class BudgetChoice:
    """One budget's configuration and what the MIP reported for it."""

    budget: float
    config: ElasticConfig
    constraint: str
    objective: float
    totals: dict[str, float]
    parent_totals: dict[str, float]
    solver: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget": self.budget,
            "layers": self.config.to_list(),
            "constraint": self.constraint,
            "objective": self.objective,
            "totals": dict(self.totals),
            "parent_totals": dict(self.parent_totals),
            "solver": self.solver,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BudgetChoice:
        return cls(
            budget=float(data["budget"]),
            config=ElasticConfig.from_list(data["layers"]),
            constraint=data["constraint"],
            objective=float(data["objective"]),
            totals=dict(data["totals"]),
            parent_totals=dict(data["parent_totals"]),
            solver=data["solver"],
        )


def choose_configs(
    library: BlockLibrary,
    budgets: Sequence[float],
    *,
    cost: str = DEFAULT_COST,
    objective: str = "kl_div",
    scenario: str | None = None,
    solver: str | None = None,
) -> dict[str, BudgetChoice]:
    """Per budget (key ``budget_key``): the MIP's configuration minimising ``objective`` with ``cost <= budget``."""
    from puzzle.search import solve

    out = {}
    for budget in budgets:
        constraint = f"{cost}<={100 * budget:g}%"
        sol = solve(library, objective, [constraint], scenario=scenario, solver=solver)
        config = ElasticConfig(tuple(LayerChoice.from_name(name) for name in sol.layers))
        out[budget_key(budget)] = BudgetChoice(
            budget=budget,
            config=config,
            constraint=constraint,
            objective=sol.objective,
            totals=dict(sol.totals),
            parent_totals=dict(sol.parent_totals),
            solver=sol.solver,
        )
    return out


def config_cost(library: BlockLibrary, config: ElasticConfig, key: str) -> tuple[float, float]:
    """Whole-model cost ``key`` (``NAME`` or ``NAME@SCENARIO``) of ``config`` and of the parent, the non-block
    part included, as the MIP's bounds count it."""
    name, scenario = library.resolve_cost_key(key)
    base = library.non_block_cost(name, scenario)
    chosen = zip(library.layers, config.layers, strict=True)
    total = base + sum(layer.variant(c.name).cost(name, scenario) for layer, c in chosen)
    parent = base + sum(layer.parent.cost(name, scenario) for layer in library.layers)
    return total, parent
