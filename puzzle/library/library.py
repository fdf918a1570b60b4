"""The block library: per layer, the variants the search may choose from, with their quality and costs.

It is the artifact every stage shares (workers build it, the search reads it, the service stores and
draws it), so its format is fixed here and versioned by ``SCHEMA_VERSION``.

Layout on disk
    ``DIR/library.json``       this module's ``BlockLibrary.to_dict()`` (UTF-8, sorted keys), written atomically
    ``DIR/weights/<sha>.safetensors``  variant weights, content-addressed; ``Variant.weights`` holds the path
                               relative to ``DIR`` (``None`` until the builder fills it)

Objects (frozen dataclasses; mapping fields are plain dicts that must not be mutated)
    ``BlockLibrary``  ``layers`` (one ``Layer`` per parent layer, in order), ``scenarios`` (name ->
                      ``Scenario``), ``default_scenario``, ``family`` and ``hidden_size`` of the parent, ``parent``
                      (free-form provenance: name, digest, source), non-block costs, ``notes``.
    ``Layer``         ``index`` and its ``variants``; exactly one variant per layer is the parent's block.
    ``Variant``       ``name`` (unique within its layer), ``is_parent``, ``spec`` (a ``puzzle.arch.BlockSpec`` when
                      known), ``metrics`` (quality, e.g. ``kl_div``, ``lm_loss``, ``cosine``: one value per variant,
                      replace-one-block), ``costs`` (scenario-free, e.g. ``num_params``), ``scenario_costs``
                      (scenario name -> {``runtime_ms``, ``memory_mib``, ...}) and ``weights``.
    ``Scenario``      a measured workload: ``kind`` (prefill | decode), ``batch_size``, ``seq_len`` (prefill: input
                      length; decode: context length held in the KV cache), ``device``, ``dtype`` and
                      ``tokens_per_sequence`` (tokens each sequence produces per measured run: ``seq_len`` for prefill,
                      1 for a decode step), which turns a throughput into a latency.

Cost keys
    A cost is addressed by ``NAME`` or ``NAME@SCENARIO``. ``NAME`` is looked up first among the scenario-free
    ``costs``; otherwise it is a scenario cost of the scenario in use (the search's ``--scenario``, else
    ``default_scenario``). ``NAME@SCENARIO`` always means that scenario's cost, so one search can bound latency in
    several scenarios at once. Every variant of a library carries the same metric keys, the same cost keys
    and every declared scenario with the same cost keys (validated on load).

Non-block costs
    ``non_block_costs`` / ``non_block_scenario_costs`` hold what the blocks do not (embedding, final norm, LM
    head): whole-model cost = sum of the chosen blocks' costs + the non-block cost. A key missing there counts
    as 0 (unknown), and ``notes["non_block"]`` says so. Search budgets are on whole-model costs; a ``%`` budget
    is a fraction of the parent's whole-model cost, and the non-block part is subtracted before the blocks
    share what is left (with unknown non-block costs this is exactly a % of the parent's summed block costs,
    as in the published Puzzle demo).

Digest
    ``digest()`` is the SHA-256 of the canonical JSON of ``to_dict()`` (sorted keys, no whitespace), so two
    libraries with equal content have equal digests wherever they were built.

Importers
    ``nvlabs.py`` reads the NVlabs Puzzle demo format into this one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from puzzle.arch import BlockSpec
from puzzle.errors import ConfigError, LibraryError
from puzzle.files import write_text
from puzzle.library.scenario import Scenario, check_sizes, numbers, scenario_numbers, size

SCHEMA_VERSION = 1
LIBRARY_FILE = "library.json"


@dataclass(frozen=True)
class Variant:
    """One candidate block for a layer: its spec, quality metrics and costs."""

    name: str
    is_parent: bool = False
    spec: BlockSpec | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)
    scenario_costs: dict[str, dict[str, float]] = field(default_factory=dict)
    weights: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise LibraryError(f"variant name must be a non-empty string, got {self.name!r}")
        owner = f"variant {self.name!r}"
        if not isinstance(self.is_parent, bool):
            raise LibraryError(f"{owner}: is_parent must be true or false, got {self.is_parent!r}")
        if self.spec is not None and not isinstance(self.spec, BlockSpec):
            raise LibraryError(f"{owner}: spec must be a BlockSpec, got {type(self.spec).__name__}")
        check_sizes(f"{owner}.spec", self.spec.to_dict() if self.spec is not None else {})
        object.__setattr__(self, "metrics", numbers(f"{owner}.metrics", self.metrics, nonnegative=False))
        object.__setattr__(self, "costs", numbers(f"{owner}.costs", self.costs, nonnegative=True))
        object.__setattr__(self, "scenario_costs", scenario_numbers(f"{owner}.scenario_costs", self.scenario_costs))
        if self.weights is not None and (
            not isinstance(self.weights, str) or os.path.isabs(self.weights) or ".." in Path(self.weights).parts
        ):
            raise LibraryError(f"{owner}: weights must be a path relative to the library folder, got {self.weights!r}")

    def cost(self, name: str, scenario: str | None = None) -> float:
        """The cost ``name`` (scenario-free first, else of ``scenario``); KeyError when absent."""
        if name in self.costs:
            return self.costs[name]
        if scenario is None:
            raise KeyError(name)
        return self.scenario_costs[scenario][name]

    def flat_costs(self) -> dict[str, float]:
        """Every cost under its full key: ``NAME`` for scenario-free ones, ``NAME@SCENARIO`` for the rest."""
        out = dict(self.costs)
        for scenario, costs in self.scenario_costs.items():
            out.update({f"{k}@{scenario}": v for k, v in costs.items()})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "is_parent": self.is_parent,
            "spec": self.spec.to_dict() if self.spec is not None else None,
            "metrics": dict(self.metrics),
            "costs": dict(self.costs),
            "scenario_costs": {s: dict(c) for s, c in self.scenario_costs.items()},
            "weights": self.weights,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Variant:
        if not isinstance(data, Mapping):
            raise LibraryError(f"variant: expected an object, got {type(data).__name__}")
        known = {"name", "is_parent", "spec", "metrics", "costs", "scenario_costs", "weights"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LibraryError(f"variant {data.get('name')!r}: unknown field(s) {', '.join(unknown)}")
        if "name" not in data:
            raise LibraryError("variant: missing field name")
        spec = data.get("spec")
        if spec is not None:
            try:
                spec = BlockSpec.from_dict(spec)
            except ConfigError as exc:
                raise LibraryError(f"variant {data['name']!r}: bad spec: {exc}") from exc
        return cls(
            name=data["name"],
            is_parent=data.get("is_parent", False),
            spec=spec,
            metrics=data.get("metrics", {}),
            costs=data.get("costs", {}),
            scenario_costs=data.get("scenario_costs", {}),
            weights=data.get("weights"),
        )


@dataclass(frozen=True)
class Layer:
    """The variants of one parent layer; exactly one of them is the parent's own block."""

    index: int
    variants: tuple[Variant, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "variants", tuple(self.variants))
        owner = f"layer {self.index}"
        if not self.variants:
            raise LibraryError(f"{owner}: has no variants; every layer needs at least its parent block")
        seen: set[str] = set()
        for variant in self.variants:
            if not isinstance(variant, Variant):
                raise LibraryError(f"{owner}: variants must be Variant objects, got {type(variant).__name__}")
            if variant.name in seen:
                raise LibraryError(f"{owner}: variant name {variant.name!r} appears twice")
            seen.add(variant.name)
        parents = [v.name for v in self.variants if v.is_parent]
        if len(parents) != 1:
            raise LibraryError(
                f"{owner}: exactly one variant must have is_parent=true, found {len(parents)}"
                + (f" ({', '.join(map(repr, parents))})" if parents else "")
            )

    @property
    def parent(self) -> Variant:
        return next(v for v in self.variants if v.is_parent)

    @property
    def parent_index(self) -> int:
        return next(j for j, v in enumerate(self.variants) if v.is_parent)

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise LibraryError(f"layer {self.index}: no variant named {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "variants": [v.to_dict() for v in self.variants]}


@dataclass(frozen=True)
class BlockLibrary:
    """Per-layer variants with quality and costs, plus the scenarios the costs were measured in."""

    layers: tuple[Layer, ...]
    scenarios: dict[str, Scenario] = field(default_factory=dict)
    default_scenario: str | None = None
    family: str | None = None
    hidden_size: int | None = None
    parent: dict[str, Any] = field(default_factory=dict)
    non_block_costs: dict[str, float] = field(default_factory=dict)
    non_block_scenario_costs: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        if self.schema_version != SCHEMA_VERSION:
            raise LibraryError(
                f"library schema_version {self.schema_version!r} is not supported (this Puzzle reads {SCHEMA_VERSION}); "
                "re-import or rebuild the library with this version"
            )
        if not self.layers:
            raise LibraryError("library: has no layers")
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise LibraryError(f"library: layer {i} must be a Layer, got {type(layer).__name__}")
            if layer.index != i:
                raise LibraryError(f"library: layer at position {i} has index {layer.index}; indices must be 0..L-1")
        for name, scenario in self.scenarios.items():
            if not isinstance(scenario, Scenario) or scenario.name != name:
                raise LibraryError(f"library: scenario entry {name!r} must be a Scenario named {name!r}")
        if self.default_scenario is None and len(self.scenarios) == 1:
            object.__setattr__(self, "default_scenario", next(iter(self.scenarios)))
        if self.default_scenario is not None and self.default_scenario not in self.scenarios:
            raise LibraryError(
                f"library: default_scenario {self.default_scenario!r} is not one of the scenarios "
                f"({', '.join(self.scenarios) or 'none declared'})"
            )
        if self.hidden_size is not None and (not isinstance(self.hidden_size, int) or self.hidden_size <= 0):
            raise LibraryError(f"library: hidden_size must be a positive integer, got {self.hidden_size!r}")
        if self.hidden_size is not None:
            size("library: hidden_size", self.hidden_size)
        object.__setattr__(self, "non_block_costs", numbers("non_block_costs", self.non_block_costs, nonnegative=True))
        object.__setattr__(
            self,
            "non_block_scenario_costs",
            scenario_numbers("non_block_scenario_costs", self.non_block_scenario_costs),
        )
        self._check_consistent()

    def _check_consistent(self) -> None:
        first = self.layers[0].variants[0]
        metric_keys, cost_keys = set(first.metrics), set(first.costs)
        scenario_keys = {s: set(first.scenario_costs.get(s, {})) for s in self.scenarios}
        for s in self.non_block_scenario_costs:
            if s not in self.scenarios:
                raise LibraryError(
                    f"non_block_scenario_costs: unknown scenario {s!r} (declared: {', '.join(self.scenarios)})"
                )
        for layer in self.layers:
            for v in layer.variants:
                owner = f"layer {layer.index} variant {v.name!r}"
                if set(v.metrics) != metric_keys:
                    raise LibraryError(
                        f"{owner}: metrics {sorted(v.metrics)} differ from the library's {sorted(metric_keys)}"
                    )
                if set(v.costs) != cost_keys:
                    raise LibraryError(
                        f"{owner}: costs {sorted(v.costs)} differ from the library's {sorted(cost_keys)}"
                    )
                for s in v.scenario_costs:
                    if s not in self.scenarios:
                        raise LibraryError(
                            f"{owner}: costs for unknown scenario {s!r} (declared: {', '.join(self.scenarios)})"
                        )
                for s, keys in scenario_keys.items():
                    got = set(v.scenario_costs.get(s, {}))
                    if got != keys:
                        raise LibraryError(
                            f"{owner}: scenario {s!r} costs {sorted(got)} differ from the library's {sorted(keys)}"
                        )
                    clash = keys & cost_keys
                    if clash:
                        raise LibraryError(
                            f"{owner}: cost {sorted(clash)[0]!r} is both scenario-free and in scenario {s!r}"
                        )

    # --- queries ---------------------------------------------------------------------------------------

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    @property
    def n_variants(self) -> int:
        return sum(len(layer.variants) for layer in self.layers)

    @property
    def metric_keys(self) -> tuple[str, ...]:
        return tuple(sorted(self.layers[0].variants[0].metrics))

    @property
    def cost_keys(self) -> tuple[str, ...]:
        """Scenario-free cost names."""
        return tuple(sorted(self.layers[0].variants[0].costs))

    def scenario_cost_keys(self, scenario: str) -> tuple[str, ...]:
        return tuple(sorted(self.layers[0].variants[0].scenario_costs.get(scenario, {})))

    def all_cost_keys(self) -> tuple[str, ...]:
        """Every full cost key: ``NAME`` (scenario-free) and ``NAME@SCENARIO``."""
        keys = list(self.cost_keys)
        for s in self.scenarios:
            keys += [f"{k}@{s}" for k in self.scenario_cost_keys(s)]
        return tuple(keys)

    def resolve_scenario(self, scenario: str | None) -> str | None:
        """The scenario a search uses: ``scenario`` if given (must exist), else the default."""
        if scenario is None:
            return self.default_scenario
        if scenario not in self.scenarios:
            raise ConfigError(
                f"unknown scenario {scenario!r}; this library has: {', '.join(self.scenarios) or 'no scenarios'}"
            )
        return scenario

    def resolve_cost_key(self, key: str, scenario: str | None = None) -> tuple[str, str | None]:
        """``(name, scenario or None)`` for a cost key ``NAME`` or ``NAME@SCENARIO`` (ConfigError if unknown)."""
        name, _, qualifier = key.partition("@")
        if qualifier:
            scen = self.resolve_scenario(qualifier)
        elif name in self.cost_keys:
            return name, None
        else:
            scen = self.resolve_scenario(scenario)
        if scen is not None and name in self.scenario_cost_keys(scen):
            return name, scen
        raise ConfigError(f"unknown cost {key!r}; this library has: {', '.join(self.all_cost_keys()) or 'no costs'}")

    def non_block_cost(self, name: str, scenario: str | None) -> float:
        """The non-block part of cost ``name`` (0 when unknown)."""
        if scenario is None:
            return self.non_block_costs.get(name, 0.0)
        return self.non_block_scenario_costs.get(scenario, {}).get(name, 0.0)

    def parent_variants(self) -> tuple[Variant, ...]:
        return tuple(layer.parent for layer in self.layers)

    # --- serialisation -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "family": self.family,
            "hidden_size": self.hidden_size,
            "parent": dict(self.parent),
            "scenarios": {name: s.to_dict() for name, s in self.scenarios.items()},
            "default_scenario": self.default_scenario,
            "non_block_costs": dict(self.non_block_costs),
            "non_block_scenario_costs": {s: dict(c) for s, c in self.non_block_scenario_costs.items()},
            "notes": dict(self.notes),
            "layers": [layer.to_dict() for layer in self.layers],
        }

    @classmethod
    def from_dict(cls, data: Any) -> BlockLibrary:
        if not isinstance(data, Mapping):
            raise LibraryError(f"library: expected a JSON object, got {type(data).__name__}")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise LibraryError(
                f"library schema_version {version!r} is not supported (this Puzzle reads {SCHEMA_VERSION}); "
                "re-import or rebuild the library with this version"
            )
        known = {
            "schema_version",
            "family",
            "hidden_size",
            "parent",
            "scenarios",
            "default_scenario",
            "non_block_costs",
            "non_block_scenario_costs",
            "notes",
            "layers",
        }
        unknown = sorted(set(data) - known)
        if unknown:
            raise LibraryError(f"library: unknown field(s) {', '.join(unknown)}")
        raw_layers = data.get("layers")
        if not isinstance(raw_layers, list):
            raise LibraryError("library: 'layers' must be a list of layers")
        layers = []
        for i, raw in enumerate(raw_layers):
            if not isinstance(raw, Mapping) or not isinstance(raw.get("variants"), list):
                raise LibraryError(f"library: layer {i} must be an object with a 'variants' list")
            variants = []
            for j, v in enumerate(raw["variants"]):
                try:
                    variants.append(Variant.from_dict(v))
                except LibraryError as exc:
                    raise LibraryError(f"layer {i} variant {j}: {exc}") from exc
            layers.append(Layer(index=raw.get("index", i), variants=tuple(variants)))
        scenarios_raw = data.get("scenarios") or {}
        if not isinstance(scenarios_raw, Mapping):
            raise LibraryError("library: 'scenarios' must be an object name -> scenario")
        scenarios = {}
        for name, raw in scenarios_raw.items():
            scenario = Scenario.from_dict(raw)
            if scenario.name != name:
                raise LibraryError(f"library: scenario key {name!r} holds a scenario named {scenario.name!r}")
            scenarios[name] = scenario
        return cls(
            layers=tuple(layers),
            scenarios=scenarios,
            default_scenario=data.get("default_scenario"),
            family=data.get("family"),
            hidden_size=data.get("hidden_size"),
            parent=dict(data.get("parent") or {}),
            non_block_costs=data.get("non_block_costs") or {},
            non_block_scenario_costs=data.get("non_block_scenario_costs") or {},
            notes=dict(data.get("notes") or {}),
        )

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, indent=1, ensure_ascii=False) + "\n"

    def digest(self) -> str:
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``DIR/library.json`` atomically (temp file in the same folder, then rename); returns its path."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / LIBRARY_FILE
        write_text(target, self.to_json())
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BlockLibrary:
        """Read a library folder (or its ``library.json``)."""
        target = Path(path)
        if target.is_dir():
            target = target / LIBRARY_FILE
        if not target.is_file():
            raise LibraryError(f"no block library at {path}: expected a folder holding {LIBRARY_FILE}")
        try:
            data = json.loads(target.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise LibraryError(f"{target}: not valid JSON ({exc})") from exc
        try:
            return cls.from_dict(data)
        except LibraryError as exc:
            raise LibraryError(f"{target}: {exc}") from exc
