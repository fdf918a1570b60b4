"""Build a block library from a parent checkpoint: prune, distill (BLD), score, measure costs.

Stages (each reports to the progress sink; every output is keyed by what produced it and stored atomically
under ``OUT/work``, so a re-run after any interruption, kill -9 included, redoes only what is missing):

1. ``prepare``  (``prepare.py``) write the parent layer by layer from its safetensors (``parent.py``), split the
                corpus (distillation rows from the training split, scoring rows from the held-out split) and
                store the token ids of both (no activations: tasks compute them).
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

from puzzle.arch import ArchSpec, BlockSpec
from puzzle.files import key_digest, save_tensors, write_json
from puzzle.library import BlockLibrary, Layer, Scenario, Variant
from puzzle.library.distill import BLDConfig, compose_state, load_subblocks, unit_key
from puzzle.library.executor import Executor, LocalExecutor, Task
from puzzle.library.prepare import prepare
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
    prefix_resident_mb: float | None = 0.0  # earlier parent layers a BLD task holds (the rest: read per batch)
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


# --- the whole build --------------------------------------------------------------------------------------


PARENT_REPEATS = 3  # the whole parent is timed 3x as often: the additivity error rests on it alone


@dataclass(frozen=True)
class _Build:
    """What the stages of one build share."""

    work: Path
    config: BuildConfig
    executor: Executor
    store: ResultStore
    progress: ProgressSink
    prep: dict[str, Any]
    layers: tuple[LayerSpace, ...]
    mode: str

    @property
    def arch(self) -> ArchSpec:
        return self.prep["arch"]

    def run(self, tasks: list[Task], stage: str) -> dict[str, Any]:
        return self.executor.run(tasks, self.store, stage=stage, progress=self.progress)


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
    from puzzle.library.cost import default_scenarios

    config = config or BuildConfig()
    executor = executor or LocalExecutor()
    progress = progress or NullProgress()
    out, work = Path(out_dir), Path(out_dir) / "work"
    timer = StageTimer()

    progress.start("prepare", 1)
    prep = prepare(parent_dir, work, config)
    timer.lap("prepare")
    progress.advance("prepare")
    progress.finish("prepare")
    space = space or default_space(prep["arch"].family)
    build = _Build(
        work, config, executor, ResultStore(work / "results"), progress, prep, expand(space, prep["arch"]), space.mode
    )
    scenarios = tuple(
        replace(sc, threads=config.profile_threads) if sc.threads == 0 and sc.device.startswith("cpu") else sc
        for sc in config.scenarios or default_scenarios(config.device, config.dtype, config.profile_threads)
    )
    unit_results = _distill(build)
    timer.lap("distill")
    composed = _compose(build, unit_results)
    layer_scores = _score(build, composed)
    timer.lap("score")
    by_spec, model_profile, copies = _profile(build, composed, scenarios)
    timer.lap("profile")

    progress.start("assemble", len(build.layers))
    lib_layers = [_assemble_layer(build, layer, composed, layer_scores, by_spec, out) for layer in build.layers]
    additivity = _additivity(build, scenarios, by_spec, model_profile)
    notes = {
        "builder": "puzzle.library.build",
        "space": space.to_dict(),
        "bld": config.bld.to_dict(),
        "distill_tokens": prep["distill_tokens"],
        "holdout_tokens": prep["holdout_tokens"],
        "additivity": additivity,
        "latency": f"measured on {scenarios[0].device} ({scenarios[0].dtype}), median of {config.repeats} after "
        f"{config.warmup} warm-up, blocks in chains of {copies}",
    }
    library = _library(build, lib_layers, scenarios, model_profile, parent_dir, notes)
    library.save(out)
    timer.lap("assemble")
    write_json(out / "build_report.json", _report(build, timer.seconds, unit_results, additivity))
    progress.finish("assemble")
    return library


def _gpus(config: BuildConfig) -> float:
    return 1.0 if config.device.startswith("cuda") else 0.0


def _distill(b: _Build) -> dict[str, Any]:
    """Stage 2: one BLD task per layer (all its units share one stream of parent activations); records by unit key
    (progress counts units)."""
    act_key = key_digest(b.prep["data_key"])
    by_layer: dict[int, list[tuple[str, dict[str, Any]]]] = {}
    for layer, changes in plan_units(b.layers, b.mode):
        key = unit_key(layer, changes, b.config.bld, b.prep["digest"], act_key)
        by_layer.setdefault(layer, []).append((key, {k: v.to_dict() for k, v in changes.items()}))
    config = b.config
    tasks = [
        Task(
            f"bldlayer/L{layer}/{key_digest(sorted(k for k, _ in items))}",
            bld_layer_task,
            (
                str(b.work),
                b.prep["distill_file"],
                layer,
                items,
                config.bld.to_dict(),
                config.device,
                config.parent_dtype,
                config.prefix_resident_mb,
            ),
            num_gpus=_gpus(config),
            weight=len(items),
        )
        for layer, items in by_layer.items()
    ]
    b.run(tasks, "distill")
    return {key: b.store.get(key) for items in by_layer.values() for key, _ in items}


def _compose(b: _Build, unit_results: dict[str, Any]) -> dict[int, list[dict[str, Any]]]:
    """Every composed variant of every layer: name, spec, the unit files it is made of, whether it is the parent."""
    act_key = key_digest(b.prep["data_key"])
    composed: dict[int, list[dict[str, Any]]] = {}
    for layer in b.layers:
        entries = []
        for spec in layer.variants():
            files: dict[str, str] = {}
            for changes in _unit_for(layer, spec, b.mode):
                files.update(
                    unit_results[unit_key(layer.index, changes, b.config.bld, b.prep["digest"], act_key)]["files"]
                )
            entry = {"name": variant_name(spec, layer.parent), "spec": spec.to_dict(), "files": files}
            entries.append(entry | {"is_parent": spec == layer.parent})
        composed[layer.index] = entries
    return composed


def _score(b: _Build, composed: dict[int, list[dict[str, Any]]]) -> dict[int, dict[str, dict[str, float]]]:
    """Stage 3: one scoring task per layer; metrics by layer and variant name."""
    tasks = [
        Task(
            f"score/L{i}/{key_digest(b.prep['digest'], b.prep['data_key'], entries)}",
            score_task,
            (
                str(b.work),
                b.prep["holdout_file"],
                i,
                entries,
                b.config.score_batch,
                b.config.device,
                b.config.parent_dtype,
            ),
            num_gpus=_gpus(b.config),
        )
        for i, entries in composed.items()
    ]
    return {r["layer"]: r["metrics"] for r in b.run(tasks, "score").values()}


def _profile(
    b: _Build, composed: dict[int, list[dict[str, Any]]], scenarios: tuple[Scenario, ...]
) -> tuple[dict[BlockSpec, Any], dict[str, Any], int]:
    """Stage 4: latency of every distinct block spec and of the assembled parent; ``(by spec, parent, copies)``."""
    from puzzle.library.cost import PROFILE_VERSION, profile_model_task, profile_task

    config, arch = b.config, b.arch
    specs = list(dict.fromkeys(BlockSpec.from_dict(e["spec"]) for entries in composed.values() for e in entries))
    sc_dicts = [s.to_dict() for s in scenarios]
    copies = config.profile_copies or min(len(arch.blocks), 8)
    prof_args = (config.device, config.warmup, config.repeats)
    model_repeats = PARENT_REPEATS * config.repeats
    cpus = b.executor.max_task_cpus
    tasks = [
        Task(
            f"profile/{key_digest(arch.hidden_size, arch.rope.to_dict(), s.to_dict(), sc_dicts, prof_args, copies, PROFILE_VERSION)}",
            profile_task,
            (arch.to_dict(), [s.to_dict()], sc_dicts, *prof_args, copies),
            num_cpus=cpus,
            num_gpus=_gpus(config),
            accelerator_type=config.accelerator_type,
        )
        for s in specs
    ]
    model_key = key_digest(b.prep["digest"], sc_dicts, prof_args, model_repeats, PROFILE_VERSION)
    model_args = (str(b.work), sc_dicts, config.device, config.warmup, model_repeats)
    tasks.append(
        Task(
            f"profile/model/{model_key}",
            profile_model_task,
            model_args,
            num_cpus=cpus,
            num_gpus=_gpus(config),
            accelerator_type=config.accelerator_type,
        )
    )
    profiles = b.run(tasks, "profile")
    by_spec = {s: profiles[t.key]["results"][0] for s, t in zip(specs, tasks, strict=False)}
    return by_spec, profiles[tasks[-1].key]["scenarios"], copies


def _assemble_layer(
    b: _Build,
    layer: LayerSpace,
    composed: dict[int, list[dict[str, Any]]],
    layer_scores: dict[int, dict[str, dict[str, float]]],
    by_spec: dict[BlockSpec, Any],
    out: Path,
) -> Layer:
    """Stage 5, one layer: each variant's weights (content-addressed under ``out/weights``), metrics and costs."""
    from safetensors.torch import load_file

    from puzzle.library.distill import state_digest

    parent_state = load_file(str(b.work / "parent" / f"block{layer.index}.safetensors"))
    variants = []
    for entry in composed[layer.index]:
        spec = BlockSpec.from_dict(entry["spec"])
        weights = None
        if not spec.is_no_op:
            state = compose_state(parent_state, layer.parent, spec, load_subblocks(b.work, entry["files"]))
            weights = f"weights/{state_digest(state)}.safetensors"
            if not (out / weights).exists():
                save_tensors(out / weights, state)
        prof = by_spec[spec]
        costs = {
            sc: {"runtime_ms": v["runtime_ms"], "memory_mib": v["memory_mib"]} for sc, v in prof["scenarios"].items()
        }
        variants.append(
            Variant(
                name=entry["name"],
                is_parent=entry["is_parent"],
                spec=spec,
                metrics=layer_scores[layer.index][entry["name"]],
                costs={"num_params": float(prof["params"])},
                scenario_costs=costs,
                weights=weights,
            )
        )
    b.progress.advance("assemble")
    return Layer(index=layer.index, variants=tuple(variants))


