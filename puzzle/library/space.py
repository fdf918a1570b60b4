"""The search space: which cheaper variants of every parent layer the block library holds.

A space is read from YAML (or built in code) and validated by pydantic against the dataclasses below (their
annotated field types), every problem listed at once, one line each with its path::

    mode: decoupled          # decoupled: train attention and FFN variants separately, then compose
                             # coupled:   train every (attention, FFN) pair of a layer together
    attention:
      kv_heads: [4, 2, 1]    # GQA with these KV-head counts (omit: the parent's count halved down to 1)
      linear: true           # a single (hidden x hidden) linear layer
      no_op: true            # the subblock removed
    ffn:
      fractions: [1.0, 0.75, 0.5, 0.25, 0.1]   # of the parent's intermediate size ...
      multiple: 64                             # ... rounded to a hardware-friendly multiple
      linear: true
      no_op: true
    mamba:
      head_fractions: [1.0, 0.75, 0.5, 0.25]  # of the parent's heads, kept a multiple of n_groups
      no_op: true
    overrides:               # optional: other options for some layers (sections given replace the global ones)
      - layers: [0, 1]       # indices, "0-3" ranges, or "last"
        attention: {linear: false, no_op: false}

``expand(space, arch)`` applies it to a parent and returns one ``LayerSpace`` per layer: the subblock options
of that layer (the parent's own subblock always first) and the ``BlockSpec`` variants they compose to. A
Llama layer composes attention x FFN options; a Nemotron-H layer (exactly one of mamba / attention / FFN)
varies its one subblock. Variant names follow the NVlabs library (``attention = ... && ffn = ...``).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, Strict, TypeAdapter, ValidationError

from puzzle.arch import ArchSpec, AttentionSpec, BlockSpec, FFNSpec, MambaSpec
from puzzle.errors import ConfigError

Mode = Literal["decoupled", "coupled"]
SubblockKind = Literal["attention", "ffn", "mamba"]
SUBBLOCKS: tuple[SubblockKind, ...] = ("mamba", "attention", "ffn")
_FORBID_EXTRA = {"extra": "forbid"}  # pydantic's config of the spec types below: unknown keys are problems


def _range(text: str) -> tuple[int, int] | None:
    parts = text.split("-")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        return None
    lo, hi = int(parts[0]), int(parts[1])
    return (lo, hi) if lo <= hi else None


def _layer_ref(item: Any) -> Any:
    if (isinstance(item, int) and not isinstance(item, bool) and item >= 0) or (
        isinstance(item, str) and (item == "last" or _range(item) is not None)
    ):
        return item
    raise ValueError(f"{item!r} is not a layer index, an 'A-B' range or 'last'")


# Field types of the spec dataclasses as pydantic validates them (plain types to everything else).
Flag = Annotated[bool, Strict()]
PositiveInt = Annotated[int, Strict(), Field(gt=0)]
Fractions = Annotated[tuple[Annotated[float, Strict(), Field(gt=0, le=1)], ...], Field(min_length=1)]
LayerRef = Annotated[int | str, BeforeValidator(_layer_ref)]
LayerRefs = Annotated[
    tuple[LayerRef, ...], BeforeValidator(lambda v: v if isinstance(v, list | tuple) else [v]), Field(min_length=1)
]


@dataclass(frozen=True)
class AttentionOptions:
    """GQA with ``kv_heads`` KV heads (None: the parent's count halved down to 1), linear, no-op."""

    __pydantic_config__ = _FORBID_EXTRA
    kv_heads: tuple[PositiveInt, ...] | None = None
    linear: Flag = True
    no_op: Flag = True


@dataclass(frozen=True)
class FFNOptions:
    """MLPs of ``fractions`` of the parent width rounded to ``multiple``, linear, no-op."""

    __pydantic_config__ = _FORBID_EXTRA
    fractions: Fractions = (1.0, 0.75, 0.5, 0.25, 0.1)
    multiple: PositiveInt = 64
    linear: Flag = True
    no_op: Flag = True


@dataclass(frozen=True)
class MambaOptions:
    """Mamba-2 mixers keeping ``head_fractions`` of the parent's heads (group-aligned), no-op."""

    __pydantic_config__ = _FORBID_EXTRA
    head_fractions: Fractions = (1.0, 0.75, 0.5, 0.25)
    no_op: Flag = True


@dataclass(frozen=True)
class Override:
    """Options that replace the global ones on ``layers`` (a section left as None keeps the global one)."""

    __pydantic_config__ = _FORBID_EXTRA
    layers: LayerRefs
    attention: AttentionOptions | None = None
    ffn: FFNOptions | None = None
    mamba: MambaOptions | None = None


@dataclass(frozen=True)
class SearchSpace:
    """What to build per layer (see the module docstring); ``parse_space`` validates it from plain data."""

    __pydantic_config__ = _FORBID_EXTRA
    attention: AttentionOptions = field(default_factory=AttentionOptions)
    ffn: FFNOptions = field(default_factory=FFNOptions)
    mamba: MambaOptions = field(default_factory=MambaOptions)
    mode: Mode = "decoupled"
    overrides: tuple[Override, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        def section(opts: Any) -> dict[str, Any] | None:
            if opts is None:
                return None
            out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in opts.__dict__.items()}
            return out

        return {
            "mode": self.mode,
            "attention": section(self.attention),
            "ffn": section(self.ffn),
            "mamba": section(self.mamba),
            "overrides": [
                {"layers": list(o.layers)}
                | {k: section(getattr(o, k)) for k in ("attention", "ffn", "mamba") if getattr(o, k) is not None}
                for o in self.overrides
            ],
        }


def default_space(family: str = "llama") -> SearchSpace:
    """The default space of a parent family.

    Llama: KV heads parent/2/4.. + linear + no-op (5 options for 4 KV heads) x FFN 100/75/50/25/10 % + linear +
    no-op (7 options) -> 35 variants per layer from 12 trainings. Nemotron-H: per layer type, Mamba
    100/75/50/25 % heads + no-op, attention as above, FFN as above.
    """
    if family not in ("llama", "nemotron_h"):
        raise ConfigError(f"space: no default space for family {family!r} (known: llama, nemotron_h)")
    return SearchSpace()


# --- parsing ---------------------------------------------------------------------------------------------

_SECTIONS: dict[str, type] = {
    "attention": AttentionOptions,
    "ffn": FFNOptions,
    "mamba": MambaOptions,
    "overrides": Override,
}


@functools.cache
def _adapter() -> TypeAdapter[SearchSpace]:
    return TypeAdapter(SearchSpace)


def _path(loc: tuple[int | str, ...]) -> str:
    return "space" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in loc)


