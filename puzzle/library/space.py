"""The search space: which cheaper variants of every parent layer the block library holds.

A space is read from YAML (or built in code) and validated with every problem listed at once::

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

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from puzzle.arch import ArchSpec, AttentionSpec, BlockSpec, FFNSpec, MambaSpec
from puzzle.errors import ConfigError

Mode = Literal["decoupled", "coupled"]
SubblockKind = Literal["attention", "ffn", "mamba"]
SUBBLOCKS: tuple[SubblockKind, ...] = ("mamba", "attention", "ffn")


@dataclass(frozen=True)
class AttentionOptions:
    """GQA with ``kv_heads`` KV heads (None: the parent's count halved down to 1), linear, no-op."""

    kv_heads: tuple[int, ...] | None = None
    linear: bool = True
    no_op: bool = True


@dataclass(frozen=True)
class FFNOptions:
    """MLPs of ``fractions`` of the parent width rounded to ``multiple``, linear, no-op."""

    fractions: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25, 0.1)
    multiple: int = 64
    linear: bool = True
    no_op: bool = True


@dataclass(frozen=True)
class MambaOptions:
    """Mamba-2 mixers keeping ``head_fractions`` of the parent's heads (group-aligned), no-op."""

    head_fractions: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
    no_op: bool = True


@dataclass(frozen=True)
class Override:
    """Options that replace the global ones on ``layers`` (a section left as None keeps the global one)."""

    layers: tuple[int | str, ...]
    attention: AttentionOptions | None = None
    ffn: FFNOptions | None = None
    mamba: MambaOptions | None = None


@dataclass(frozen=True)
class SearchSpace:
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


# --- parsing -------------------------------------------------------------------------------------------


def _check_keys(where: str, data: dict[str, Any], known: tuple[str, ...], problems: list[str]) -> None:
    for key in sorted(set(data) - set(known)):
        problems.append(f"{where}: unknown key {key!r} (known: {', '.join(known)})")


def _bool(where: str, value: Any, problems: list[str]) -> bool:
    if not isinstance(value, bool):
        problems.append(f"{where}: must be true or false, got {value!r}")
        return False
    return value


def _fractions(where: str, value: Any, problems: list[str]) -> tuple[float, ...]:
    if not isinstance(value, list | tuple) or not value:
        problems.append(f"{where}: must be a non-empty list of numbers in (0, 1], got {value!r}")
        return ()
    out = []
    for i, v in enumerate(value):
        if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1:
            problems.append(f"{where}[{i}]: must be a number in (0, 1] (a fraction of the parent), got {v!r}")
        else:
            out.append(float(v))
    return tuple(out)


def _parse_attention(where: str, data: Any, problems: list[str]) -> AttentionOptions:
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a mapping, got {type(data).__name__}")
        return AttentionOptions()
    _check_keys(where, data, ("kv_heads", "linear", "no_op"), problems)
    kv: tuple[int, ...] | None = None
    if data.get("kv_heads") is not None:
        raw = data["kv_heads"]
        if not isinstance(raw, list | tuple):
            problems.append(f"{where}.kv_heads: must be a list of positive integers, got {raw!r}")
        else:
            good = []
            for i, v in enumerate(raw):
                if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                    problems.append(f"{where}.kv_heads[{i}]: must be a positive integer, got {v!r}")
                else:
                    good.append(v)
            kv = tuple(good)
    return AttentionOptions(
        kv_heads=kv,
        linear=_bool(f"{where}.linear", data.get("linear", True), problems),
        no_op=_bool(f"{where}.no_op", data.get("no_op", True), problems),
    )