def _additivity(
    b: _Build, scenarios: tuple[Scenario, ...], by_spec: dict[BlockSpec, Any], model_profile: dict[str, Any]
) -> dict[str, dict[str, float]]:
    """The whole parent against "sum of its blocks + embedding/head timed alone" (the library's prediction for
    the parent; children are predicted the same way)."""
    additivity = {}
    for sc in scenarios:
        blocks_sum = sum(by_spec[layer.parent]["scenarios"][sc.name]["runtime_ms"] for layer in b.layers)
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
    return additivity


def _library(
    b: _Build,
    layers: list[Layer],
    scenarios: tuple[Scenario, ...],
    model_profile: dict[str, Any],
    parent_dir: str | Path,
    notes: dict[str, Any],
) -> BlockLibrary:
    from puzzle.library.cost import non_block_memory_mib, non_block_params

    arch = b.arch
    return BlockLibrary(
        layers=tuple(layers),
        scenarios={s.name: s for s in scenarios},
        default_scenario=scenarios[0].name,
        family=arch.family,
        hidden_size=arch.hidden_size,
        parent={"source": str(parent_dir), "digest": b.prep["digest"], "arch": arch.to_dict()},
        non_block_costs={"num_params": float(non_block_params(arch))},
        non_block_scenario_costs={
            s.name: {
                "runtime_ms": model_profile[s.name]["non_block_runtime_ms"],
                "memory_mib": non_block_memory_mib(arch, s),
            }
            for s in scenarios
        },
        notes=notes,
    )


