"""The nested space: what a budget may keep of each parent layer, as prefix sizes of the nested parent.

A ``LayerChoice`` keeps, of one layer of the *nested* parent (see ``nest.py``: every smaller size is a prefix):

* ``attention``  the first ``k`` KV groups, each with its query heads (``k * n_heads / n_kv_heads`` queries);
* ``ffn``        the first ``i`` intermediate channels (each layer its own width);
* ``mamba``      the first ``m`` heads *of every group* (``m * n_groups`` heads; the B/C broadcast stays valid).

``0`` removes the subblock; a layer with every count 0 is skipped (depth). Linear subblocks are kept (1) or
removed (0). An ``ElasticConfig`` is one choice per layer; ``config_arch`` turns it into the ``ArchSpec`` of the
child it denotes. ``ElasticSpace`` holds the candidate fractions per axis; ``ElasticSpace.grid(parent, target)``
turns them into an ``ElasticGrid``, the sizes per layer and axis that the exact selection scores and the router
picks from.

With a deployment ``target`` (``puzzle.targets``), the grid keeps a size only when the child that slices that one
axis of that one layer, the rest of the parent whole, loads in the target (``offending_layers``). Sizes that pass
alone pass together: the targets' rules hold per subblock (kind, biases, the ``ffn_mult`` grid) or compare a
subblock with the first of its kind (one global head count, one Mamba size), which a slice passes alone only by
equalling its parent's subblock or by being the only one of its kind. So for DeciLM engines attention is kept whole
or removed (a slice has fewer query heads than the global count), a hybrid's Mamba too for every engine but
transformers, and for engines that read only ``ffn_mult`` the FFN widths are rounded up to its 256 grid
(``ffn_multiple``, capped at the parent's width). ``build_elastic`` checks every chosen configuration again.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, replace
from typing import Any

from puzzle.arch import ArchSpec, AttentionSpec, BlockSpec, FFNSpec, MambaSpec
from puzzle.errors import ConfigError
from puzzle.targets import FFN_GRID, get_target, offending_layers

_NAME_RE = re.compile(r"^a(\d+)\.f(\d+)\.m(\d+)$")


@dataclass(frozen=True, order=True)
class LayerChoice:
    """Prefix sizes kept of one layer: KV groups, FFN channels, Mamba heads per group (0: removed)."""

    attention: int = 0
    ffn: int = 0
    mamba: int = 0

    def __post_init__(self) -> None:
        for name in ("attention", "ffn", "mamba"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"layer choice: {name} must be an integer >= 0, got {value!r}")

    @property
    def is_skip(self) -> bool:
        return self.attention == self.ffn == self.mamba == 0

    @property
    def name(self) -> str:
        """The library variant name, e.g. ``a2.f128.m0`` (parsed back by ``from_name``)."""
        return f"a{self.attention}.f{self.ffn}.m{self.mamba}"

    @classmethod
    def from_name(cls, name: str) -> LayerChoice:
        m = _NAME_RE.match(name)
        if not m:
            raise ConfigError(f"not an elastic variant name: {name!r} (expected a<K>.f<I>.m<M>)")
        return cls(int(m[1]), int(m[2]), int(m[3]))

    @classmethod
    def full(cls, block: BlockSpec) -> LayerChoice:
        """The choice that keeps all of ``block``."""
        att, ffn, mamba = block.attention, block.ffn, block.mamba
        return cls(
            attention=att.n_kv_heads if att.kind == "gqa" else int(att.kind == "linear"),
            ffn=ffn.intermediate_size if ffn.kind == "mlp" else int(ffn.kind == "linear"),
            mamba=mamba.n_heads // mamba.n_groups if mamba.kind == "mamba" else 0,
        )

    def to_dict(self) -> dict[str, int]:
        return {"attention": self.attention, "ffn": self.ffn, "mamba": self.mamba}

    @classmethod
    def from_dict(cls, data: Any) -> LayerChoice:
        if not isinstance(data, dict) or set(data) - {"attention", "ffn", "mamba"}:
            raise ConfigError(f"layer choice: expected {{attention, ffn, mamba}} counts, got {data!r}")
        return cls(**data)


def choice_block(parent: BlockSpec, choice: LayerChoice) -> BlockSpec:
    """The ``BlockSpec`` of ``choice`` applied to the parent layer ``parent`` (ConfigError when out of range)."""
    att, ffn, mamba = parent.attention, parent.ffn, parent.mamba
    full = LayerChoice.full(parent)
    for axis in ("attention", "ffn", "mamba"):
        if getattr(choice, axis) > getattr(full, axis):
            raise ConfigError(f"{axis}: {getattr(choice, axis)} exceeds the parent's {getattr(full, axis)}")
    if choice.attention == 0:
        att = AttentionSpec.no_op()
    elif att.kind == "gqa":
        att = replace(att, n_heads=choice.attention * att.n_heads_in_group, n_kv_heads=choice.attention)
    if choice.ffn == 0:
        ffn = FFNSpec.no_op()
    elif ffn.kind == "mlp":
        ffn = replace(ffn, intermediate_size=choice.ffn)
    if choice.mamba == 0:
        mamba = MambaSpec.no_op()
    elif mamba.kind == "mamba":
        mamba = replace(mamba, n_heads=choice.mamba * mamba.n_groups)
    return BlockSpec(attention=att, ffn=ffn, mamba=mamba)


@dataclass(frozen=True)
class ElasticConfig:
    """One choice per layer of the nested parent: the architecture of one budget."""

    layers: tuple[LayerChoice, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        if not all(isinstance(c, LayerChoice) for c in self.layers):
            raise ConfigError("elastic config: every layer needs a LayerChoice")

    @classmethod
    def full(cls, arch: ArchSpec) -> ElasticConfig:
        return cls(tuple(LayerChoice.full(b) for b in arch.blocks))

    def check(self, arch: ArchSpec) -> None:
        if len(self.layers) != arch.n_layers:
            raise ConfigError(f"elastic config has {len(self.layers)} layers; the parent has {arch.n_layers}")
        for i, (block, choice) in enumerate(zip(arch.blocks, self.layers, strict=True)):
            try:
                choice_block(block, choice)
            except ConfigError as exc:
                raise ConfigError(f"elastic config, layer {i}: {exc}") from None

    def to_list(self) -> list[dict[str, int]]:
        return [c.to_dict() for c in self.layers]

    @classmethod
    def from_list(cls, data: Any) -> ElasticConfig:
        if not isinstance(data, list):
            raise ConfigError(f"elastic config: expected a list of layer choices, got {type(data).__name__}")
        return cls(tuple(LayerChoice.from_dict(c) for c in data))


def config_arch(arch: ArchSpec, config: ElasticConfig) -> ArchSpec:
    """The ``ArchSpec`` of the child that ``config`` slices out of the nested parent ``arch``."""
    config.check(arch)
    return replace(arch, blocks=tuple(choice_block(b, c) for b, c in zip(arch.blocks, config.layers, strict=True)))


def prefix_counts(full: int, fractions: tuple[float, ...], *, minimum: int = 1) -> list[int]:
    """Distinct prefix sizes for ``fractions`` of ``full`` (0 stays 0, others at least ``minimum``), largest first."""
    out = {0 if f == 0 else max(minimum, min(full, round(f * full))) for f in fractions}
    return sorted(out, reverse=True)


AXES = ("attention", "ffn", "mamba")


@dataclass(frozen=True)
class ElasticGrid:
    """The candidate sizes of every layer of one nested parent, per axis (``AXES``), largest (the parent's) first."""

    sizes: tuple[tuple[tuple[int, ...], ...], ...]  # [layer][axis] -> kept sizes
    target: str | None = None  # the deployment target the sizes were restricted to (None: any)

    def axis_sizes(self, layer: int, axis: str) -> tuple[int, ...]:
        """Kept sizes on ``axis`` of ``layer``: prefix sizes of a GQA / MLP / Mamba subblock, 1 (kept) for a linear
        one, ``(0,)`` where absent; 0 (removed) when the space's fractions include it."""
        return self.sizes[layer][AXES.index(axis)]

    def can_skip(self, layer: int) -> bool:
        """Whether ``layer`` may be skipped: every axis may remove its subblock (the space's fractions include 0)."""
        return all(0 in s for s in self.sizes[layer])

    def layer_choices(self, layer: int) -> tuple[LayerChoice, ...]:
        """Every candidate of ``layer`` (the product of its axes' sizes), the full one first."""
        sizes = self.sizes[layer]
        full = LayerChoice(*(s[0] for s in sizes))
        choices = [LayerChoice(a, f, m) for a, f, m in itertools.product(*sizes)]
        return tuple(sorted(choices, key=lambda c: c != full))

    def to_dict(self) -> dict[str, Any]:
        layers = [{axis: list(s) for axis, s in zip(AXES, sizes, strict=True)} for sizes in self.sizes]
        return {"target": self.target, "layers": layers}


@dataclass(frozen=True)
class ElasticSpace:
    """The candidate fractions per axis (1.0 = the parent's size, 0 = removed) scored by the exact selection."""

    attention: tuple[float, ...] = (1.0, 0.5, 0.25, 0.0)
    ffn: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25, 0.0)
    mamba: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25, 0.0)
    # FFN widths rounded up to a multiple of this (capped at the parent's); None: the target's grid (256 where it
    # reads widths only from ffn_mult), else 1
    ffn_multiple: int | None = None

    def __post_init__(self) -> None:
        for axis in AXES:
            values = tuple(float(v) for v in getattr(self, axis))
            if not values or any(not 0 <= v <= 1 for v in values) or 1.0 not in values:
                raise ConfigError(f"elastic space: {axis} fractions must lie in [0, 1] and include 1.0, got {values}")
            object.__setattr__(self, axis, values)
        m = self.ffn_multiple
        if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m <= 0):
            raise ConfigError(f"elastic space: ffn_multiple must be a positive integer, got {m!r}")

    def _sizes(self, block: BlockSpec, axis: str, ffn_multiple: int) -> tuple[int, ...]:
        full = getattr(LayerChoice.full(block), axis)
        kind = getattr(block, axis).kind
        fractions = getattr(self, axis)
        if kind in ("gqa", "mlp", "mamba"):
            sizes = prefix_counts(full, fractions)
            if axis == "ffn":
                m = ffn_multiple
                sizes = sorted({min(full, -(-c // m) * m) for c in sizes}, reverse=True)
            return tuple(sizes)
        if kind == "linear":
            return (1, 0) if 0.0 in fractions else (1,)
        return (0,)

    def grid(self, arch: ArchSpec, target: str | None = None) -> ElasticGrid:
        """The candidate sizes of every layer of the nested parent ``arch``; with ``target``, only those it loads
        (see the module docstring). ``ConfigError`` when the target cannot load the parent, or no smaller child."""
        multiple = self.ffn_multiple
        if multiple is None:
            multiple = FFN_GRID if target is not None and get_target(target).ffn_mult_only else 1
        raw = [tuple(self._sizes(b, axis, multiple) for axis in AXES) for b in arch.blocks]
        if target is None:
            return ElasticGrid(tuple(raw))
        problems = offending_layers(arch, target)
        if problems:
            raise ConfigError(f"{target} cannot load the parent itself:\n  " + "\n  ".join(problems))
        rejected: list[str] = []  # why the first refused slice does not load

        def loads(i: int, choice: LayerChoice) -> bool:
            why = offending_layers(arch.with_block(i, choice_block(arch.blocks[i], choice)), target)
            if why and not rejected:
                rejected.extend([f"layer {i} sliced to {choice.name}:", *why])
            return not why

        kept = []
        for i, (block, sizes) in enumerate(zip(arch.blocks, raw, strict=True)):
            full = LayerChoice.full(block)
            kept.append(
                tuple(
                    tuple(s for s in axis_sizes if s == axis_sizes[0] or loads(i, replace(full, **{axis: s})))
                    for axis, axis_sizes in zip(AXES, sizes, strict=True)
                )
            )
        if rejected and all(len(s) == 1 for layer in kept for s in layer):
            raise ConfigError(f"{target} loads no smaller child of this parent; e.g. " + "\n  ".join(rejected))
        return ElasticGrid(tuple(kept), target)

    def to_dict(self) -> dict[str, Any]:
        return {"attention": list(self.attention), "ffn": list(self.ffn), "mamba": list(self.mamba)} | {
            "ffn_multiple": self.ffn_multiple
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ElasticSpace:
        fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**fields)


def parse_budgets(text: str | list[float] | tuple[float, ...]) -> tuple[float, ...]:
    """``"0.8,0.6,0.4"`` -> (0.8, 0.6, 0.4): distinct fractions of the parent in (0, 1], largest first."""
    items = text.split(",") if isinstance(text, str) else list(text)
    budgets = []
    for item in items:
        try:
            value = float(item)
        except (TypeError, ValueError):
            raise ConfigError(f"budget {item!r} is not a number; give fractions of the parent like 0.8,0.6") from None
        if not 0 < value <= 1:
            raise ConfigError(f"budget {value:g} must be a fraction of the parent in (0, 1]")
        budgets.append(value)
    if not budgets:
        raise ConfigError("give at least one budget, e.g. --budgets 0.8,0.6,0.4")
    if len(set(budgets)) != len(budgets):
        raise ConfigError(f"budgets repeat: {', '.join(f'{b:g}' for b in budgets)}")
    return tuple(sorted(budgets, reverse=True))


def budget_key(budget: float) -> str:
    return f"{budget:g}"
