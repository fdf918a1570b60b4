"""Typed search requests, parsed once at the edge (CLI flags, a REST body, a job's stored spec).

``SearchRequest`` says what to search for: a mode (``solve`` one architecture, the Pareto ``frontier`` of the
objective against one cost axis, a ``diverse`` pool of ``n`` solutions ``d`` layers apart), the objective metric,
the constraints (already parsed into ``puzzle.search.problem.Constraint``), scenario, solver and limits.
``Architecture`` is one chosen architecture: the index of the variant chosen per layer (names derived from the
library when needed).

``SearchRequest.from_dict`` reads the JSON shape a REST body and a job spec share (``d`` is the diversity) and
reports every problem at once (``RequestError``, each problem with its location); with a library it also checks
the names that only the library knows (metric, scenario, axis, cost keys of each constraint).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from puzzle.errors import ConfigError, InfeasibleError
from puzzle.library import BlockLibrary, Variant
from puzzle.search.problem import Constraint, build_problem, parse_constraint
from puzzle.search.solvers import SOLVER_NAMES
from puzzle.targets import TARGETS

SEARCH_MODES = ("solve", "frontier", "diverse")
GREEDY = "greedy"  # the paper's greedy baseline: a solver choice of the CLI's solve mode
DEFAULT_OBJECTIVE = "kl_div"

Loc = tuple[str | int, ...]
Problems = list[tuple[Loc, str]]


class RequestError(ConfigError):
    """A request with one or more problems, each at a location (``("constraints", 1)``)."""

    def __init__(self, problems: Problems):
        self.problems = list(problems)
        super().__init__("; ".join(f"{'.'.join(str(p) for p in loc)}: {msg}" if loc else msg for loc, msg in problems))


def constraint_text(c: Constraint) -> str:
    """``c`` as text that parses back to an equal ``Constraint`` (``str(c)`` rounds to 6 digits)."""
    value = c.value
    number = str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return f"{c.key}{c.op}{number}{'%' if c.percent else ''}"


def shape_problems(mode: str, axis: str | None, lo: float | None, hi: float | None) -> Problems:
    """What a search asks that no library could give (also the REST schema's own check)."""
    problems: Problems = []
    if mode == "frontier" and not axis:
        problems.append((("axis",), "mode 'frontier' needs 'axis' (the cost to sweep, e.g. runtime_ms)"))
    if lo is not None and hi is not None and lo > hi:
        problems.append((("lo",), f"lo ({lo}) must not exceed hi ({hi})"))
    return problems


@dataclass(frozen=True)
class SearchRequest:
    """One search over a block library (see the module docstring)."""

    mode: str = "solve"
    objective: str = DEFAULT_OBJECTIVE
    constraints: tuple[Constraint, ...] = ()
    scenario: str | None = None
    axis: str | None = None  # frontier: the cost to sweep
    lo: float | None = None  # frontier: smallest axis value kept
    hi: float | None = None  # frontier: largest axis value kept
    solver: str | None = None  # None: the default (dp, exact); "greedy": the baseline (solve only)
    n: int = 5  # diverse: number of solutions
    diversity: int = 1  # diverse: layers each pair of solutions differs in
    time_limit: float | None = None  # seconds per MIP solve
    target: str | None = None  # a deployment target (puzzle.targets): only variants it loads are chosen

    def __post_init__(self) -> None:
        problems = _field_problems(self)
        if problems:
            raise RequestError(problems)

    @property
    def constraint_texts(self) -> list[str]:
        return [constraint_text(c) for c in self.constraints]

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape ``from_dict`` reads (the REST body's field names)."""
        return {
            "mode": self.mode,
            "objective": self.objective,
            "constraints": self.constraint_texts,
            "scenario": self.scenario,
            "axis": self.axis,
            "lo": self.lo,
            "hi": self.hi,
            "solver": self.solver,
            "n": self.n,
            "d": self.diversity,
            "time_limit": self.time_limit,
            "target": self.target,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, library: BlockLibrary | None = None) -> SearchRequest:
        """Parse ``data`` (keys of ``to_dict``; others are ignored), listing every problem at once; with
        ``library``, names only the library knows are checked too (``check``)."""
        problems: Problems = []
        constraints: list[Constraint] = []
        raw = data.get("constraints") or ()
        if isinstance(raw, str) or not isinstance(raw, Sequence):
            problems.append((("constraints",), "constraints must be a list of texts like 'runtime_ms<=50%'"))
            raw = ()
        bad: set[int] = set()
        for i, text in enumerate(raw):
            try:
                constraints.append(parse_constraint(text))
            except ConfigError as exc:
                problems.append((("constraints", i), str(exc)))
                bad.add(i)
        fields: dict[str, Any] = {
            "mode": data.get("mode", "solve"),
            "objective": data.get("objective", DEFAULT_OBJECTIVE),
            "scenario": data.get("scenario"),
            "axis": data.get("axis"),
            "lo": _number(data.get("lo"), "lo", problems),
            "hi": _number(data.get("hi"), "hi", problems),
            "solver": data.get("solver"),
            "n": _integer(data.get("n", 5), "n", problems),
            "diversity": _integer(data.get("d", 1), "d", problems),
            "time_limit": _number(data.get("time_limit"), "time_limit", problems),
            "target": data.get("target"),
        }
        try:
            request = cls(constraints=tuple(constraints), **fields)
        except RequestError as exc:
            problems += exc.problems
            raise RequestError(problems) from None
        if library is not None:
            # constraints that did not parse are reported above; the rest keep their positions
            positions = [i for i in range(len(raw)) if i not in bad]
            for loc, msg in request.problems(library):
                at = len(loc) > 1 and loc[0] == "constraints"
                problems.append((("constraints", positions[int(loc[1])]) if at else loc, msg))
        if problems:
            raise RequestError(problems)
        return request

    def problems(self, library: BlockLibrary) -> Problems:
        """Every name of this request that ``library`` does not know, each with its location (the search
        engine's own parser resolves the objective and each constraint separately)."""
        problems: Problems = []
        scenario = self.scenario
        try:
            library.resolve_scenario(scenario)
        except ConfigError as exc:
            problems.append((("scenario",), str(exc)))
            scenario = None
        objective = self.objective
        try:
            build_problem(library, objective, (), scenario=scenario)
        except ConfigError as exc:
            problems.append((("objective",), str(exc)))
            objective = library.metric_keys[0]
        if self.axis:
            try:
                library.resolve_cost_key(self.axis, scenario)
            except ConfigError as exc:
                problems.append((("axis",), str(exc)))
        for i, c in enumerate(self.constraints):
            try:
                build_problem(library, objective, (c,), scenario=scenario)
            except ConfigError as exc:
                problems.append((("constraints", i), str(exc)))
        if self.mode == "diverse" and self.diversity > library.n_layers:
            problems.append((("d",), f"d ({self.diversity}) must not exceed the library's {library.n_layers} layers"))
        return problems

    def infeasibility(self, library: BlockLibrary) -> tuple[tuple[str | int, ...], InfeasibleError] | None:
        """Where and why no architecture can meet the constraints, as the search would report it (the binding
        constraint and its best achievable value, ``puzzle.search.diagnose``); None when a cheap bound per
        constraint row finds nothing (it finds every constraint infeasible on its own, never a false one).
        For a request without ``problems``: what a job submission checks before queueing."""
        problem = build_problem(library, self.objective, self.constraints, scenario=self.scenario)
        if not problem.n_rows or not problem.costs:
            return None
        smallest = np.sum([c.min(axis=0) for c in problem.costs], axis=0)
        largest = np.sum([c.max(axis=0) for c in problem.costs], axis=0)
        tol = problem.tolerance
        if np.all(smallest <= problem.upper + tol) and np.all(largest >= problem.lower - tol):
            return None
        from puzzle.search.diagnose import diagnose

        error = diagnose(problem)
        texts = self.constraint_texts
        where: tuple[str | int, ...] = ("constraints",)
        if error.constraint in texts:
            where = ("constraints", texts.index(error.constraint))
        return where, error

    def check(self, library: BlockLibrary) -> None:
        """Raise ``RequestError`` listing every problem of this request against ``library``."""
        problems = self.problems(library)
        if problems:
            raise RequestError(problems)


def _field_problems(r: SearchRequest) -> Problems:
    problems: Problems = []
    if r.mode not in SEARCH_MODES:
        problems.append((("mode",), f"unknown mode {r.mode!r}; choose one of {', '.join(SEARCH_MODES)}"))
    if not isinstance(r.objective, str) or not r.objective.strip():
        problems.append((("objective",), "objective must name a metric of the library, e.g. kl_div"))
    if not all(isinstance(c, Constraint) for c in r.constraints):
        problems.append((("constraints",), "constraints must be parsed (puzzle.search.problem.parse_constraint)"))
    solvers = (*SOLVER_NAMES, GREEDY)
    if r.solver is not None and r.solver not in solvers:
        problems.append((("solver",), f"unknown solver {r.solver!r}; choose one of {', '.join(solvers)}"))
    if r.solver == GREEDY and r.mode != "solve":
        problems.append((("solver",), "the greedy baseline gives one solution: use mode 'solve' with it"))
    if isinstance(r.n, int) and r.n < 1:
        problems.append((("n",), f"n must be at least 1, got {r.n}"))
    if isinstance(r.diversity, int) and r.diversity < 1:
        problems.append((("d",), f"d (diversity) must be at least 1, got {r.diversity}"))
    if r.time_limit is not None and not r.time_limit > 0:
        problems.append((("time_limit",), f"time_limit must be a positive number of seconds, got {r.time_limit}"))
    if r.target is not None and r.target not in TARGETS:
        problems.append((("target",), f"unknown target {r.target!r}; choose one of {', '.join(TARGETS)}"))
    problems += shape_problems(r.mode, r.axis, r.lo, r.hi)
    return problems


def _number(value: Any, name: str, problems: Problems) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number) or isinstance(value, bool):
        problems.append(((name,), f"{name} must be a finite number, got {value!r}"))
        return None
    return number


def _integer(value: Any, name: str, problems: Problems) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(((name,), f"{name} must be an integer, got {value!r}"))
        return 1
    return value


@dataclass(frozen=True)
class Architecture:
    """One architecture of a library: ``choices[i]`` is the index of the variant chosen for layer i."""

    choices: tuple[int, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.choices, tuple):  # a list or an array row: as plain ints (a tuple is kept as is)
            object.__setattr__(self, "choices", tuple(int(j) for j in self.choices))

    @classmethod
    def from_names(cls, library: BlockLibrary, names: Sequence[str]) -> Architecture:
        """The architecture whose layer i uses the variant named ``names[i]`` (LibraryError if unknown)."""
        if len(names) != library.n_layers:
            raise ConfigError(f"an architecture of this library needs {library.n_layers} layers, got {len(names)}")
        choices = []
        for layer, name in zip(library.layers, names, strict=True):
            layer.variant(name)  # LibraryError naming the layer when unknown
            choices.append(next(j for j, v in enumerate(layer.variants) if v.name == name))
        return cls(tuple(choices))

    def check(self, library: BlockLibrary) -> None:
        if len(self.choices) != library.n_layers:
            raise ConfigError(
                f"an architecture of this library needs {library.n_layers} choices, got {len(self.choices)}"
            )
        for layer, j in zip(library.layers, self.choices, strict=True):
            if not 0 <= j < len(layer.variants):
                raise ConfigError(f"layer {layer.index}: variant index {j} out of range 0..{len(layer.variants) - 1}")

    def variants(self, library: BlockLibrary) -> list[Variant]:
        self.check(library)
        return [layer.variants[j] for layer, j in zip(library.layers, self.choices, strict=True)]

    def names(self, library: BlockLibrary) -> list[str]:
        return [v.name for v in self.variants(library)]
