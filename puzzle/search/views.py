"""What a chosen architecture looks like: whole-model totals, one-line summaries, points and per-layer views.

``totals`` is the one whole-model cost function (blocks + non-block part, summed layer by layer with the search
engine's own ``cost_column``); ``puzzle.search.verify`` re-sums independently on purpose.

A *point* is one architecture with its objective value and whole-model costs: ``Point.to_dict()`` is
``{"objective", "costs", "choices", "summary"}``, where ``choices[i]`` is the index of the variant of layer i.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from puzzle.arch import to_block_configs
from puzzle.library import BlockLibrary, Variant
from puzzle.search.request import Architecture
from puzzle.search.solution import Solution


@dataclass(frozen=True)
class Point:
    """One architecture of a search result."""

    objective: float
    costs: dict[str, float]
    arch: Architecture
    summary: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "costs": dict(self.costs),
            "choices": list(self.arch.choices),
            "summary": self.summary,
        }


# --- whole-model totals ----------------------------------------------------------------------------------


def totals(
    library: BlockLibrary, choices: np.ndarray | Sequence[int], keys: Sequence[str], scenario: str | None
) -> dict[str, np.ndarray]:
    """Whole-model totals of each cost key (``NAME``, ``NAME@SCENARIO``, a count) per architecture (rows of
    ``choices``, shape (P, L)): the blocks summed layer by layer in layer order (bit-identical to a plain Python
    sum), then the non-block part; unqualified scenario costs are those of ``scenario`` (default: the library's)."""
    from puzzle.search.problem import cost_column

    scen = library.resolve_scenario(scenario)
    choices = np.asarray(choices, dtype=np.int64).reshape(-1, library.n_layers)
    out = {}
    for key in keys:
        _, _, cols, offset = cost_column(library, key, scen)
        acc = np.zeros(len(choices))
        for i, col in enumerate(cols):
            acc += col[choices[:, i]]
        out[key] = acc + offset
    return out


def total(library: BlockLibrary, arch: Architecture, key: str, scenario: str | None) -> float:
    """One whole-model cost of one architecture (``totals`` of a single row)."""
    return float(totals(library, arch.choices, [key], scenario)[key][0])


def report_keys(library: BlockLibrary, scenario: str | None) -> list[str]:
    """The keys a search ``Solution`` reports: scenario-free costs, then the scenario's (unqualified)."""
    scen = library.resolve_scenario(scenario)
    return list(library.cost_keys) + (list(library.scenario_cost_keys(scen)) if scen else [])


def axis_key(library: BlockLibrary, axis: str, scenario: str | None) -> str:
    """The key of ``axis`` among a point's costs (unqualified for the search's own scenario, as in solutions)."""
    scen = library.resolve_scenario(scenario)
    name, axis_scenario = library.resolve_cost_key(axis, scen)
    return name if axis_scenario is None or axis_scenario == scen else f"{name}@{axis_scenario}"


# --- points ------------------------------------------------------------------------------------------------


def point_of_solution(library: BlockLibrary, solution: Solution) -> Point:
    arch = Architecture(solution.choices)
    return Point(
        float(solution.objective), {k: float(v) for k, v in solution.totals.items()}, arch, summarise(library, arch)
    )


def frontier_points(
    library: BlockLibrary,
    choices: np.ndarray,
    objectives: np.ndarray,
    axis_values: np.ndarray,
    *,
    axis: str,
    scenario: str | None,
) -> list[Point]:
    """Points of a frontier: the reported totals of each architecture, with the engine's own axis sums."""
    choices = np.asarray(choices, dtype=np.int64).reshape(-1, library.n_layers)
    sums = totals(library, choices, report_keys(library, scenario), scenario)
    sums[axis_key(library, axis, scenario)] = np.asarray(axis_values, dtype=float)
    texts = summaries(library, choices)
    return [
        Point(
            float(objectives[p]),
            {k: float(v[p]) for k, v in sums.items()},
            Architecture(tuple(choices[p].tolist())),
            texts[p],
        )
        for p in range(len(choices))
    ]


# --- per-layer views ----------------------------------------------------------------------------------------


def attention_view(v: Variant) -> dict[str, Any] | None:
    if v.spec is None:
        return None
    a = v.spec.attention
    if a.kind == "gqa":
        return {"kind": "gqa", "n_heads": a.n_heads, "n_kv_heads": a.n_kv_heads, "head_dim": a.head_dim}
    return {"kind": a.kind}


def ffn_view(v: Variant, parent: Variant) -> dict[str, Any] | None:
    if v.spec is None:
        return None
    f = v.spec.ffn
    if f.kind == "mlp":
        out: dict[str, Any] = {"kind": "mlp", "intermediate_size": f.intermediate_size, "activation": f.activation}
        if parent.spec is not None and parent.spec.ffn.kind == "mlp" and parent.spec.ffn.intermediate_size:
            out["percent_of_parent"] = round(100.0 * f.intermediate_size / parent.spec.ffn.intermediate_size, 1)
        return out
    return {"kind": f.kind}


def mamba_view(v: Variant) -> dict[str, Any] | None:
    if v.spec is None or v.spec.mamba.kind == "no_op":
        return None
    m = v.spec.mamba
    return {"kind": "mamba", "n_heads": m.n_heads, "head_dim": m.head_dim, "n_groups": m.n_groups}


def architecture_view(library: BlockLibrary, point: Point | dict[str, Any]) -> dict[str, Any]:
    """Per-layer view of one point: which subblocks each layer keeps, at what size, with its costs and metrics,
    and the ``block_configs`` of the child (None when a layer has no spec, e.g. an imported library)."""
    if isinstance(point, dict):
        arch = Architecture(tuple(point["choices"]))
        objective, costs, summary = point["objective"], point["costs"], point.get("summary")
    else:
        arch, objective, costs, summary = point.arch, point.objective, point.costs, point.summary
    layers = []
    for layer, v in zip(library.layers, arch.variants(library), strict=True):
        layers.append(
            {
                "index": layer.index,
                "variant": v.name,
                "is_parent": v.is_parent,
                "attention": attention_view(v),
                "ffn": ffn_view(v, layer.parent),
                "mamba": mamba_view(v),
                "costs": v.flat_costs(),
                "metrics": dict(v.metrics),
            }
        )
    blocks = [v.spec for v in arch.variants(library)]
    block_configs = None
    if library.hidden_size and all(b is not None for b in blocks):
        # to_block_configs reads only .blocks and .hidden_size: the library has no vocabulary to build an ArchSpec.
        shape = type("_Blocks", (), {"blocks": tuple(blocks), "hidden_size": library.hidden_size})()
        block_configs = to_block_configs(cast(Any, shape))
    return {
        "objective": objective,
        "costs": costs,
        "summary": summary or summarise(library, arch),
        "layers": layers,
        "block_configs": block_configs,
    }


# --- one-line summaries ---------------------------------------------------------------------------------------


def _layer_table(library: BlockLibrary) -> dict[str, np.ndarray]:
    """Per (layer, variant), padded to (L, J): attention kind code (0 gqa, 1 linear, 2 none, -1 unknown), KV heads,
    FFN kind code (0 mlp, 1 linear, 2 none, -1 unknown) and FFN width in % of the parent's."""
    n_layers, width = library.n_layers, max(len(layer.variants) for layer in library.layers)
    table = {k: np.full((n_layers, width), -1.0) for k in ("att", "kv", "ffn", "pct")}
    codes = {"gqa": 0, "mlp": 0, "linear": 1, "no_op": 2}
    for i, layer in enumerate(library.layers):
        for j, v in enumerate(layer.variants):
            att, ffn = attention_view(v), ffn_view(v, layer.parent)
            if att is not None:
                table["att"][i, j] = codes[att["kind"]]
                table["kv"][i, j] = att.get("n_kv_heads", 0)
            if ffn is not None:
                table["ffn"][i, j] = codes[ffn["kind"]]
                table["pct"][i, j] = ffn.get("percent_of_parent", 100.0)
    return table


def summaries(library: BlockLibrary, choices: np.ndarray) -> list[str]:
    """One line per architecture (rows of ``choices``, shape (P, L)): layers keeping attention and their KV
    heads, FFN layers and mean width, what was replaced or removed."""
    choices = np.asarray(choices, dtype=np.int64).reshape(-1, library.n_layers)
    table, rows = _layer_table(library), np.arange(library.n_layers)
    att, kv = table["att"][rows, choices], table["kv"][rows, choices]
    ffn, pct = table["ffn"][rows, choices], table["pct"][rows, choices]
    n = library.n_layers
    kv_values = sorted({int(x) for x in np.unique(kv[att == 0])}, reverse=True)
    kv_counts = {k: ((att == 0) & (kv == k)).sum(axis=1) for k in kv_values}
    n_att, n_lin, n_none = (att == 0).sum(axis=1), (att == 1).sum(axis=1), (att == 2).sum(axis=1)
    n_mlp, n_flin, n_fnone = (ffn == 0).sum(axis=1), (ffn == 1).sum(axis=1), (ffn == 2).sum(axis=1)
    mean_pct = np.where(n_mlp > 0, np.where(ffn == 0, pct, 0.0).sum(axis=1) / np.maximum(n_mlp, 1), 0.0)
    unknown = np.asarray(((att < 0) | (ffn < 0)).any(axis=1))
    out = []
    for p in range(len(choices)):
        if unknown[p]:
            parents = sum(1 for i, j in enumerate(choices[p]) if library.layers[i].variants[j].is_parent)
            out.append(f"{parents}/{n} parent layers")
            continue
        heads = ", ".join(f"{k}kv x{kv_counts[k][p]}" for k in kv_values if kv_counts[k][p])
        parts = [f"attention {n_att[p]}/{n}" + (f" ({heads})" if heads else "")]
        if n_lin[p]:
            parts.append(f"{n_lin[p]} linear attn")
        if n_none[p]:
            parts.append(f"{n_none[p]} no attn")
        parts.append(f"ffn {n_mlp[p]}/{n} at {mean_pct[p]:.0f}% mean width")
        if n_flin[p]:
            parts.append(f"{n_flin[p]} linear ffn")
        if n_fnone[p]:
            parts.append(f"{n_fnone[p]} no ffn")
        out.append("; ".join(parts))
    return out


def summarise(library: BlockLibrary, arch: Architecture) -> str:
    return summaries(library, np.asarray([arch.choices]))[0]
