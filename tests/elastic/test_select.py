"""Exact selection: a library of nested slices scored replace-one-block, and the MIP's configuration per budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from puzzle.elastic.distill import ElasticTrainConfig, budget_weights, draw_budgets, train_elastic
from puzzle.elastic.model import ElasticLM, n_params
from puzzle.elastic.nest import nest_parent
from puzzle.elastic.select import choose_configs, nested_library
from puzzle.elastic.space import ElasticSpace, LayerChoice, config_arch
from puzzle.library.cost import default_scenarios
from puzzle.targets import loadable_by
from tests.elastic.test_nest import _ids, _model

BUDGETS = (0.8, 0.6, 0.4)


def _elastic(name: str) -> tuple[ElasticLM, torch.Tensor]:
    model = _model(name)
    nest_parent(model, _ids(model, seed=2))
    holdout = _ids(model, batch=4, length=17, seed=3)
    return ElasticLM(model), holdout


@pytest.mark.parametrize("name", ["llama", "hybrid"])
def test_mip_configurations_respect_each_budget(name: str) -> None:
    elastic, holdout = _elastic(name)
    grid = ElasticSpace().grid(elastic.arch)
    library = nested_library(elastic, grid, holdout, scenarios=default_scenarios())
    for i, (layer, block) in enumerate(zip(library.layers, elastic.model.blocks, strict=True)):
        assert [v.name for v in layer.variants] == [c.name for c in grid.layer_choices(i)]
        assert layer.parent.name == LayerChoice.full(block.spec).name
        assert layer.parent.metrics["kl_div"] == pytest.approx(0.0, abs=1e-6)
        skip = layer.variant("a0.f0.m0")
        assert skip.metrics["kl_div"] > 0 and skip.costs["num_params"] == 0
    choices = choose_configs(library, BUDGETS)
    parent = n_params(elastic.model)
    objectives = []
    for budget in BUDGETS:
        choice = choices[f"{budget:g}"]
        child = elastic.slice(config=choice.config)
        assert n_params(child) <= budget * parent  # the real sliced child, counted, not the MIP's own sum
        assert choice.totals["num_params"] == n_params(child)
        objectives.append(choice.objective)
    assert objectives == sorted(objectives) and objectives[-1] > 0  # a smaller budget never scores better


@pytest.mark.parametrize("name", ["llama", "hybrid"])
def test_mip_picks_only_children_the_target_loads(name: str) -> None:
    elastic, holdout = _elastic(name)
    grid = ElasticSpace().grid(elastic.arch, "vllm")
    library = nested_library(elastic, grid, holdout)
    assert library.notes["elastic_grid"] == grid.to_dict()
    for i, layer in enumerate(library.layers):  # only the grid's slices are scored
        assert [v.name for v in layer.variants] == [c.name for c in grid.layer_choices(i)]
    for choice in choose_configs(library, BUDGETS).values():
        assert "vllm" in loadable_by(config_arch(elastic.arch, choice.config))


def test_memory_budget_uses_the_scenarios_formula() -> None:
    elastic, holdout = _elastic("llama")
    scenarios = default_scenarios()
    library = nested_library(
        elastic, ElasticSpace(ffn=(1.0, 0.5, 0.0)).grid(elastic.arch), holdout, scenarios=scenarios
    )
    choice = choose_configs(library, (0.5,), cost="memory_mib")["0.5"]
    assert choice.totals["memory_mib"] <= 0.5 * choice.parent_totals["memory_mib"] + 1e-9
    assert choice.constraint == "memory_mib<=50%"


def test_curriculum_weights_move_to_harder_budgets() -> None:
    cfg = ElasticTrainConfig(tokens=10 * 8 * 16, batch=8, seq_len=16, stage1_fraction=0.5, hard_power=2.0)
    budgets = [1.0, 0.8, 0.4]
    assert np.allclose(budget_weights(budgets, 0, cfg), 1 / 3)
    late = budget_weights(budgets, 9, cfg)
    assert late[2] > late[1] > late[0] and late.sum() == pytest.approx(1.0)
    assert draw_budgets(budgets, 7, cfg) == draw_budgets(budgets, 7, cfg)  # a pure function of (seed, step)


def _rows(vocab: int, n: int = 16, length: int = 17) -> np.ndarray:
    return np.random.default_rng(0).integers(0, vocab, size=(n, length))


def test_multi_budget_distillation_lowers_the_kl_and_resumes_exactly(tmp_path) -> None:
    elastic, holdout = _elastic("llama")
    choices = choose_configs(nested_library(elastic, ElasticSpace().grid(elastic.arch), holdout), BUDGETS)
    budgets = {c.budget: c.config for c in choices.values()}
    cfg = ElasticTrainConfig(tokens=12 * 4 * 16, batch=4, seq_len=16, lr=3e-3, checkpoint_every=5, warmup_fraction=0.0)
    rows = _rows(elastic.arch.vocab_size)
    import copy

    start = copy.deepcopy(elastic.model.state_dict())
    whole = ElasticLM(copy.deepcopy(elastic.model), budgets)
    result = train_elastic(whole, rows, cfg)
    assert result.steps == 12 and result.tokens == 12 * 4 * 16 and result.student_tokens == 4 * result.tokens
    assert sum(result.draws.values()) == 12 * 4 and set(result.draws) == {"1", "0.8", "0.6", "0.4"}
    assert np.mean(result.losses[-3:]) < np.mean(result.losses[:3])

    class Stop(Exception):
        pass

    def stop_at_7(info):  # type: ignore[no-untyped-def]
        if info.step == 7:
            raise Stop

    interrupted = ElasticLM(copy.deepcopy(elastic.model), budgets)
    interrupted.model.load_state_dict(start)
    with pytest.raises(Stop):
        train_elastic(interrupted, rows, cfg, checkpoint_dir=tmp_path, on_step=stop_at_7)
    resumed = ElasticLM(copy.deepcopy(elastic.model), budgets)
    resumed.model.load_state_dict(start)
    again = train_elastic(resumed, rows, cfg, checkpoint_dir=tmp_path)
    assert again.resumed_from == 5 and again.losses == pytest.approx(result.losses, abs=1e-5)
    for name, t in whole.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], t, rtol=0, atol=1e-5)


def test_measured_latency_is_a_cost_the_budgets_can_bound() -> None:
    from puzzle.library import Scenario
    from puzzle.library.cost import device_name

    elastic, holdout = _elastic("hybrid")
    scenario = Scenario("cpu-tiny-prefill", "prefill", 1, 8, device_name("cpu"), "float32", threads=1)
    space = ElasticSpace(ffn=(1.0, 0.5, 0.0), mamba=(1.0, 0.5, 0.0), attention=(1.0, 0.0))
    grid = space.grid(elastic.arch)
    library = nested_library(elastic, grid, holdout, scenarios=(scenario,), measure_latency=True, repeats=2)
    runtimes = [v.scenario_costs[scenario.name]["runtime_ms"] for layer in library.layers for v in layer.variants]
    assert all(r >= 0 for r in runtimes) and max(runtimes) > 0
    choice = choose_configs(library, (0.7,), cost="runtime_ms")["0.7"]
    assert choice.totals["runtime_ms"] <= 0.7 * choice.parent_totals["runtime_ms"] + 1e-9
