"""Import the NVlabs Puzzle demo's block-library format into a ``BlockLibrary``.

``import_nvlabs(path)`` reads ``block_library.json`` =
``{"layer_i": {"<variant name>": {"stats": {...}, "metrics": {...}}}}`` plus ``measurement_info.json``
(gpu, dtype, batch_size, sequence_length) and ``parent_block_stats.json`` beside it. Variant names such as
``attention = 8 kv heads (parent * 100%)\\t&&\\tffn = intermediate size 29e3 (parent * 100%)`` or ``... no_op ...``
are parsed into ``BlockSpec``s using the exact ``num_kv_heads`` / ``ffn_intermediate_size`` from the stats.
Hidden size, query heads and head size are inferred from the parameter counts (Llama: q and o projections
are hidden x hidden) unless given. The measurement becomes one scenario (named like ``h100-fp8-b256-s1200``,
kind ``prefill``: the stats are per forward over batch x sequence); non-block costs are unknown (see
``library.py``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from puzzle.arch import AttentionSpec, BlockSpec, FFNSpec
from puzzle.errors import ConfigError, LibraryError
from puzzle.library.library import BlockLibrary, Layer, Scenario, Variant
from puzzle.library.scenario import size

_ATT_RE = re.compile(r"attention\s*=\s*(?:(?P<kv>\d+)\s*kv heads|(?P<noop>no_op)|(?P<linear>linear))", re.I)
_FFN_RE = re.compile(
    r"ffn\s*=\s*(?:intermediate size\s*(?P<size>[\d.]+(?:e\d+)?)|(?P<noop>no_op)|(?P<linear>linear))", re.I
)
_PCT_RE = re.compile(r"\(parent\s*\*\s*(?P<pct>[\d.]+)%\)")
_NVLABS_SCENARIO_COSTS = (
    "runtime_ms",
    "memory_mib",
    "attention_runtime_ms",
    "attention_memory_mib",
    "ffn_runtime_ms",
    "ffn_memory_mib",
)
_NVLABS_COSTS = ("num_params", "attention_num_params", "ffn_num_params")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise LibraryError(
            f"{path}: missing; an NVlabs library folder holds block_library.json, "
            "measurement_info.json and parent_block_stats.json"
        ) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LibraryError(f"{path}: not valid JSON ({exc})") from exc


def _infer_llama_dims(parent_stats: Mapping[str, Any]) -> tuple[int, int, int]:
    """``(hidden, n_heads, head_dim)`` from a Llama parent block's parameter counts.

    FFN (SwiGLU, no bias) + its norm: ``3 h I + h``; attention + its norm: ``2 h (H d) + 2 h (kv d) + h`` with
    ``H d = h`` (Llama's q and o projections are square).
    """
    keys = ("ffn_intermediate_size", "num_kv_heads", "ffn_num_params", "attention_num_params")
    missing = [k for k in keys if k not in parent_stats]
    if missing:
        raise LibraryError(
            f"parent block stats lack {', '.join(missing)}; pass hidden_size, n_heads and head_dim explicitly"
        )
    inter, kv, ffn_params, att_params = (size(f"parent block stats: {k}", parent_stats[k]) for k in keys)
    hidden, rest = divmod(ffn_params, 3 * inter + 1)
    if rest or hidden <= 0:
        raise LibraryError(
            f"cannot infer the hidden size from ffn_num_params={ffn_params} and intermediate size {inter}; "
            "pass hidden_size, n_heads and head_dim explicitly"
        )
    kv_width, rest = divmod(att_params - hidden - 2 * hidden * hidden, 2 * hidden)
    if rest or kv_width <= 0 or kv <= 0 or kv_width % kv:
        raise LibraryError(
            f"cannot infer the head size from attention_num_params={att_params} (hidden {hidden}, {kv} KV heads); "
            "pass n_heads and head_dim explicitly"
        )
    head_dim = kv_width // kv
    if hidden % head_dim:
        raise LibraryError(f"inferred head size {head_dim} does not divide hidden size {hidden}; pass them explicitly")
    return hidden, hidden // head_dim, head_dim


def parse_nvlabs_name(
    name: str, stats: Mapping[str, Any], *, hidden_size: int, n_heads: int, head_dim: int
) -> BlockSpec:
    """The ``BlockSpec`` of an NVlabs variant name; exact sizes come from ``stats`` and must agree with the name."""
    att_m, ffn_m = _ATT_RE.search(name), _FFN_RE.search(name)
    if not att_m or not ffn_m:
        raise LibraryError(
            f"variant name {name!r} is not of the form 'attention = <N kv heads|no_op|linear> (...) && "
            "ffn = <intermediate size S|no_op|linear> (...)'"
        )
    try:
        if att_m["noop"]:
            attention = AttentionSpec.no_op()
        elif att_m["linear"]:
            attention = AttentionSpec.linear()
        else:
            kv = size(f"variant {name!r}: num_kv_heads", stats.get("num_kv_heads", int(att_m["kv"])))
            if kv != int(att_m["kv"]):
                raise LibraryError(f"variant {name!r}: name says {att_m['kv']} KV heads, stats say {kv}")
            attention = AttentionSpec(n_heads=n_heads, n_kv_heads=kv, head_dim=head_dim)
        if ffn_m["noop"]:
            ffn = FFNSpec.no_op()
        elif ffn_m["linear"]:
            ffn = FFNSpec.linear()
        else:
            approx = float(ffn_m["size"])
            given = stats.get("ffn_intermediate_size", 0)
            width = size(f"variant {name!r}: ffn_intermediate_size", given) if given else round(approx)
            if abs(width - approx) > 0.05 * approx + 1000:
                raise LibraryError(f"variant {name!r}: name says intermediate size ~{ffn_m['size']}, stats say {width}")
            ffn = FFNSpec(intermediate_size=width)
    except ConfigError as exc:
        raise LibraryError(f"variant {name!r}: {exc}") from exc
    del hidden_size  # sizes are per-subblock; the hidden size is the library's
    return BlockSpec(attention=attention, ffn=ffn)


def _scenario_name(device: str, dtype: str, batch: int, seq: int) -> str:
    dev = re.search(r"([A-Z]\d{2,4}|[A-Z]{1,2}\d{2,4})", device.upper())
    short = dev.group(1).lower() if dev else re.sub(r"[^a-z0-9]+", "-", device.lower()).strip("-") or "device"
    return f"{short}-{re.sub(r'[^a-z0-9]+', '', dtype.lower()) or 'dtype'}-b{batch}-s{seq}"


def _layer(
    library_file: Path,
    i: int,
    variants_raw: Mapping[str, Any],
    parent_stats: Mapping[str, Any],
    scen: str,
    dims: dict[str, int],
) -> Layer:
    """Layer ``i`` of an NVlabs library: its variants with specs, metrics and costs (LibraryError naming them)."""
    variants = []
    for name, entry in variants_raw.items():
        owner = f"layer_{i} variant {name!r}"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("stats"), Mapping):
            raise LibraryError(f"{library_file}: {owner} needs 'stats' and 'metrics' objects")
        stats = entry["stats"]
        missing = [k for k in (*_NVLABS_COSTS, *_NVLABS_SCENARIO_COSTS) if k not in stats]
        if missing:
            raise LibraryError(f"{library_file}: {owner} stats lack {', '.join(missing)}")
        spec = parse_nvlabs_name(name, stats, **dims)
        is_parent = all(stats.get(k) == parent_stats.get(k) for k in ("num_kv_heads", "ffn_intermediate_size"))
        try:
            variants.append(
                Variant(
                    name=name,
                    is_parent=is_parent,
                    spec=spec,
                    metrics=dict(entry.get("metrics") or {}),
                    costs={k: stats[k] for k in _NVLABS_COSTS},
                    scenario_costs={scen: {k: stats[k] for k in _NVLABS_SCENARIO_COSTS}},
                )
            )
        except LibraryError as exc:
            raise LibraryError(f"{library_file}: {owner}: {exc}") from exc
    try:
        return Layer(index=i, variants=tuple(variants))
    except LibraryError as exc:
        raise LibraryError(f"{library_file}: {exc}") from exc


def import_nvlabs(
    path: str | os.PathLike[str],
    *,
    hidden_size: int | None = None,
    n_heads: int | None = None,
    head_dim: int | None = None,
    scenario_name: str | None = None,
) -> BlockLibrary:
    """A ``BlockLibrary`` from an NVlabs Puzzle demo library (its folder or its ``block_library.json``)."""
    source = Path(path)
    folder = source if source.is_dir() else source.parent
    library_file = source if source.is_file() else folder / "block_library.json"
    raw = _read_json(library_file)
    info = _read_json(folder / "measurement_info.json")
    parent_block = _read_json(folder / "parent_block_stats.json")
    if not isinstance(raw, Mapping) or not raw:
        raise LibraryError(f"{library_file}: expected an object layer_i -> variants")
    if not isinstance(parent_block, Mapping) or not isinstance(parent_block.get("stats"), Mapping):
        raise LibraryError(f"{folder / 'parent_block_stats.json'}: expected an object with 'stats'")
    parent_stats = parent_block["stats"]

    if hidden_size is None or n_heads is None or head_dim is None:
        inferred = _infer_llama_dims(parent_stats)
        hidden_size = hidden_size or inferred[0]
        n_heads = n_heads or inferred[1]
        head_dim = head_dim or inferred[2]
    hidden_size, n_heads, head_dim = (
        size(what, value)
        for what, value in (("hidden_size", hidden_size), ("n_heads", n_heads), ("head_dim", head_dim))
    )

    where = folder / "measurement_info.json"
    if not isinstance(info, Mapping) or "batch_size" not in info or "sequence_length" not in info:
        raise LibraryError(f"{where}: needs batch_size and sequence_length")
    batch = size(f"{where}: batch_size", info["batch_size"])
    seq = size(f"{where}: sequence_length", info["sequence_length"])
    device, dtype = str(info.get("gpu", "unknown")), str(info.get("dtype", "unknown"))
    scen = scenario_name or _scenario_name(device, dtype, batch, seq)
    scenario = Scenario(name=scen, kind="prefill", batch_size=batch, seq_len=seq, device=device, dtype=dtype)

    indexed: dict[int, Mapping[str, Any]] = {}
    for key, variants in raw.items():
        m = re.fullmatch(r"layer_(\d+)", str(key))
        if not m or not isinstance(variants, Mapping):
            raise LibraryError(f"{library_file}: unexpected entry {key!r}; expected layer_<i> -> {{variant: ...}}")
        indexed[int(m.group(1))] = variants
    if sorted(indexed) != list(range(len(indexed))):
        raise LibraryError(f"{library_file}: layers must be layer_0..layer_{len(indexed) - 1} without gaps")

    dims = {"hidden_size": hidden_size, "n_heads": n_heads, "head_dim": head_dim}
    layers = [_layer(library_file, i, indexed[i], parent_stats, scen, dims) for i in range(len(indexed))]

    return BlockLibrary(
        layers=tuple(layers),
        scenarios={scen: scenario},
        default_scenario=scen,
        family="llama",
        hidden_size=hidden_size,
        parent={
            "source": "nvlabs",
            "parent_block": {
                k: parent_stats[k] for k in ("num_kv_heads", "ffn_intermediate_size") if k in parent_stats
            },
            "n_heads": n_heads,
            "head_dim": head_dim,
        },
        notes={
            "imported_from": "NVlabs Puzzle block library",
            "measurement": dict(info),
            "non_block": "unknown: the NVlabs format has no embedding/head costs, so they count as 0 and % budgets "
            "are % of the parent's summed block costs",
        },
    )


def load_any(path: str | os.PathLike[str], *, fmt: str = "puzzle") -> BlockLibrary:
    """Load a library in ``fmt`` (``puzzle``: our folder; ``nvlabs``: the NVlabs demo format)."""
    if fmt == "puzzle":
        return BlockLibrary.load(path)
    if fmt == "nvlabs":
        return import_nvlabs(path)
    raise ConfigError(f"unknown library format {fmt!r}; known: puzzle, nvlabs")
