from __future__ import annotations

import itertools

import pytest

from puzzle.assess import predicted_cost
from puzzle.baselines import depth_pruning, uniform_width
from puzzle.errors import InfeasibleError
from puzzle.library import BlockLibrary
from tests.export import tiny_library, tiny_parent_dir


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