def _known_keys(loc: tuple[int | str, ...]) -> str:
    cls: type = SearchSpace
    for part in loc:
        cls = _SECTIONS.get(part, cls) if isinstance(part, str) else cls
    return ", ".join(f.name for f in fields(cls))


def _problem(err: Any) -> str:
    """One line for one pydantic error: the dotted path of the offending value, what is wrong, the value."""
    loc = tuple(err["loc"])
    if err["type"] in ("unexpected_keyword_argument", "extra_forbidden"):
        return f"{_path(loc[:-1])}: unknown key {loc[-1]!r} (known: {_known_keys(loc[:-1])})"
    if err["type"] == "missing":
        return f"{_path(loc[:-1])}: missing {loc[-1]!r}" + (
            " (indices, 'A-B' ranges or 'last')" if loc[-1] == "layers" else ""
        )
    message = err["msg"].removeprefix("Value error, ").replace("Tuple should", "List should")
    return message if "is not a layer index" in message else f"{message}, got {err['input']!r}"


def parse_space(data: Any) -> SearchSpace:
    """A ``SearchSpace`` from a plain mapping (parsed YAML); raises one ConfigError listing every problem.

    pydantic validates the mapping against the spec dataclasses themselves (their annotated field types);
    each problem is one line starting with its path, e.g. ``space.overrides[1].layers[0]: ...``.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"space: expected a mapping at the top level, got {type(data).__name__}")
    if data.get("overrides", ()) is None:
        data = {k: v for k, v in data.items() if k != "overrides"}
    try:
        return _adapter().validate_python(data)
    except ValidationError as exc:
        errors = exc.errors()
    locs = [tuple(e["loc"]) for e in errors]
    problems = []
    for err, loc in zip(errors, locs, strict=True):
        if err["type"] == "too_short" and any(o[: len(loc)] == loc and o != loc for o in locs):
            continue  # a list left empty only because its items were refused: those are the problems
        line = _problem(err)
        problems.append(line if line.startswith("space") else f"{_path(loc)}: {line}")
    raise ConfigError("invalid search space:\n  " + "\n  ".join(problems))


def load_space(path: str | Path) -> SearchSpace:
    """Read and validate a YAML search-space file."""
    import yaml

    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"space: cannot read {path}: {exc.strerror or exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"space: {path} is not valid YAML: {exc}") from exc
    try:
        return parse_space(data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


# --- expansion on a parent -----------------------------------------------------------------------------


@dataclass(frozen=True)
class LayerSpace:
    """The options of one parent layer; index 0 of every tuple is the parent's own subblock."""

    index: int
    parent: BlockSpec
    attention: tuple[AttentionSpec, ...]
    ffn: tuple[FFNSpec, ...]
    mamba: tuple[MambaSpec, ...]

    def options(self, kind: SubblockKind) -> tuple[Any, ...]:
        return getattr(self, kind)

    @property
    def varied(self) -> tuple[SubblockKind, ...]:
        """The subblock kinds that have more than the parent's option on this layer."""
        return tuple(k for k in SUBBLOCKS if len(self.options(k)) > 1)

    def variants(self) -> tuple[BlockSpec, ...]:
        """Every composed block (the parent block first): the product of the subblock options."""
        return tuple(
            BlockSpec(attention=a, ffn=f, mamba=m)
            for m, a, f in itertools.product(self.mamba, self.attention, self.ffn)
        )


