"""Build a block library from a parent checkpoint: prune, distill (BLD), score, measure costs.

Stages (each reports to the progress sink; every output is keyed by what produced it and stored atomically
under ``OUT/work``, so a re-run after any interruption, kill -9 included, redoes only what is missing):

1. ``prepare``  write the parent layer by layer from its safetensors (``parent.py``), load its tokenizer, split
                the corpus (distillation rows from the training split, scoring rows from the held-out split)
                and store the token ids of both (no activations: tasks compute them).
2. ``distill``  one executor task per parent layer, training all of that layer's BLD units (decoupled: per
                subblock option; coupled: per pair) on one stream of parent activations (``stream.py``).
3. ``score``    one task per layer: replace-one-block KL / LM loss / cosine of every composed variant.
4. ``profile``  one task per distinct block spec (latency per scenario), plus the assembled parent.
5. ``assemble`` the ``BlockLibrary``: ``OUT/library.json`` + ``OUT/weights/<sha>.safetensors`` per variant,
                and ``OUT/build_report.json`` (NMSE before/after per unit, additivity error per scenario).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from puzzle.arch import ArchSpec, BlockSpec
from puzzle.errors import DataError
from puzzle.files import key_digest, save_tensors, write_json
from puzzle.library import BlockLibrary, Layer, Scenario, Variant
from puzzle.library.distill import SPEC_TYPES, BLDConfig, compose_state, load_subblocks, unit_key
from puzzle.library.executor import Executor, LocalExecutor, Task
from puzzle.library.score import score_task
from puzzle.library.space import SUBBLOCKS, LayerSpace, SearchSpace, default_space, expand, variant_name
from puzzle.library.store import ResultStore
from puzzle.library.stream import bld_layer_task
from puzzle.progress import NullProgress, ProgressSink, StageTimer


@dataclass(frozen=True)
class BuildConfig:
    """What the builder does beyond the search space: data sizes, BLD settings, profiling."""

    bld: BLDConfig = field(default_factory=BLDConfig)
    seq_len: int = 128
    distill_sequences: int = 256
    holdout_sequences: int = 16
    held_out_fraction: float = 0.05
    score_batch: int = 8
    device: str = "cpu"  # where BLD, scoring and profiling run ("cuda": tasks ask Ray for a GPU)
    dtype: str = "float32"  # profiling dtype
    parent_dtype: str | None = None  # the parent's compute dtype in BLD / scoring (None: as stored)
    accelerator_type: str | None = None  # Ray accelerator type profiling tasks ask for (e.g. "H100")
    warmup: int = 3
    repeats: int = 10
    profile_threads: int = 1  # CPU threads for latency (recorded on each scenario; children are timed alike)
    profile_copies: int = 0  # blocks timed as a chain of this many instances (0: the parent's depth, at most 8)
    scenarios: tuple[Scenario, ...] | None = None
    corpus: str | None = None  # a corpus path (default: the data module's default corpus)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scenarios"] = [s.to_dict() for s in self.scenarios] if self.scenarios else None
        return data


# --- stage 1: data and activations --------------------------------------------------------------------


def _token_rows(config: BuildConfig, tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor, dict]:
    from puzzle.data import cached_tokens, pack_tensor, read_corpus, split_corpus, tokenizer_hash

    corpus = read_corpus(config.corpus)
    train_docs, held_docs = split_corpus(corpus, config.held_out_fraction)
    if not held_docs.documents:
        raise DataError(
            f"the corpus has no held-out documents at held_out_fraction={config.held_out_fraction}; "
            "use a larger corpus or a larger fraction"
        )
    # the data module's token cache: shared with parent training (keyed by corpus and tokenizer)
    train = pack_tensor(cached_tokens(train_docs, tokenizer, "train"), config.seq_len)
    held = pack_tensor(cached_tokens(held_docs, tokenizer, "held_out"), config.seq_len)
    if len(train) < 2 or len(held) < 1:
        raise DataError(
            f"too little text: {len(train)} training and {len(held)} held-out sequences of {config.seq_len}"
        )
    distill = _evenly(train, config.distill_sequences)
    holdout = _evenly(held, config.holdout_sequences)
    key = {
        "corpus": corpus.fingerprint(),
        "tokenizer": tokenizer_hash(tokenizer),
        "seq_len": config.seq_len,
        "distill": len(distill),
        "holdout": len(holdout),
        "held_out_fraction": config.held_out_fraction,
    }
    return torch.from_numpy(distill), torch.from_numpy(holdout), key


def _evenly(rows: Any, n: int) -> Any:
    """``n`` rows spread evenly over ``rows`` (all of them when there are fewer)."""
    if len(rows) <= n:
        return rows
    idx = [round(i * (len(rows) - 1) / max(1, n - 1)) for i in range(n)]
    return rows[idx]


def prepare(parent_dir: str | Path, work: Path, config: BuildConfig) -> dict[str, Any]:
    """The parent's per-layer files and the token ids of distillation and held-out rows; returns their locations."""
    from puzzle.data import load_tokenizer
    from puzzle.library.parent import write_parent

    meta = write_parent(parent_dir, work, dtype=getattr(torch, config.parent_dtype) if config.parent_dtype else None)
    tokenizer = load_tokenizer(parent_dir)
    distill, holdout, data_key = _token_rows(config, tokenizer)
    data = work / "data" / key_digest(data_key)
    distill_file, holdout_file = data / "distill.safetensors", data / "holdout.safetensors"
    if not distill_file.exists():
        save_tensors(distill_file, {"ids": distill[:, :-1]})
    if not holdout_file.exists():
        save_tensors(holdout_file, {"ids": holdout[:, :-1], "targets": holdout[:, 1:]})
    return {
        "arch": ArchSpec.from_dict(meta["arch"]),
        "digest": meta["digest"],
        "distill_file": str(distill_file),
        "holdout_file": str(holdout_file),
        "data_key": data_key,
        "distill_tokens": int(distill[:, :-1].numel()),
        "holdout_tokens": int(holdout[:, 1:].numel()),
    }


