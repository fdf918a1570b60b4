from __future__ import annotations

import itertools

import pytest

from puzzle.child.assess import predicted_cost
from puzzle.child.baselines import depth_pruning, uniform_width
from puzzle.errors import InfeasibleError
from puzzle.library import BlockLibrary
from tests.child import tiny_library, tiny_parent_dir


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> BlockLibrary:
    root = tmp_path_factory.mktemp("baselines")
    tiny_library(root / "library", tiny_parent_dir(root / "parent"))
    return BlockLibrary.load(root / "library")


def _cost(library, names) -> float:
    return predicted_cost(library, names, "runtime_ms", "cpu")


def _kl(library, names) -> float:
    return sum(layer.variant(n).metrics["kl_div"] for layer, n in zip(library.layers, names, strict=True))


def test_uniform_width_is_the_best_uniform_child_under_the_budget(library) -> None:
    parent = _cost(library, ["parent"] * 3)
    uniform = {name: [name] * 3 for name in ("parent", "ffn50", "kv1")}  # the uniform settings this library has
    for fraction in (1.0, 0.9, 0.8):
        limit = fraction * parent
        got = uniform_width(library, limit, scenario="cpu")
        feasible = [n for n in uniform.values() if _cost(library, n) <= limit]
        assert got == min(feasible, key=lambda n: _kl(library, n))
    with pytest.raises(InfeasibleError, match="smallest uniform") as err:
        uniform_width(library, 0.3 * parent, scenario="cpu")
    assert err.value.minimum == pytest.approx(min(_cost(library, n) for n in uniform.values()))


def test_depth_pruning_drops_the_least_important_layers_first(library) -> None:
    parent = _cost(library, ["parent"] * 3)
    importance = [layer.variant("noop").metrics["kl_div"] for layer in library.layers]
    order = sorted(range(3), key=lambda i: importance[i])
    for fraction in (0.9, 0.6, 0.3):
        limit = fraction * parent
        got = depth_pruning(library, limit, scenario="cpu")
        dropped = [i for i, n in enumerate(got) if n == "noop"]
        assert _cost(library, got) <= limit
        assert sorted(dropped) == sorted(order[: len(dropped)])  # a prefix of the importance order
        if dropped:  # minimal: keeping the last layer dropped would break the budget
            kept = [("parent" if i == order[len(dropped) - 1] else n) for i, n in enumerate(got)]
            assert _cost(library, kept) > limit
    empty = _cost(library, ["noop"] * 3)
    assert depth_pruning(library, empty, scenario="cpu") == ["noop"] * 3
    with pytest.raises(InfeasibleError, match="every layer removed"):
        depth_pruning(library, 0.9 * empty, scenario="cpu")


def test_baselines_never_beat_exhaustive_search(library) -> None:
    """Sanity: no baseline has a smaller total KL than the best of all 5^3 children under the same budget."""
    parent = _cost(library, ["parent"] * 3)
    names = [v.name for v in library.layers[0].variants]
    limit = 0.7 * parent
    best = min(
        (c for c in itertools.product(names, repeat=3) if _cost(library, list(c)) <= limit),
        key=lambda c: _kl(library, list(c)),
    )
    for baseline in (uniform_width, depth_pruning):
        try:
            got = baseline(library, limit, scenario="cpu")
        except InfeasibleError:
            continue
        assert _kl(library, got) >= _kl(library, list(best)) - 1e-12


def _hybrid_library() -> BlockLibrary:
    """Specs and costs only (baselines read nothing else): Mamba, attention and MLP layers, Nemotron-H style."""
    from dataclasses import replace

    from puzzle.arch import BlockSpec
    from puzzle.library import Layer, Scenario, Variant
    from tests.child import small_hybrid

    arch = small_hybrid()
    layers = []
    for i, block in enumerate(arch.blocks):
        options = {"parent": block, "noop": BlockSpec()}
        if not block.mamba.is_no_op:
            options["half"] = replace(block, mamba=replace(block.mamba, n_heads=block.mamba.n_heads // 2))
        elif not block.attention.is_no_op:
            options["half"] = replace(block, attention=replace(block.attention, n_kv_heads=1))
        else:
            options["half"] = replace(block, ffn=replace(block.ffn, intermediate_size=block.ffn.intermediate_size // 2))
        cost = {"parent": 10.0, "half": 6.0, "noop": 0.5}
        kl = {"parent": 0.0, "half": 0.1 * (i + 1), "noop": 1.0 + i}
        variants = [
            Variant(n, n == "parent", s, {"kl_div": kl[n]}, {}, {"cpu": {"runtime_ms": cost[n]}})
            for n, s in options.items()
        ]
        layers.append(Layer(i, tuple(variants)))
    return BlockLibrary(tuple(layers), {"cpu": Scenario("cpu")}, family="nemotron_h", hidden_size=arch.hidden_size)


def test_uniform_width_on_a_hybrid_applies_each_fraction_to_the_layers_that_have_the_subblock() -> None:
    library = _hybrid_library()
    assert uniform_width(library, 30.0, scenario="cpu") == ["parent"] * 3
    assert uniform_width(library, 18.0, scenario="cpu") == ["half"] * 3  # every kind narrowed, none removed
    combos = {  # what is feasible at 26: narrowing one kind of layer only
        "mamba": ["half", "parent", "parent"],
        "attention": ["parent", "half", "parent"],
        "ffn": ["parent", "parent", "half"],
    }
    got = uniform_width(library, 26.0, scenario="cpu")
    assert got == combos["mamba"]  # the least KL of the three (layer 0's change is the cheapest in KL)
    assert depth_pruning(library, 21.0, scenario="cpu") == ["noop", "parent", "parent"]