def _layer_indices(override: Override, n_layers: int, where: str, problems: list[str]) -> set[int]:
    out: set[int] = set()
    for item in override.layers:
        if item == "last":
            out.add(n_layers - 1)
            continue
        lo, hi = (item, item) if isinstance(item, int) else _range(str(item))  # type: ignore[misc]
        if hi >= n_layers:
            problems.append(f"{where}.layers: {item!r} is out of range; the parent has layers 0..{n_layers - 1}")
            continue
        out.update(range(lo, hi + 1))
    return out


def _dedupe(items: list[Any]) -> tuple[Any, ...]:
    seen: list[Any] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return tuple(seen)


def _attention_options(parent: AttentionSpec, opts: AttentionOptions, where: str, problems: list[str]):
    if parent.kind != "gqa":
        return (parent,)
    if opts.kv_heads is None:
        counts, k = [], parent.n_kv_heads
        while k >= 1:
            if parent.n_heads % k == 0:
                counts.append(k)
            k //= 2
    else:
        counts = []
        for k in opts.kv_heads:
            if k > parent.n_kv_heads:
                problems.append(f"{where}.kv_heads: {k} is more than the parent's {parent.n_kv_heads} KV heads")
            elif parent.n_heads % k:
                problems.append(
                    f"{where}.kv_heads: {k} does not divide the parent's {parent.n_heads} query heads "
                    f"(use a divisor of {parent.n_heads})"
                )
            else:
                counts.append(k)
    out: list[AttentionSpec] = [parent]
    out += [AttentionSpec(**{**parent.to_dict(), "n_kv_heads": k}) for k in counts]
    if opts.linear:
        out.append(AttentionSpec.linear())
    if opts.no_op:
        out.append(AttentionSpec.no_op())
    return _dedupe(out)


def ffn_width(parent_size: int, fraction: float, multiple: int) -> int:
    """``fraction`` of ``parent_size`` rounded to ``multiple`` (at least one multiple; 1.0 keeps the parent)."""
    if fraction >= 1.0:
        return parent_size
    return min(parent_size, max(multiple, round(fraction * parent_size / multiple) * multiple))


def _ffn_options(parent: FFNSpec, opts: FFNOptions, where: str, problems: list[str]):
    if parent.kind != "mlp":
        return (parent,)
    if opts.multiple > parent.intermediate_size:
        problems.append(
            f"{where}.multiple: {opts.multiple} is larger than the parent's intermediate size "
            f"{parent.intermediate_size}; use a smaller multiple"
        )
        return (parent,)
    out: list[FFNSpec] = [parent]
    for frac in opts.fractions:
        size = ffn_width(parent.intermediate_size, frac, opts.multiple)
        out.append(FFNSpec(kind="mlp", intermediate_size=size, activation=parent.activation, bias=parent.bias))
    if opts.linear:
        out.append(FFNSpec.linear())
    if opts.no_op:
        out.append(FFNSpec.no_op())
    return _dedupe(out)