# --- stage 2: BLD units ---------------------------------------------------------------------------------


def _changes(layer: LayerSpace, spec: BlockSpec, mode: str) -> dict[str, Any]:
    """The subblocks of ``spec`` that differ from the parent's (what a unit changes)."""
    return {k: getattr(spec, k) for k in SUBBLOCKS if getattr(spec, k) != getattr(layer.parent, k)}


def plan_units(layers: tuple[LayerSpace, ...], mode: str) -> list[tuple[int, dict[str, Any]]]:
    """(layer, changes) of every BLD unit that trains something."""
    units: list[tuple[int, dict[str, Any]]] = []
    for layer in layers:
        if mode == "decoupled":
            for kind in layer.varied:
                for option in layer.options(kind)[1:]:
                    if option.kind != "no_op":
                        units.append((layer.index, {kind: option}))
        else:
            for spec in layer.variants()[1:]:
                changes = _changes(layer, spec, mode)
                if any(s.kind != "no_op" for s in changes.values()):
                    units.append((layer.index, changes))
    return units


def _unit_for(layer: LayerSpace, spec: BlockSpec, mode: str) -> list[dict[str, Any]]:
    """The units whose trained subblocks compose ``spec`` (decoupled: one per changed kind; coupled: one)."""
    changes = _changes(layer, spec, mode)
    if mode == "coupled":
        return [changes] if any(s.kind != "no_op" for s in changes.values()) else []
    return [{k: s} for k, s in changes.items() if s.kind != "no_op"]


def _gpus(config: BuildConfig) -> float:
    return 1.0 if config.device.startswith("cuda") else 0.0


def distill_units(
    units: list[tuple[int, dict[str, Any]]],
    prep: dict[str, Any],
    work: Path,
    config: BuildConfig,
    executor: Executor,
    store: ResultStore,
    progress: ProgressSink,
) -> dict[str, dict[str, Any]]:
    """Train every BLD unit, one task per layer; returns each unit's record by its key (progress counts units)."""
    act_key = key_digest(prep["data_key"])
    by_layer: dict[int, list[tuple[str, dict[str, Any]]]] = {}
    for layer, changes in units:
        key = unit_key(layer, changes, config.bld, prep["digest"], act_key)
        by_layer.setdefault(layer, []).append((key, {k: v.to_dict() for k, v in changes.items()}))
    tasks = [
        Task(
            f"bldlayer/L{layer}/{key_digest(sorted(k for k, _ in items))}",
            bld_layer_task,
            (str(work), prep["distill_file"], layer, items, config.bld.to_dict(), config.device, config.parent_dtype),
            num_gpus=_gpus(config),
            weight=len(items),
        )
        for layer, items in by_layer.items()
    ]
    executor.run(tasks, store, stage="distill", progress=progress)
    return {key: store.get(key) for items in by_layer.values() for key, _ in items}


# --- the whole build --------------------------------------------------------------------------------------


