"""What an elastic build is asked for: ``ElasticRequest``, validated once, with every problem listed at its field.

``ElasticRequest(...)`` raises ``RequestError`` listing what is wrong; ``ElasticRequest.from_dict`` reads a REST body
or job spec (``space`` and ``train`` as objects of their own fields) the same way. ``build.build_elastic`` runs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from puzzle.elastic.distill import ElasticTrainConfig
from puzzle.elastic.select import DEFAULT_COST
from puzzle.elastic.space import ElasticSpace, parse_budgets
from puzzle.errors import ConfigError
from puzzle.pipeline.request import BUILT_METRICS
from puzzle.search.request import Problems, RequestError
from puzzle.targets import DEFAULT_TARGET, get_target

SELECTIONS = ("mip", "router")
COSTS = ("num_params", "memory_mib", "runtime_ms")  # what a nested library records (runtime_ms: measured only)


@dataclass(frozen=True)
class ElasticRequest:
    """Everything ``build_elastic`` needs; validated here once."""

    parent: str
    budgets: tuple[float, ...]
    out: str
    corpus: str | None = None
    space: ElasticSpace = field(default_factory=ElasticSpace)
    cost: str = DEFAULT_COST
    objective: str = "kl_div"
    train: ElasticTrainConfig = field(default_factory=ElasticTrainConfig)
    calibration_rows: int = 8
    holdout_rows: int = 16
    score_seq_len: int = 128
    measure_latency: bool = False
    device: str = "cpu"
    held_out_fraction: float = 0.05  # the corpus split scoring reads from (as the parent's training split it)
    selection: str = "mip"  # "mip": the exact MIP picks each budget; "router": a router trained jointly with KD
    target: str | None = DEFAULT_TARGET  # choose only children this engine loads (None: any)

    def __post_init__(self) -> None:
        problems: Problems = []
        try:
            object.__setattr__(self, "budgets", parse_budgets(self.budgets))
        except ConfigError as exc:
            problems.append((("budgets",), str(exc)))
        problems += _problems(self)
        if problems:
            raise RequestError(problems)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ElasticRequest:
        """``data`` as a request: the fields by name, ``space`` and ``train`` as objects of their own fields (a
        null takes the default, but for ``corpus`` and ``target``, where it means the default corpus and any
        engine; other keys are ignored), listing every problem at once (``RequestError``)."""
        problems: Problems = []
        given = {k: v for k, v in data.items() if v is not None or k in ("corpus", "target")}
        required = {"parent": "", "budgets": (1.0,), "out": ""}  # stand-ins, so every other problem is found too
        for name in required:
            if name not in given:
                problems.append(((name,), f"{name} is required"))
        if not isinstance(given.get("budgets", ()), str | list | tuple):
            problems.append((("budgets",), f"budgets must be a list of fractions, got {given['budgets']!r}"))
            given.pop("budgets")
        space = _part(ElasticSpace, given.get("space"), "space", problems)
        train = _part(ElasticTrainConfig, given.get("train"), "train", problems)
        names = {f.name for f in fields(cls)} - {"space", "train"}
        request = None
        try:
            request = cls(**(required | {k: v for k, v in given.items() if k in names}), space=space, train=train)
        except RequestError as exc:
            problems += exc.problems
        if problems or request is None:
            raise RequestError(problems)
        return request

    def to_dict(self) -> dict[str, Any]:
        """Everything that decides the result (the output folder itself aside)."""
        return {
            "parent": str(Path(self.parent).resolve()),
            "budgets": list(self.budgets),
            "corpus": self.corpus,
            "space": self.space.to_dict(),
            "cost": self.cost,
            "objective": self.objective,
            "train": self.train.to_dict(),
            "rows": [self.calibration_rows, self.holdout_rows, self.score_seq_len],
            "measure_latency": self.measure_latency,
            "device": self.device,
            "held_out_fraction": self.held_out_fraction,
            "selection": self.selection,
            "target": self.target,
        }


def _part(kind: Any, data: Any, name: str, problems: Problems) -> Any:
    """``kind`` (``ElasticSpace`` or ``ElasticTrainConfig``) made of the object ``data`` (None: the default); its
    problems are ``name``'s, and the default stands in for it then."""
    known = [f.name for f in fields(kind)]
    if data is None:
        return kind()
    if not isinstance(data, Mapping):
        problems.append(((name,), f"{name} must be an object of {', '.join(known)}, got {data!r}"))
        return kind()
    unknown = sorted(set(data) - set(known))
    if unknown:
        problems.append(((name,), f"unknown {name} settings {', '.join(map(str, unknown))}; known: {', '.join(known)}"))
    given = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known and v is not None}
    try:
        return kind(**given)
    except (ConfigError, TypeError, ValueError) as exc:
        problems.append(((name,), str(exc)))
        return kind()


def _problems(r: ElasticRequest) -> Problems:
    problems: Problems = []
    for name in ("calibration_rows", "holdout_rows", "score_seq_len"):
        value = getattr(r, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            problems.append(((name,), f"{name} must be a positive integer, got {value!r}"))
    fraction = r.held_out_fraction
    if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0 < fraction < 1:
        problems.append((("held_out_fraction",), f"held_out_fraction must lie in (0, 1), got {fraction!r}"))
    if r.selection not in SELECTIONS:
        problems.append((("selection",), f"selection must be mip or router, got {r.selection!r}"))
    elif r.selection == "router" and r.train.steps == 0:
        problems.append((("train", "tokens"), "selection router trains the router: give distillation tokens"))
    cost = r.cost.partition("@")[0] if isinstance(r.cost, str) else None
    if cost not in COSTS:
        problems.append(
            (("cost",), f"unknown cost {r.cost!r}: a nested library has {', '.join(COSTS)} (NAME or NAME@SCENARIO)")
        )
    elif cost == "runtime_ms" and not r.measure_latency:
        problems.append((("cost",), "cost runtime_ms needs measure_latency: the slices' latency is measured only then"))
    if r.objective not in BUILT_METRICS:
        problems.append(
            (("objective",), f"unknown objective {r.objective!r}: choose one of {', '.join(BUILT_METRICS)}")
        )
    if r.target is not None:
        try:
            get_target(r.target)
        except ConfigError as exc:
            problems.append((("target",), f"{exc} (None: any)"))
    return problems