def mamba_heads(parent: MambaSpec, fraction: float) -> int:
    """Heads kept for ``fraction``: a multiple of n_groups (every group keeps as many heads), at least one per group."""
    per_group = parent.n_heads // parent.n_groups
    keep = max(1, min(per_group, round(fraction * per_group)))
    return keep * parent.n_groups


def _mamba_options(parent: MambaSpec, opts: MambaOptions):
    if parent.is_no_op:
        return (parent,)
    out: list[MambaSpec] = [parent]
    for frac in opts.head_fractions:
        out.append(MambaSpec(**{**parent.__dict__, "n_heads": mamba_heads(parent, frac)}))
    if opts.no_op:
        out.append(MambaSpec.no_op())
    return _dedupe(out)


def expand(space: SearchSpace, arch: ArchSpec) -> tuple[LayerSpace, ...]:
    """Apply ``space`` to a parent: one ``LayerSpace`` per layer; every problem raised at once as ConfigError."""
    problems: list[str] = []
    per_layer: list[dict[str, Any]] = [
        {"attention": (space.attention, "space.attention"), "ffn": (space.ffn, "space.ffn"), "mamba": space.mamba}
        for _ in arch.blocks
    ]
    for i, override in enumerate(space.overrides):
        where = f"space.overrides[{i}]"
        for layer in sorted(_layer_indices(override, arch.n_layers, where, problems)):
            if override.attention is not None:
                per_layer[layer]["attention"] = (override.attention, f"{where}.attention")
            if override.ffn is not None:
                per_layer[layer]["ffn"] = (override.ffn, f"{where}.ffn")
            if override.mamba is not None:
                per_layer[layer]["mamba"] = override.mamba
    layers = []
    for i, (block, chosen) in enumerate(zip(arch.blocks, per_layer, strict=True)):
        att_opts, att_where = chosen["attention"]
        ffn_opts, ffn_where = chosen["ffn"]
        layer_problems: list[str] = []
        layers.append(
            LayerSpace(
                index=i,
                parent=block,
                attention=_attention_options(block.attention, att_opts, att_where, layer_problems),
                ffn=_ffn_options(block.ffn, ffn_opts, ffn_where, layer_problems),
                mamba=_mamba_options(block.mamba, chosen["mamba"]),
            )
        )
        problems += [f"layer {i}: {p}" for p in layer_problems]
    if problems:
        raise ConfigError("search space does not fit the parent:\n  " + "\n  ".join(_dedupe(problems)))
    return tuple(layers)


# --- names ---------------------------------------------------------------------------------------------


def _pct(value: int, parent: int) -> str:
    return f"parent * {round(100 * value / parent)}%"


def subblock_name(kind: SubblockKind, spec: Any, parent: Any) -> str:
    """A readable, unique name of a subblock option (NVlabs style: ``attention = 4 kv heads (parent * 50%)``)."""
    if spec.kind == "no_op":
        return f"{kind} = no_op"
    if spec.kind == "linear":
        return f"{kind} = linear"
    if kind == "attention":
        return f"attention = {spec.n_kv_heads} kv heads ({_pct(spec.n_kv_heads, parent.n_kv_heads)})"
    if kind == "ffn":
        return f"ffn = intermediate size {spec.intermediate_size} ({_pct(spec.intermediate_size, parent.intermediate_size)})"
    return f"mamba = {spec.n_heads} heads ({_pct(spec.n_heads, parent.n_heads)})"


def variant_name(block: BlockSpec, parent: BlockSpec) -> str:
    """Name of a composed block: the names of the subblocks the parent layer has, joined by ``&&``."""
    parts = [
        subblock_name(kind, getattr(block, kind), getattr(parent, kind))
        for kind in SUBBLOCKS
        if not getattr(parent, kind).is_no_op
    ]
    return " && ".join(parts) if parts else "no_op"
