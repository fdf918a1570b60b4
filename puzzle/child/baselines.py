"""Baselines a Puzzle child must beat at the same budget, as per-layer variant choices from the same library.

* **uniform width** (Minitron-style): every layer keeps its structure and gets the same relative widths: the
  same KV-head count for attention, the same FFN fraction, the same Mamba head fraction (each applied to the
  layers whose parent has that subblock). Among the settings that exist in every layer and fit the budget,
  the one with the best summed library score (e.g. least total replace-one-block KL) is taken.
* **depth pruning**: whole layers are replaced by the no-op variant, least important first, where a layer's
  importance is the library score of removing it alone (replace-one-block); layers are dropped until the
  budget is met.
* **greedy**: the search package's ``greedy`` (budget split evenly over layers, leftovers passed on).

A budget is ``cost <= limit`` on a whole-model cost (``predicted_cost``: blocks + non-block) in one scenario.
Every function returns variant names, one per layer, and raises ``InfeasibleError`` when nothing fits.
"""

from __future__ import annotations

import itertools
from typing import Any

from puzzle.child.assess import predicted_cost
from puzzle.errors import InfeasibleError, LibraryError
from puzzle.library import BlockLibrary

_KINDS = ("attention", "ffn", "mamba")


def _describe(kind: str, spec: Any, parent: Any) -> tuple[Any, ...] | None:
    """A layer-independent description of one subblock relative to the parent's; None if not a width change."""
    if parent.is_no_op:
        return ("absent",) if spec.is_no_op else None
    if kind == "attention":
        return ("gqa", spec.n_kv_heads) if spec.kind == "gqa" else None
    if kind == "ffn":
        return ("mlp", round(spec.intermediate_size / parent.intermediate_size, 3)) if spec.kind == "mlp" else None
    return ("mamba", round(spec.n_heads / parent.n_heads, 3)) if spec.kind == "mamba" else None


def _uniform_options(library: BlockLibrary) -> list[dict[tuple[Any, ...], str]]:
    """Per layer: (attention, ffn, mamba) description -> variant name, for width-only variants."""
    options = []
    for layer in library.layers:
        parent = layer.parent.spec
        if parent is None:
            raise LibraryError(f"layer {layer.index}: the parent variant has no block spec")
        table: dict[tuple[Any, ...], str] = {}
        for v in layer.variants:
            if v.spec is None:
                continue
            desc = tuple(_describe(k, getattr(v.spec, k), getattr(parent, k)) for k in _KINDS)
            if None not in desc:
                table.setdefault(desc, v.name)
        options.append(table)
    return options


def _score(library: BlockLibrary, names: list[str], metric: str, sense: str) -> float:
    total = sum(layer.variant(n).metrics[metric] for layer, n in zip(library.layers, names, strict=True))
    return total if sense == "min" else -total


def uniform_width(
    library: BlockLibrary, limit: float, *, key: str = "runtime_ms", scenario: str | None = None,
    metric: str = "kl_div", sense: str = "min",
) -> list[str]:  # fmt: skip
    """The best uniform-width child whose predicted ``key`` is at most ``limit``."""
    tables = _uniform_options(library)
    per_kind: list[set[Any]] = [set() for _ in _KINDS]
    for table in tables:
        for desc in table:
            for i, part in enumerate(desc):
                if part != ("absent",):
                    per_kind[i].add(part)
    best: tuple[float, list[str]] | None = None
    smallest = float("inf")
    for combo in itertools.product(*[sorted(s) or [None] for s in per_kind]):
        names = []
        for table in tables:
            match = [
                n for d, n in table.items() if all(p == ("absent",) or p == c for p, c in zip(d, combo, strict=True))
            ]
            if not match:
                break
            names.append(match[0])
        else:
            cost = predicted_cost(library, names, key, scenario)
            smallest = min(smallest, cost)
            if cost <= limit:
                score = _score(library, names, metric, sense)
                if best is None or score < best[0]:
                    best = (score, names)
    if best is None:
        raise InfeasibleError(
            f"no uniform-width child has {key} <= {limit:.6g} (smallest uniform: {smallest:.6g})",
            constraint=key,
            minimum=smallest,
        )
    return best[1]


def depth_pruning(
    library: BlockLibrary, limit: float, *, key: str = "runtime_ms", scenario: str | None = None,
    metric: str = "kl_div", sense: str = "min",
) -> list[str]:  # fmt: skip
    """Drop the least important whole layers (by the score of removing each alone) until ``key <= limit``."""
    names = [layer.parent.name for layer in library.layers]
    removal: list[tuple[float, int, str]] = []
    for layer in library.layers:
        noop = next((v for v in layer.variants if v.spec is not None and v.spec.is_no_op), None)
        if noop is None:
            raise LibraryError(
                f"layer {layer.index} has no whole-layer no-op variant; depth pruning needs one per layer"
            )
        importance = noop.metrics[metric] if sense == "min" else -noop.metrics[metric]
        removal.append((importance, layer.index, noop.name))
    for _importance, index, noop_name in sorted(removal):
        if predicted_cost(library, names, key, scenario) <= limit:
            break
        names[index] = noop_name
    cost = predicted_cost(library, names, key, scenario)
    if cost > limit:
        raise InfeasibleError(
            f"depth pruning cannot reach {key} <= {limit:.6g} (every layer removed: {cost:.6g})",
            constraint=key,
            minimum=cost,
        )
    return names