def build_library(
    parent_dir: str | Path,
    out_dir: str | Path,
    *,
    space: SearchSpace | None = None,
    executor: Executor | None = None,
    progress: ProgressSink | None = None,
    config: BuildConfig | None = None,
) -> BlockLibrary:
    """Build (or finish building) the block library of the parent in ``parent_dir`` into ``out_dir``."""
    from puzzle.library.cost import (
        PROFILE_VERSION,
        default_scenarios,
        non_block_memory_mib,
        non_block_params,
        profile_model_task,
        profile_task,
    )

    config = config or BuildConfig()
    executor = executor or LocalExecutor()
    progress = progress or NullProgress()
    out, work = Path(out_dir), Path(out_dir) / "work"
    store = ResultStore(work / "results")

    timer = StageTimer()
    lap = timer.lap

    progress.start("prepare", 1)
    prep = prepare(parent_dir, work, config)
    lap("prepare")
    progress.advance("prepare")
    progress.finish("prepare")
    arch: ArchSpec = prep["arch"]
    space = space or default_space(arch.family)
    layers = expand(space, arch)
    scenarios = tuple(
        replace(sc, threads=config.profile_threads) if sc.threads == 0 and sc.device.startswith("cpu") else sc
        for sc in config.scenarios or default_scenarios(config.device, config.dtype, config.profile_threads)
    )
    act_key = key_digest(prep["data_key"])

    # stage 2: distill (one task per layer: all its units share one stream of parent activations)
    bld = config.bld
    unit_results = distill_units(plan_units(layers, space.mode), prep, work, config, executor, store, progress)
    lap("distill")

    def unit_result(layer: int, changes: dict[str, Any]) -> dict[str, Any]:
        return unit_results[unit_key(layer, changes, bld, prep["digest"], act_key)]

    # stage 3: score (one task per layer)
    composed: dict[int, list[dict[str, Any]]] = {}
    for layer in layers:
        entries = []
        for spec in layer.variants():
            files: dict[str, str] = {}
            for changes in _unit_for(layer, spec, space.mode):
                files.update(unit_result(layer.index, changes)["files"])
            entries.append(
                {
                    "name": variant_name(spec, layer.parent),
                    "spec": spec.to_dict(),
                    "files": files,
                    "is_parent": spec == layer.parent,
                }
            )
        composed[layer.index] = entries
    score_tasks = [
        Task(
            f"score/L{i}/{key_digest(prep['digest'], prep['data_key'], entries)}",
            score_task,
            (str(work), prep["holdout_file"], i, entries, config.score_batch, config.device, config.parent_dtype),
            num_gpus=_gpus(config),
        )
        for i, entries in composed.items()
    ]
    scores = executor.run(score_tasks, store, stage="score", progress=progress)
    layer_scores = {r["layer"]: r["metrics"] for r in scores.values()}
    lap("score")

    # stage 4: profile distinct specs, then the assembled parent
    specs = list(dict.fromkeys(BlockSpec.from_dict(e["spec"]) for entries in composed.values() for e in entries))
    sc_dicts = [s.to_dict() for s in scenarios]
    copies = config.profile_copies or min(len(arch.blocks), 8)
    prof_args = (config.device, config.warmup, config.repeats)
    version = PROFILE_VERSION
    model_repeats = 3 * config.repeats  # the whole parent is the one reference the additivity error rests on
    profile_tasks = [
        Task(
            f"profile/{key_digest(arch.hidden_size, arch.rope.to_dict(), s.to_dict(), sc_dicts, prof_args, copies, version)}",
            profile_task,
            (arch.to_dict(), [s.to_dict()], sc_dicts, *prof_args, copies),
            num_cpus=executor.max_task_cpus,
            num_gpus=_gpus(config),
            accelerator_type=config.accelerator_type,
        )
        for s in specs
    ]
    profile_tasks.append(
        Task(
            f"profile/model/{key_digest(prep['digest'], sc_dicts, prof_args, model_repeats, version)}",
            profile_model_task,
            (str(work), sc_dicts, config.device, config.warmup, model_repeats),
            num_cpus=executor.max_task_cpus,
            num_gpus=_gpus(config),
            accelerator_type=config.accelerator_type,
        )
    )
    profiles = executor.run(profile_tasks, store, stage="profile", progress=progress)
    by_spec = {s: profiles[t.key]["results"][0] for s, t in zip(specs, profile_tasks, strict=False)}
    model_profile = profiles[profile_tasks[-1].key]["scenarios"]
    lap("profile")

    # stage 5: assemble
    progress.start("assemble", len(layers))
    from safetensors.torch import load_file

    lib_layers = []
    for layer in layers:
        parent_state = load_file(str(work / "parent" / f"block{layer.index}.safetensors"))
        variants = []
        for entry in composed[layer.index]:
            spec = BlockSpec.from_dict(entry["spec"])
            weights = None
            if not spec.is_no_op:
                state = compose_state(parent_state, layer.parent, spec, load_subblocks(work, entry["files"]))
                from puzzle.library.distill import state_digest

                rel = f"weights/{state_digest(state)}.safetensors"
                if not (out / rel).exists():
                    save_tensors(out / rel, state)
                weights = rel
            prof = by_spec[spec]
            variants.append(
                Variant(
                    name=entry["name"],
                    is_parent=entry["is_parent"],
                    spec=spec,
                    metrics=layer_scores[layer.index][entry["name"]],
                    costs={"num_params": float(prof["params"])},
                    scenario_costs={
                        sc: {"runtime_ms": v["runtime_ms"], "memory_mib": v["memory_mib"]}
                        for sc, v in prof["scenarios"].items()
                    },
                    weights=weights,
                )
            )
        lib_layers.append(Layer(index=layer.index, variants=tuple(variants)))
        progress.advance("assemble")

    # Additivity: the whole parent against "sum of its blocks + embedding/head timed alone" (the library's
    # prediction for the parent; children are predicted the same way).
    additivity = {}
    for sc in scenarios:
        blocks_sum = sum(by_spec[layer.parent]["scenarios"][sc.name]["runtime_ms"] for layer in layers)
        measured = model_profile[sc.name]
        predicted = blocks_sum + measured["non_block_runtime_ms"]
        additivity[sc.name] = {
            "measured_ms": measured["runtime_ms"],
            "measured_spread_ms": measured["runtime_spread_ms"],
            "sum_of_blocks_ms": blocks_sum,
            "non_block_ms": measured["non_block_runtime_ms"],
            "predicted_ms": predicted,
            "relative_error": (predicted - measured["runtime_ms"]) / measured["runtime_ms"],
        }
    library = BlockLibrary(
        layers=tuple(lib_layers),
        scenarios={s.name: s for s in scenarios},
        default_scenario=scenarios[0].name,
        family=arch.family,
        hidden_size=arch.hidden_size,
        parent={"source": str(parent_dir), "digest": prep["digest"], "arch": arch.to_dict()},
        non_block_costs={"num_params": float(non_block_params(arch))},
        non_block_scenario_costs={
            s.name: {
                "runtime_ms": model_profile[s.name]["non_block_runtime_ms"],
                "memory_mib": non_block_memory_mib(arch, s),
            }
            for s in scenarios
        },
        notes={
            "builder": "puzzle.library.build",
            "space": space.to_dict(),
            "bld": bld.to_dict(),
            "distill_tokens": prep["distill_tokens"],
            "holdout_tokens": prep["holdout_tokens"],
            "additivity": additivity,
            "latency": f"measured on {scenarios[0].device} ({scenarios[0].dtype}), median of {config.repeats} after "
            f"{config.warmup} warm-up, blocks in chains of {copies}",
        },
    )
    library.save(out)
    lap("assemble")
    report = {
        "seconds": timer.seconds,
        "executor": executor.name,
        "units": [
            {
                "layer": r["layer"],
                "changes": {k: variant_name_part(k, v, arch.blocks[r["layer"]]) for k, v in r["changes"].items()},
                **{
                    k: r[k]
                    for k in ("nmse_init", "nmse_final", "train_loss_first", "train_loss_last", "steps", "tokens")
                },
            }
            for r in unit_results.values()
        ],
        "additivity": additivity,
        "config": config.to_dict(),
    }
    write_json(out / "build_report.json", report)
    progress.finish("assemble")
    return library


def variant_name_part(kind: str, spec: dict[str, Any], parent: BlockSpec) -> str:
    from puzzle.library.space import subblock_name

    cls = SPEC_TYPES[kind]
    return subblock_name(kind, cls.from_dict(spec), getattr(parent, kind))  # type: ignore[arg-type]


def with_overrides(config: BuildConfig, **bld: Any) -> BuildConfig:
    """``config`` with some BLD settings replaced (None values ignored)."""
    changes = {k: v for k, v in bld.items() if v is not None}
    return replace(config, bld=replace(config.bld, **changes)) if changes else config


def load_report(out_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / "build_report.json").read_text())