def _parse_ffn(where: str, data: Any, problems: list[str]) -> FFNOptions:
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a mapping, got {type(data).__name__}")
        return FFNOptions()
    _check_keys(where, data, ("fractions", "multiple", "linear", "no_op"), problems)
    multiple = data.get("multiple", FFNOptions.multiple)
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple <= 0:
        problems.append(f"{where}.multiple: must be a positive integer (e.g. 64 or 256), got {multiple!r}")
        multiple = FFNOptions.multiple
    return FFNOptions(
        fractions=_fractions(f"{where}.fractions", data["fractions"], problems)
        if "fractions" in data
        else FFNOptions.fractions,
        multiple=multiple,
        linear=_bool(f"{where}.linear", data.get("linear", True), problems),
        no_op=_bool(f"{where}.no_op", data.get("no_op", True), problems),
    )


def _parse_mamba(where: str, data: Any, problems: list[str]) -> MambaOptions:
    if not isinstance(data, dict):
        problems.append(f"{where}: expected a mapping, got {type(data).__name__}")
        return MambaOptions()
    _check_keys(where, data, ("head_fractions", "no_op"), problems)
    return MambaOptions(
        head_fractions=_fractions(f"{where}.head_fractions", data["head_fractions"], problems)
        if "head_fractions" in data
        else MambaOptions.head_fractions,
        no_op=_bool(f"{where}.no_op", data.get("no_op", True), problems),
    )


def _parse_layers(where: str, raw: Any, problems: list[str]) -> tuple[int | str, ...]:
    items = raw if isinstance(raw, list | tuple) else [raw]
    out: list[int | str] = []
    for item in items:
        if (isinstance(item, int) and not isinstance(item, bool) and item >= 0) or (
            isinstance(item, str) and (item == "last" or _range(item) is not None)
        ):
            out.append(item)
        else:
            problems.append(f"{where}: {item!r} is not a layer index, an 'A-B' range or 'last'")
    if not out and not problems:
        problems.append(f"{where}: list at least one layer")
    return tuple(out)


def _range(text: str) -> tuple[int, int] | None:
    parts = text.split("-")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        return None
    lo, hi = int(parts[0]), int(parts[1])
    return (lo, hi) if lo <= hi else None


def parse_space(data: Any) -> SearchSpace:
    """A ``SearchSpace`` from a plain mapping (parsed YAML); raises one ConfigError listing every problem."""
    problems: list[str] = []
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"space: expected a mapping at the top level, got {type(data).__name__}")
    _check_keys("space", data, ("mode", "attention", "ffn", "mamba", "overrides"), problems)
    mode = data.get("mode", "decoupled")
    if mode not in ("decoupled", "coupled"):
        problems.append(f"space.mode: must be 'decoupled' or 'coupled', got {mode!r}")
        mode = "decoupled"
    attention = _parse_attention("space.attention", data.get("attention", {}), problems)
    ffn = _parse_ffn("space.ffn", data.get("ffn", {}), problems)
    mamba = _parse_mamba("space.mamba", data.get("mamba", {}), problems)
    overrides = []
    raw_overrides = data.get("overrides") or []
    if not isinstance(raw_overrides, list):
        problems.append(f"space.overrides: must be a list, got {type(raw_overrides).__name__}")
        raw_overrides = []
    for i, entry in enumerate(raw_overrides):
        where = f"space.overrides[{i}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: expected a mapping with 'layers', got {entry!r}")
            continue
        _check_keys(where, entry, ("layers", "attention", "ffn", "mamba"), problems)
        if "layers" not in entry:
            problems.append(f"{where}: missing 'layers' (indices, 'A-B' ranges or 'last')")
        overrides.append(
            Override(
                layers=_parse_layers(f"{where}.layers", entry.get("layers", []), problems) if "layers" in entry else (),
                attention=_parse_attention(f"{where}.attention", entry["attention"], problems)
                if "attention" in entry
                else None,
                ffn=_parse_ffn(f"{where}.ffn", entry["ffn"], problems) if "ffn" in entry else None,
                mamba=_parse_mamba(f"{where}.mamba", entry["mamba"], problems) if "mamba" in entry else None,
            )
        )
    if problems:
        raise ConfigError("invalid search space:\n  " + "\n  ".join(problems))
    return SearchSpace(attention=attention, ffn=ffn, mamba=mamba, mode=mode, overrides=tuple(overrides))


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
