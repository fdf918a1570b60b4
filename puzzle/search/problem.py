"""The architecture-search problem: one variant per layer, best total quality under cost bounds.

Data
    L layers; layer i has variants j = 0..n_i-1 with quality ``q[i,j]`` (a library metric) and costs
    ``c[k,i,j]`` for every constrained cost row k. ``s`` = +1 when the metric is minimised (kl_div, lm_loss),
    -1 when maximised (cosine, accuracy); ``w[i,j] = s * q[i,j]``.
    ``nb[k]`` = the non-block part of cost k (embedding, head; 0 when unknown).

Variables
    x[i,j] in {0, 1}: layer i uses variant j.

Objective
    minimise  sum_ij w[i,j] x[i,j]

Constraints
    (1) sum_j x[i,j] = 1                                   for every layer i
    (2) sum_ij c[k,i,j] x[i,j] <= hi[k] - nb[k]             for every row k with an upper bound
    (3) sum_ij c[k,i,j] x[i,j] >= lo[k] - nb[k]             for every row k with a lower bound
    (4) sum_ij y[n,i,j] x[i,j] <= L - d                     for every excluded architecture y[n] (diversity)

Rows come from user constraints ``KEY<=V`` / ``KEY>=V``:
    * KEY is a cost of the library (``num_params``, ``runtime_ms``, ``memory_mib@decode-b64``, ...: see
      ``puzzle.library``), a count (``attention_layers``, ``ffn_layers``, ``mamba_layers``, ``no_op_layers``,
      ``parent_layers``: c = 1 when the variant keeps that subblock / removes everything / is the parent's), or
      ``throughput`` (tokens/s of a scenario), turned into latency as in DESIGN.md:
      ``throughput >= T``  <=>  ``runtime_ms <= 1000 * batch * tokens_per_sequence / T``.
    * ``@SCENARIO`` picks a scenario (default: the search's scenario); ``@b64`` picks the scenario measured at
      batch 64 that shares device, dtype and kind with the search's scenario (memory at a batch size).
    * V is absolute (whole-model units: blocks + non-block) or ``P%`` of the parent's whole-model value.
      Bounds are whole-model; the non-block part ``nb`` is subtracted before the blocks share the budget.
    Several constraints on one key merge into one row (tightest bounds). Feasibility is checked with an
    absolute tolerance ``tol[k] = 1e-9 * max(1, sum_i max_j |c[k,i,j]|)`` everywhere (solvers, verification,
    brute force), so "exact" means exact up to float summation error.

Outliers (numerical safety)
    A legal but extreme cost (a variant at 1e12 ms beside layers of a few ms) must neither widen the
    tolerance nor drown the other coefficients in a solver's scaling. ``build_problem`` therefore caps each
    bounded row before anything else sees it, keeping the feasible set unchanged: with m_i = min_j c[k,i,j],
    S = sum_i m_i, B = the largest |bound| of the row and R = 10 max(1, B, |S|), a cost above m_i + R is
    lowered to m_i + R. Any architecture using such a variant totals more than S + R > 2B before and after
    the cap: it breaks an upper bound, and meets a lower bound, either way (costs are not negative). Only
    values more than ten whole-model budgets above their layer's cheapest are touched. Solutions are
    re-summed from the library (``verify.py``) and the diagnosis of an infeasible problem minimises the
    library's own costs, so capped values are never reported.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from puzzle.errors import ConfigError
from puzzle.library import BlockLibrary, Variant

COUNT_KEYS = ("attention_layers", "ffn_layers", "mamba_layers", "no_op_layers", "parent_layers")
THROUGHPUT = "throughput"
MAXIMISED_METRICS = ("cosine", "cos", "accuracy", "acc", "mmlu", "score")
REL_TOL = 1e-9
OUTLIER_FACTOR = 10.0  # costs more than this many whole-model budgets above their layer's cheapest are capped

_CONSTRAINT_RE = re.compile(
    r"^\s*(?P<key>[A-Za-z_][A-Za-z0-9_]*(?:@[A-Za-z0-9_.\-]+)?)\s*(?P<op><=|>=)\s*(?P<value>[^%\s]+)\s*(?P<pct>%)?\s*$"
)


@dataclass(frozen=True)
class Constraint:
    """A user bound ``key op value`` (``value`` in percent of the parent when ``percent``)."""

    key: str
    op: str
    value: float
    percent: bool = False

    def __post_init__(self) -> None:
        if self.op not in ("<=", ">="):
            raise ConfigError(f"constraint {self.key}: operator must be <= or >=, got {self.op!r}")
        if not math.isfinite(self.value) or self.value < 0:
            raise ConfigError(f"constraint {self}: the bound must be a finite non-negative number")

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value:g}{'%' if self.percent else ''}"


def parse_constraint(text: str | Constraint) -> Constraint:
    """``"runtime_ms<=50%"``, ``"memory_mib@b64<=40000"``, ``"attention_layers>=20"`` -> ``Constraint``."""
    if isinstance(text, Constraint):
        return text
    if not isinstance(text, str):
        raise ConfigError(f"constraint must be text like 'runtime_ms<=50%', got {text!r}")
    m = _CONSTRAINT_RE.match(text)
    if not m:
        raise ConfigError(
            f"malformed constraint {text!r}: expected KEY<=VALUE or KEY>=VALUE, VALUE a number or a percentage "
            "of the parent (e.g. runtime_ms<=50%, memory_mib@decode<=40000, attention_layers>=20)"
        )
    try:
        value = float(m["value"])
    except ValueError:
        raise ConfigError(f"malformed constraint {text!r}: {m['value']!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"constraint {text!r}: the bound must be a finite non-negative number, got {m['value']}")
    return Constraint(key=m["key"], op=m["op"], value=value, percent=bool(m["pct"]))


@dataclass(frozen=True)
class Objective:
    """A library metric and whether it is minimised (KL, loss) or maximised (cosine, accuracy)."""

    metric: str
    minimize: bool = True

    @property
    def sign(self) -> float:
        return 1.0 if self.minimize else -1.0

    def __str__(self) -> str:
        return self.metric if self.minimize else f"max:{self.metric}"


def parse_objective(text: str | Objective) -> Objective:
    """``"kl_div"`` (minimised), ``"cosine"`` (maximised by name), or explicit ``"max:NAME"`` / ``"min:NAME"``."""
    if isinstance(text, Objective):
        return text
    sense, _, name = text.rpartition(":")
    name = name.strip()
    if sense not in ("", "min", "max") or not name:
        raise ConfigError(f"malformed objective {text!r}: expected METRIC, min:METRIC or max:METRIC")
    if sense:
        return Objective(name, minimize=sense == "min")
    return Objective(name, minimize=not any(name == m or name.startswith(m + "_") for m in MAXIMISED_METRICS))


@dataclass(frozen=True)
class Row:
    """One constrained cost: block-level bounds (non-block part already subtracted)."""

    key: str  # resolved key: NAME, NAME@SCENARIO or a count
    unit: str  # NAME without scenario (for messages)
    lower: float  # -inf when unbounded
    upper: float  # +inf when unbounded
    offset: float  # non-block part nb[k]
    parent_total: float  # whole-model value of the parent architecture
    labels: tuple[str, ...]  # the user constraints merged into this row


@dataclass(frozen=True)
class Problem:
    """Frozen, solver-ready arrays. ``weights[i]`` (n_i,) and ``costs[i]`` (n_i, K) per layer."""

    library: BlockLibrary = field(repr=False, compare=False)
    objective: Objective
    scenario: str | None
    names: tuple[tuple[str, ...], ...]
    weights: tuple[np.ndarray, ...] = field(repr=False)
    costs: tuple[np.ndarray, ...] = field(repr=False)
    rows: tuple[Row, ...]
    constraints: tuple[Constraint, ...]
    exclusions: tuple[tuple[int, ...], ...] = ()
    min_distance: int = 0

    @property
    def n_layers(self) -> int:
        return len(self.names)

    @property
    def n_rows(self) -> int:
        return len(self.rows)

    @property
    def lower(self) -> np.ndarray:
        return np.array([r.lower for r in self.rows], dtype=np.float64)

    @property
    def upper(self) -> np.ndarray:
        return np.array([r.upper for r in self.rows], dtype=np.float64)

    @property
    def tolerance(self) -> np.ndarray:
        """Absolute feasibility tolerance per row (see the module docstring)."""
        scale = np.zeros(self.n_rows)
        for c in self.costs:
            if c.size:
                scale += np.abs(c).max(axis=0)
        return REL_TOL * np.maximum(1.0, scale)

    def block_totals(self, choices: tuple[int, ...] | np.ndarray) -> np.ndarray:
        return np.sum([self.costs[i][j] for i, j in enumerate(choices)], axis=0).reshape(self.n_rows)

    def is_feasible(self, choices: tuple[int, ...] | np.ndarray) -> bool:
        totals, tol = self.block_totals(choices), self.tolerance
        return bool(np.all(totals <= self.upper + tol) and np.all(totals >= self.lower - tol))

    def value(self, choices: tuple[int, ...] | np.ndarray) -> float:
        """The minimised objective ``sum w`` of an assignment."""
        return float(sum(self.weights[i][j] for i, j in enumerate(choices)))

    def with_exclusions(self, exclusions: tuple[tuple[int, ...], ...], min_distance: int) -> Problem:
        from dataclasses import replace

        return replace(self, exclusions=tuple(map(tuple, exclusions)), min_distance=int(min_distance))

    def with_rows(self, rows: tuple[Row, ...], costs: tuple[np.ndarray, ...]) -> Problem:
        from dataclasses import replace

        return replace(self, rows=rows, costs=_frozen(costs))

    def with_weights(self, weights: tuple[np.ndarray, ...], objective: Objective) -> Problem:
        from dataclasses import replace

        return replace(self, weights=_frozen(weights), objective=objective)


def _frozen(arrays: Any) -> tuple[np.ndarray, ...]:
    out = []
    for a in arrays:
        a = np.array(a, dtype=np.float64)
        a.flags.writeable = False
        out.append(a)
    return tuple(out)


def cap_outliers(costs: list[np.ndarray], rows: tuple[Row, ...]) -> list[np.ndarray]:
    """``costs`` with every bounded row capped as in the module docstring ("Outliers"); the feasible set is kept."""
    if not rows or not costs:
        return costs
    capped = [np.array(c, dtype=np.float64) for c in costs]
    for k, row in enumerate(rows):
        bounds = [abs(b) for b in (row.lower, row.upper) if math.isfinite(b)]
        if not bounds:
            continue
        col_min = np.array([c[:, k].min() for c in capped])
        room = OUTLIER_FACTOR * max(1.0, *bounds, abs(float(col_min.sum())))
        for i, c in enumerate(capped):
            np.minimum(c[:, k], col_min[i] + room, out=c[:, k])
    return capped


# --- resolving keys ------------------------------------------------------------------------------------


def _count(variant: Variant, key: str, layer: int) -> float:
    if key == "parent_layers":
        return float(variant.is_parent)
    spec = variant.spec
    if spec is None:
        raise ConfigError(
            f"constraint on {key} needs block specs, but layer {layer} variant {variant.name!r} has none; "
            "use a library whose variants carry specs"
        )
    if key == "attention_layers":
        return float(not spec.attention.is_no_op)
    if key == "ffn_layers":
        return float(not spec.ffn.is_no_op)
    if key == "mamba_layers":
        return float(not spec.mamba.is_no_op)
    return float(spec.is_no_op)  # no_op_layers


def resolve_scenario_qualifier(library: BlockLibrary, qualifier: str, scenario: str | None) -> str:
    """A scenario name from ``@NAME`` or ``@bN`` (the batch-N profile matching the search's scenario)."""
    if qualifier in library.scenarios:
        return qualifier
    m = re.fullmatch(r"b(\d+)", qualifier)
    if m:
        batch = int(m.group(1))
        base = library.scenarios.get(scenario) if scenario else None
        matches = [
            s.name
            for s in library.scenarios.values()
            if s.batch_size == batch
            and (
                base is None
                or (s.device, s.dtype, s.kind, s.seq_len) == (base.device, base.dtype, base.kind, base.seq_len)
            )
        ]
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise ConfigError(
                f"no scenario measured at batch {batch}"
                + (f" like {base.name!r}" if base else "")
                + f"; this library has: {', '.join(f'{s.name} (batch {s.batch_size})' for s in library.scenarios.values())}"
            )
        raise ConfigError(f"@b{batch} is ambiguous ({', '.join(matches)}); name the scenario instead")
    raise ConfigError(
        f"unknown scenario {qualifier!r}; this library has: {', '.join(library.scenarios) or 'no scenarios'}"
    )


def cost_column(library: BlockLibrary, key: str, scenario: str | None) -> tuple[str, str, list[np.ndarray], float]:
    """``(resolved key, unit name, per-layer cost arrays, non-block part)`` for a cost or count key."""
    name, _, qualifier = key.partition("@")
    if name in COUNT_KEYS and name not in library.all_cost_keys():
        if qualifier:
            raise ConfigError(f"{key}: counts are scenario-free; drop '@{qualifier}'")
        cols = [np.array([_count(v, name, layer.index) for v in layer.variants]) for layer in library.layers]
        return name, name, cols, 0.0
    scen = resolve_scenario_qualifier(library, qualifier, scenario) if qualifier else scenario
    cost_name, cost_scen = library.resolve_cost_key(name if not qualifier else f"{name}@{scen}", scen)
    cols = [np.array([v.cost(cost_name, cost_scen) for v in layer.variants]) for layer in library.layers]
    full = cost_name if cost_scen is None else f"{cost_name}@{cost_scen}"
    return full, cost_name, cols, library.non_block_cost(cost_name, cost_scen)


def _throughput_row(library: BlockLibrary, c: Constraint, scenario: str | None) -> tuple[Constraint, str]:
    """``throughput op T`` as a latency constraint ``runtime_ms op' 1000 * tokens / T`` (percent: inverse ratio)."""
    _, _, qualifier = c.key.partition("@")
    scen = resolve_scenario_qualifier(library, qualifier, scenario) if qualifier else scenario
    if scen is None:
        raise ConfigError(f"{c}: throughput needs a scenario (batch and tokens); this library has none")
    key = f"runtime_ms@{scen}"
    if "runtime_ms" not in library.scenario_cost_keys(scen):
        raise ConfigError(f"{c}: scenario {scen!r} has no runtime_ms to turn throughput into latency")
    op = "<=" if c.op == ">=" else ">="
    if c.value == 0:
        if c.op == ">=":  # throughput >= 0 always holds
            return Constraint(key, ">=", 0.0), key
        raise ConfigError(f"{c}: a throughput bound of 0 cannot be met; give a positive tokens/s")
    if c.percent:
        return Constraint(key, op, 100.0 * 100.0 / c.value, percent=True), key
    tokens = library.scenarios[scen].tokens_per_run
    return Constraint(key, op, 1000.0 * tokens / c.value), key


def build_problem(
    library: BlockLibrary,
    objective: str | Objective,
    constraints: tuple[str | Constraint, ...] | list[str | Constraint] = (),
    *,
    scenario: str | None = None,
) -> Problem:
    """Resolve objective and constraints against ``library`` into solver-ready arrays (ConfigError on bad input)."""
    obj = parse_objective(objective)
    if obj.metric not in library.metric_keys:
        raise ConfigError(
            f"unknown objective metric {obj.metric!r}; this library has: {', '.join(library.metric_keys) or 'none'}"
        )
    scen = library.resolve_scenario(scenario)
    parsed = tuple(parse_constraint(c) for c in constraints)

    merged: dict[str, dict[str, Any]] = {}
    for c in parsed:
        original = str(c)
        if c.key.partition("@")[0] == THROUGHPUT:
            c, _ = _throughput_row(library, c, scen)
        full, unit, cols, offset = cost_column(library, c.key, scen)
        entry = merged.setdefault(
            full, {"unit": unit, "cols": cols, "offset": offset, "lo": -math.inf, "hi": math.inf, "labels": []}
        )
        parent_total = (
            sum(float(col[layer.parent_index]) for col, layer in zip(cols, library.layers, strict=True)) + offset
        )
        bound = c.value * parent_total / 100.0 if c.percent else c.value
        if c.op == "<=":
            entry["hi"] = min(entry["hi"], bound)
        else:
            entry["lo"] = max(entry["lo"], bound)
        entry["parent_total"] = parent_total
        entry["labels"].append(original)

    rows, columns = [], []
    for full, e in merged.items():
        if e["lo"] > e["hi"]:
            raise ConfigError(f"constraints {' and '.join(e['labels'])} contradict each other: no {full} is both")
        rows.append(
            Row(
                key=full,
                unit=e["unit"],
                lower=e["lo"] - e["offset"],
                upper=e["hi"] - e["offset"],
                offset=e["offset"],
                parent_total=e["parent_total"],
                labels=tuple(e["labels"]),
            )
        )
        columns.append(e["cols"])
    costs = [
        np.stack([columns[k][i] for k in range(len(rows))], axis=1) if rows else np.zeros((len(layer.variants), 0))
        for i, layer in enumerate(library.layers)
    ]
    weights = [obj.sign * np.array([v.metrics[obj.metric] for v in layer.variants]) for layer in library.layers]
    costs = cap_outliers(costs, tuple(rows))
    return Problem(
        library=library,
        objective=obj,
        scenario=scen,
        names=tuple(tuple(v.name for v in layer.variants) for layer in library.layers),
        weights=_frozen(weights),
        costs=_frozen(costs),
        rows=tuple(rows),
        constraints=parsed,
    )