def _report(
    b: _Build, seconds: dict[str, float], unit_results: dict[str, Any], additivity: dict[str, Any]
) -> dict[str, Any]:
    keep = ("nmse_init", "nmse_final", "train_loss_first", "train_loss_last", "steps", "tokens")
    units = [
        {
            "layer": r["layer"],
            "changes": {k: variant_name_part(k, v, b.arch.blocks[r["layer"]]) for k, v in r["changes"].items()},
            **{k: r[k] for k in keep},
        }
        for r in unit_results.values()
    ]
    return {
        "seconds": seconds,
        "executor": b.executor.name,
        "units": units,
        "additivity": additivity,
        "config": b.config.to_dict(),
    }


def variant_name_part(kind: str, spec: dict[str, Any], parent: BlockSpec) -> str:
    from puzzle.library.distill import SPEC_TYPES
    from puzzle.library.space import subblock_name

    return subblock_name(kind, SPEC_TYPES[kind].from_dict(spec), getattr(parent, kind))  # type: ignore[arg-type]


def with_overrides(config: BuildConfig, **bld: Any) -> BuildConfig:
    """``config`` with some BLD settings replaced (None values ignored)."""
    changes = {k: v for k, v in bld.items() if v is not None}
    return replace(config, bld=replace(config.bld, **changes)) if changes else config


def load_report(out_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / "build_report.json").read_text())
