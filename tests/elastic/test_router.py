"""The router: its masked forward is the sliced submodel, its cost model is the library's, its outputs fit budgets."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from puzzle.elastic.distill import ElasticTrainConfig, RouterTraining, train_elastic
from puzzle.elastic.model import ElasticLM
from puzzle.elastic.router import CostModel, Router, extract, masked_forward, picks_config, width_options
from puzzle.elastic.select import nested_library
from puzzle.elastic.space import ElasticSpace, config_arch
from puzzle.library.cost import default_scenarios
from puzzle.targets import loadable_by
from tests.elastic.test_select import _elastic, _rows

BUDGETS = (0.8, 0.6, 0.4)


def _random_picks(options, n_layers: int, seed: int) -> dict[str, torch.Tensor]:  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(seed)
    picks = {}
    for axis, per_layer in options.items():
        width = max(len(o) for o in per_layer)
        rows = [int(torch.randint(0, len(o), (1,), generator=g)) for o in per_layer]
        picks[axis] = F.one_hot(torch.tensor(rows), width).float()
    keep = torch.randint(0, 2, (n_layers,), generator=g)
    picks["depth"] = F.one_hot(keep, 2).float()
    return picks


@pytest.mark.parametrize("name", ["llama", "hybrid", "hetero"])
def test_masked_forward_with_one_hots_is_the_sliced_submodel(name: str) -> None:
    elastic, _ = _elastic(name)
    options = width_options(ElasticSpace().grid(elastic.arch))
    ids = torch.randint(0, elastic.arch.vocab_size, (2, 13), generator=torch.Generator().manual_seed(0))
    for seed in range(4):
        picks = _random_picks(options, elastic.arch.n_layers, seed)
        config = picks_config(options, picks)
        with torch.no_grad():
            torch.testing.assert_close(
                masked_forward(elastic, options, picks, ids), elastic(ids, config=config), rtol=0, atol=1e-5
            )


@pytest.fixture(scope="module")
def routed():  # type: ignore[no-untyped-def]
    elastic, holdout = _elastic("hybrid")
    grid = ElasticSpace().grid(elastic.arch)
    library = nested_library(elastic, grid, holdout, scenarios=default_scenarios())
    options = width_options(grid)
    return elastic, library, options


def test_cost_model_is_the_librarys_cost_and_differentiable(routed) -> None:  # type: ignore[no-untyped-def]
    elastic, library, options = routed
    cost = CostModel.from_library(library, options, "num_params")
    from puzzle.elastic.model import n_params

    for seed in range(4):
        picks = _random_picks(options, elastic.arch.n_layers, seed)
        child = elastic.slice(config=picks_config(options, picks))
        assert float(cost.ratio(picks)) * cost.parent == pytest.approx(n_params(child))
    soft = {a: torch.full_like(p, 1.0 / p.shape[1]).requires_grad_(True) for a, p in picks.items()}
    cost.ratio(soft).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in soft.values())


def test_router_training_lowers_the_loss_and_every_extracted_config_respects_its_budget(routed) -> None:  # type: ignore[no-untyped-def]
    elastic, library, options = routed
    elastic = ElasticLM(copy.deepcopy(elastic.model))
    cost = CostModel.from_library(library, options, "num_params")
    router = Router(options, elastic.arch.n_layers, n_budgets=len(BUDGETS) + 1)
    cfg = ElasticTrainConfig(tokens=16 * 4 * 16, batch=4, seq_len=16, lr=1e-3, warmup_fraction=0.0)
    result = train_elastic(
        elastic, _rows(elastic.arch.vocab_size), cfg, budgets=BUDGETS, router=RouterTraining(router, cost, lr=3e-2)
    )
    assert result.steps == 16 and np.isfinite(result.losses).all()
    assert np.mean(result.losses[-4:]) < np.mean(result.losses[:4])
    configs = extract(router, cost, [1.0, *BUDGETS])
    for budget in BUDGETS:
        picks_ratio = cost.ratio(_picks_of(configs[budget], options, elastic.arch.n_layers))
        assert float(picks_ratio) <= budget + 1e-9


@pytest.mark.parametrize(("name", "axis"), [("llama", "attention"), ("hybrid", "mamba")])
def test_router_over_a_target_grid_extracts_only_children_the_target_loads(name: str, axis: str) -> None:
    elastic, holdout = _elastic(name)
    grid = ElasticSpace().grid(elastic.arch, "vllm")
    options = width_options(grid)
    free = width_options(ElasticSpace().grid(elastic.arch))
    for i in range(elastic.arch.n_layers):  # vLLM gets whole attention (Llama) / Mamba (hybrid) only
        assert len(options[axis][i]) == 1 and options[axis][i][0] == free[axis][i][0]
    assert any(len(sizes) > 1 for sizes in free[axis])
    cost = CostModel.from_library(nested_library(elastic, grid, holdout), options, "num_params")
    torch.manual_seed(0)
    router = Router(options, elastic.arch.n_layers, n_budgets=len(BUDGETS))
    with torch.no_grad():  # random logits: the extraction walks each budget down through many choices
        for p in router.parameters():
            p.normal_()
    for budget, config in extract(router, cost, BUDGETS).items():
        assert float(cost.ratio(_picks_of(config, options, elastic.arch.n_layers))) <= budget + 1e-9
        assert "vllm" in loadable_by(config_arch(elastic.arch, config))


def _picks_of(config, options, n_layers):  # type: ignore[no-untyped-def]
    picks = {}
    for axis, per_layer in options.items():
        if axis == "depth":
            continue
        width = max(len(o) for o in per_layer)
        rows = []
        for i, o in enumerate(per_layer):
            size = getattr(config.layers[i], axis)
            rows.append(o.index(size) if size in o else 0)
        picks[axis] = F.one_hot(torch.tensor(rows), width).float()
    picks["depth"] = F.one_hot(torch.tensor([int(c.is_skip) for c in config.layers]), 2).float()
    return picks


def test_router_training_resumes_exactly(routed, tmp_path) -> None:  # type: ignore[no-untyped-def]
    elastic, library, options = routed
    cost = CostModel.from_library(library, options, "num_params")
    cfg = ElasticTrainConfig(tokens=8 * 4 * 16, batch=4, seq_len=16, checkpoint_every=3, warmup_fraction=0.0)
    rows = _rows(elastic.arch.vocab_size)

    def run(checkpoint_dir=None, on_step=None):  # type: ignore[no-untyped-def]
        torch.manual_seed(0)
        model = ElasticLM(copy.deepcopy(elastic.model))
        router = Router(options, model.arch.n_layers, n_budgets=len(BUDGETS) + 1)
        training = RouterTraining(router, cost)
        result = train_elastic(
            model, rows, cfg, budgets=BUDGETS, router=training, checkpoint_dir=checkpoint_dir, on_step=on_step
        )
        return result, router

    whole, router = run()

    class Stop(Exception):
        pass

    def stop_at_5(info):  # type: ignore[no-untyped-def]
        if info.step == 5:
            raise Stop

    with pytest.raises(Stop):
        run(tmp_path, stop_at_5)
    again, resumed = run(tmp_path)
    assert again.resumed_from == 3 and again.losses == pytest.approx(whole.losses, abs=1e-5)
    for name, t in router.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], t, rtol=0, atol=1e-5)


def test_router_skips_only_layers_the_space_lets_it_remove() -> None:
    elastic, holdout = _elastic("llama")
    space = ElasticSpace(attention=(1.0, 0.5), ffn=(1.0, 0.5), mamba=(1.0,))  # no 0: no layer may be skipped
    grid = space.grid(elastic.arch)
    library = nested_library(elastic, grid, holdout, scenarios=default_scenarios())
    options = width_options(grid)
    assert options["depth"] == [[1]] * elastic.arch.n_layers
    cost = CostModel.from_library(library, options, "num_params")
    router = Router(options, elastic.arch.n_layers, len(BUDGETS))
    with torch.no_grad():  # a router that wants to skip every layer
        router.nets["depth"][-1].bias.copy_(torch.tensor([-5.0, 5.0]).repeat(elastic.arch.n_layers))
    for b in range(len(BUDGETS)):
        assert bool((router.sample(b, 1.0)["depth"][:, 0] == 1).all())
    smallest = float(
        cost.ratio(
            {
                a: F.one_hot(torch.tensor([len(o) - 1 for o in options[a]]), 2).float()
                for a in ("attention", "ffn", "mamba")
            }
            | {"depth": torch.tensor([[1.0, 0.0]] * elastic.arch.n_layers)}
        )
    )
    configs = extract(router, cost, (0.99, smallest + 1e-6))
    assert all(not c.is_skip for config in configs.values() for c in config.layers)
    # with 0 in the space the same router does skip
    free = width_options(ElasticSpace().grid(elastic.arch))
    assert free["depth"] == [[1, 0]] * elastic.arch.n_layers
