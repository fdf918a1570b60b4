"""``puzzle demo``: the whole pipeline on the embedded default, as small stages that reuse what ``--out`` holds.

Stages (each output keyed by what produced it, written atomically; a re-run redoes only what is missing):

1. parent    train (or reuse) the tiny-llama parent on the default corpus          ``OUT/parent``
2. library   build its block library on local Ray (prune, BLD, score, profile)     ``OUT/library``
3. frontier  the Pareto frontier of summed KL vs predicted latency in one scenario  ``OUT/frontier.json``
4. children  for each budget (90/70/50 % of the parent's predicted latency): the MIP choice (Puzzle), uniform
             width, depth pruning and greedy; each assembled from the library, evaluated (held-out perplexity,
             KL to the parent, measured vs predicted latency), then healed by GKD with the same token budget
             and evaluated again; a GKD result is kept only if it lowers KL to the parent on a validation
             slice of the held-out text disjoint from the evaluation slice (else the child ships as
             assembled, ``gkd.kept`` false in its record)                        ``OUT/results``, ``OUT/gkd``
5. export    the Puzzle+GKD child of every budget as a HF directory               ``OUT/export/puzzle-NN``
6. report    ``OUT/report.json`` (rows: budget, method, perplexity, kl, measured_latency_ms,
             predicted_latency_ms, ...) and ``OUT/frontier.html`` (plotly, plotly.js inline)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from puzzle.child.gkd import GKDConfig
from puzzle.data import cached_tokens, load_tokenizer, read_corpus, split_corpus
from puzzle.errors import ConfigError, InfeasibleError
from puzzle.files import key_digest, write_text
from puzzle.library.space import SearchSpace
from puzzle.library.store import ResultStore
from puzzle.pipeline.report import DemoResult, Row, format_table, write_frontier_html, write_report
from puzzle.pipeline.stages import demo_build_config, demo_space, library_stage, parent_stage, target_space
from puzzle.presets import Preset, get_preset
from puzzle.progress import NullProgress, ProgressSink, StageTimer, StepProgress
from puzzle.search.problem import parse_constraint
from puzzle.search.request import Architecture, SearchRequest
from puzzle.targets import DEFAULT_TARGET

if TYPE_CHECKING:
    from puzzle.library import BlockLibrary
    from puzzle.library.build import BuildConfig
    from puzzle.model import CausalLM

DEMO_PRESET = "tiny-llama"
METHODS = ("puzzle", "uniform", "depth", "greedy")
OBJECTIVE = "kl_div"


@dataclass(frozen=True)
class DemoConfig:
    preset: str | Preset = DEMO_PRESET  # a name of puzzle.presets.PRESETS, or a Preset object
    corpus: str | None = None  # None: the default corpus (the Python standard library)
    train_steps: int | None = None  # None: the preset's
    space: SearchSpace = field(default_factory=demo_space)
    build: BuildConfig = field(default_factory=demo_build_config)
    budgets: tuple[float, ...] = (0.9, 0.7, 0.5)
    scenario: str | None = None  # None: the library's default (prefill) scenario
    gkd: GKDConfig = field(default_factory=lambda: GKDConfig(tokens=131_072, lr=3e-4, batch=8, seq_len=128))
    eval_sequences: int = 32
    eval_seq_len: int = 256
    executor: str = "ray"
    workers: int | None = None
    latency_repeats: int = 20
    methods: tuple[str, ...] = METHODS
    frontier: bool = True  # compute the Pareto frontier (stage 3) for the report and plot
    target: str | None = DEFAULT_TARGET  # build and choose only children this engine loads (None: any)
    fuse_max_kl: float | None = None  # FFN-fuse each Puzzle+GKD child within this KL to the parent (a row each)

    def get_preset(self) -> Preset:
        return self.preset if isinstance(self.preset, Preset) else get_preset(self.preset)

    def key(self) -> dict[str, Any]:
        return {
            "gkd": self.gkd.to_dict(),
            "eval": [self.eval_sequences, self.eval_seq_len, "held-out split for +-1 % perplexity, per sequence"],
            "latency_repeats": self.latency_repeats,
            "gkd_kept_if": "validation KL improves",
        }


# --- stages -----------------------------------------------------------------------------------------------


def _build_library(
    cfg: DemoConfig, out: Path, parent_dir: Path, progress: ProgressSink, status: Callable[[str], None]
) -> BlockLibrary:
    from puzzle.library import BlockLibrary
    from puzzle.library.executor import make_executor

    lib_dir = out / "library"
    stamp = lib_dir / "demo_key.json"
    from puzzle.library.cost import PROFILE_VERSION
    from puzzle.library.distill import BLD_VERSION

    space = target_space(cfg.space, cfg.target, parent_dir)
    key = key_digest(
        space.to_dict(),
        cfg.build.to_dict(),
        cfg.corpus,
        (parent_dir / "train_summary.json").read_text(),
        BLD_VERSION,
        PROFILE_VERSION,
    )
    if (lib_dir / "library.json").is_file() and stamp.is_file() and json.loads(stamp.read_text()) == key:
        status(f"reusing the block library in {lib_dir}")
        return BlockLibrary.load(lib_dir)
    status(f"building the block library ({cfg.executor} executor) into {lib_dir}")
    build = replace(cfg.build, corpus=cfg.corpus, held_out_fraction=cfg.get_preset().train.held_out_fraction)
    with make_executor(cfg.executor, workers=cfg.workers) as executor:
        library = library_stage(parent_dir, out, space=space, config=build, executor=executor, progress=progress)
    write_text(stamp, json.dumps(key))
    return library


def _frontier(library: BlockLibrary, scenario: str, out: Path) -> list[dict[str, Any]]:
    """Every optimal (predicted latency, summed KL) trade-off of the library (the search's exact frontier)."""
    from puzzle.search import run_search

    file = out / "frontier.json"
    key = [library.digest(), scenario]
    if file.is_file() and (data := json.loads(file.read_text())).get("key") == key:
        return data["points"]
    request = SearchRequest(mode="frontier", objective=OBJECTIVE, axis="runtime_ms", scenario=scenario)
    front = run_search(library, request, points=False).frontier
    assert front is not None
    result = front.to_dict(with_layers=True)
    points = [{"runtime_ms": p["axis"], "objective": p["objective"], "layers": p["layers"]} for p in result["points"]]
    write_text(file, json.dumps({"key": key, "points": points, "frontier": result}, indent=1) + "\n")
    return points


def choose(
    library: BlockLibrary, method: str, budget: float, scenario: str, target: str | None = None
) -> tuple[list[str], dict[str, Any]]:
    """Variant names per layer chosen by ``method`` under ``runtime_ms <= budget x parent`` in ``scenario`` (the
    searches only among variants ``target`` loads; the library was built for it, so the baselines are too)."""
    from puzzle.child.baselines import depth_pruning, uniform_width
    from puzzle.search import run_search
    from puzzle.search.views import total

    constraint = parse_constraint(f"runtime_ms<={budget * 100:g}%")
    if method in ("puzzle", "greedy"):
        request = SearchRequest(
            objective=OBJECTIVE,
            constraints=(constraint,),
            scenario=scenario,
            solver=None if method == "puzzle" else "greedy",
            target=target,
        )
        solution = run_search(library, request).solutions[0].to_dict()
        return list(solution["layers"]), solution
    parent = Architecture(tuple(layer.parent_index for layer in library.layers))
    limit = budget * total(library, parent, "runtime_ms", scenario)
    fn = uniform_width if method == "uniform" else depth_pruning
    layers = fn(library, limit, scenario=scenario, metric=OBJECTIVE)
    return layers, {"layers": layers, "constraints": [str(constraint)], "solver": method, "metric": OBJECTIVE}


@dataclass
class _Context:
    cfg: DemoConfig
    out: Path
    library: BlockLibrary
    scenario: str
    parent: CausalLM
    eval_tokens: np.ndarray
    val_tokens: np.ndarray | None  # held-out tokens disjoint from eval_tokens: keeps GKD only where it helps
    gkd_rows: np.ndarray
    store: ResultStore
    progress: ProgressSink
    status: Callable[[str], None]


def _quality(ctx: _Context, model: CausalLM) -> dict[str, Any]:
    """Perplexity, KL to the parent and top-1 agreement on the evaluation tokens, with 95 % intervals and the
    per-sequence scores (every model is scored on the same sequences, so rows compare pairwise)."""
    from puzzle.child.evaluate import score_sequences

    scores = score_sequences(model, ctx.eval_tokens, ctx.cfg.eval_seq_len, parent=ctx.parent)
    return {**scores.summary(), "scores": scores.to_dict()}


def _evaluate(ctx: _Context, child: CausalLM, layers: Sequence[str]) -> dict[str, Any]:
    from puzzle.child.assess import measure_latency

    (latency,) = measure_latency(child, ctx.library, layers, [ctx.scenario], repeats=ctx.cfg.latency_repeats)
    return {**_quality(ctx, child), **latency.to_dict()}


def _child(ctx: _Context, layers: Sequence[str], gkd: bool, need_model: bool) -> tuple[dict[str, Any], CausalLM | None]:
    """Evaluation record of the child ``layers`` (GKD-healed when ``gkd``), reusing a stored one; the child
    itself too when ``need_model`` or when it has to be evaluated."""
    from puzzle.child.assemble import assemble
    from puzzle.child.gkd import run_gkd

    arch_key = key_digest(ctx.library.digest(), list(layers))
    key = f"child/{arch_key}/{'gkd' if gkd else 'raw'}/{key_digest(ctx.cfg.key(), ctx.scenario)}"
    stored = ctx.store.get(key) if key in ctx.store else None
    if stored is not None and not need_model:
        return stored, None
    child = assemble(ctx.library, ctx.out / "library", layers, parent=ctx.parent)
    record: dict[str, Any] = {}
    if gkd:
        from puzzle.child.assess import kl_to_parent

        seq = ctx.cfg.eval_seq_len
        before = None if ctx.val_tokens is None else kl_to_parent(child, ctx.parent, ctx.val_tokens, seq)
        raw_state = {k: v.detach().clone() for k, v in child.state_dict().items()}
        on_step = StepProgress(ctx.progress, f"gkd {arch_key[:8]}")
        result = run_gkd(
            child, ctx.parent, ctx.gkd_rows, ctx.cfg.gkd, checkpoint_dir=ctx.out / "gkd" / arch_key, on_step=on_step
        )
        on_step.finish()
        after = None if ctx.val_tokens is None else kl_to_parent(child, ctx.parent, ctx.val_tokens, seq)
        kept = before is None or after is None or after < before
        if not kept:  # GKD made this child worse on the validation text: ship the child as assembled
            child.load_state_dict(raw_state)
        record["gkd"] = {k: v for k, v in result.to_dict().items() if k != "losses"}
        record["gkd"]["loss_first"] = result.losses[0] if result.losses else None
        record["gkd"]["loss_last"] = result.losses[-1] if result.losses else None
        record["gkd"] |= {"validation_kl_before": before, "validation_kl_after": after, "kept": kept}
    if stored is not None:
        return stored, child
    record |= _evaluate(ctx, child, layers)
    ctx.store.put(key, record)
    return record, child


def _reference_row(ctx: _Context, parent_key: str) -> Row:
    """The fair reference: the parent trained further (LM loss) on exactly the GKD tokens each child gets."""
    from puzzle.child.reference import METHOD, train_reference

    key = f"reference/{parent_key}"
    if key not in ctx.store:
        ctx.status(f"training the parent on the children's GKD tokens ({ctx.cfg.gkd.tokens}) for the reference row")
        on_step = StepProgress(ctx.progress, "parent+tokens")
        model, result = train_reference(
            ctx.parent, ctx.gkd_rows, ctx.cfg.gkd, checkpoint_dir=ctx.out / "gkd" / "reference", on_step=on_step
        )
        on_step.finish()
        ctx.store.put(key, {**_quality(ctx, model), "gkd_tokens": result.tokens})
    record = ctx.store.get(key)
    return Row.evaluated(1.0, METHOD, record, note="parent trained on the same GKD tokens")


def _rows_for_budget(ctx: _Context, budget: float, exports: dict[str, str]) -> list[Row]:
    from puzzle.child.export import export_point

    rows = []
    for method in ctx.cfg.methods:
        try:
            layers, solution = choose(ctx.library, method, budget, ctx.scenario, ctx.cfg.target)
        except InfeasibleError as exc:
            rows.append(Row(budget, method, None, None, None, None, note=f"infeasible: {exc}"))
            ctx.progress.advance("children", 2)
            continue
        objective = sum(
            layer.variant(n).metrics[OBJECTIVE] for layer, n in zip(ctx.library.layers, layers, strict=True)
        )
        for gkd in (False, True):
            ctx.status(f"{budget:.0%} {method}{'+gkd' if gkd else ''}: {_summary(ctx.library, layers)}")
            target = ctx.out / "export" / f"puzzle-{round(budget * 100)}"
            export = method == "puzzle" and gkd
            exported = export and _exported(target, layers, ctx.cfg.gkd)
            fuse = export and ctx.cfg.fuse_max_kl is not None
            record, child = _child(ctx, layers, gkd, need_model=(export and not exported) or fuse)
            name = f"{method}+gkd" if gkd else method
            rows.append(Row.evaluated(budget, name, record, layers=tuple(layers), library_objective=objective))
            ctx.progress.advance("children")
            if export and exported:
                exports[f"{budget:g}"] = str(target)
            elif export and child is not None:
                export_point(
                    ctx.library,
                    ctx.out / "library",
                    Architecture.from_names(ctx.library, layers),
                    target,
                    model=child,
                    tokenizer_dir=ctx.out / "parent",
                    objective={"metric": OBJECTIVE, "value": solution.get("objective")},
                    constraints=solution.get("constraints", ()),
                    measured_costs={f"runtime_ms@{ctx.scenario}": record["measured_ms"]},
                    solver=solution.get("solver"),
                    scenario=ctx.scenario,
                    extra={"gkd": record.get("gkd"), "perplexity": record["perplexity"], "kl": record["kl"]},
                    force=True,
                    target=ctx.cfg.target,
                )
                exports[f"{budget:g}"] = str(target)
            if fuse and child is not None:
                rows.append(_fused_row(ctx, budget, layers, child))
    return rows


def _fused_row(ctx: _Context, budget: float, layers: Sequence[str], child: CausalLM) -> Row:
    """The Puzzle+GKD child with its attention-free FFN runs fused (``puzzle.child.fusion_plan``) while the KL to
    the parent on GKD text stays within ``fuse_max_kl``: quality and latency measured like every row."""
    from puzzle.child.assess import measure_latency
    from puzzle.child.fusion_plan import FusionConfig, fuse_child

    assert ctx.cfg.fuse_max_kl is not None
    key = f"fused/{key_digest(ctx.library.digest(), list(layers), ctx.cfg.key(), ctx.scenario, ctx.cfg.fuse_max_kl)}"
    if key not in ctx.store:
        calib = ctx.gkd_rows[:32].reshape(-1)
        config = FusionConfig(max_kl=ctx.cfg.fuse_max_kl, seq_len=min(128, ctx.cfg.gkd.seq_len))
        try:
            fused, report = fuse_child(child, calib, ctx.eval_tokens, config, parent=ctx.parent, scenarios=())
            groups = [list(g) for g in report.groups]
        except ConfigError as exc:  # no run of attention-free layers in this child
            fused, groups = child, []
            ctx.status(f"{budget:.0%} puzzle+gkd+fuse: {exc}")
        (lat,) = measure_latency(fused, ctx.library, layers, [ctx.scenario], repeats=ctx.cfg.latency_repeats)
        ctx.store.put(key, {**_quality(ctx, fused), **lat.to_dict(), "fused_groups": groups})
    record = ctx.store.get(key)
    groups = record["fused_groups"]
    note = "fused " + ", ".join("+".join(map(str, g)) for g in groups) if groups else "nothing to fuse"
    return Row.evaluated(budget, "puzzle+gkd+fuse", record, layers=tuple(layers), note=note)


def _exported(target: Path, layers: Sequence[str], gkd: GKDConfig) -> bool:
    """Whether ``target`` already holds the export of ``layers`` healed with ``gkd``."""
    from puzzle.child.export import MANIFEST_NAME, read_manifest

    if not (target / MANIFEST_NAME).is_file():
        return False
    manifest = read_manifest(target)
    healed = (manifest.get("extra") or {}).get("gkd") or {}
    return manifest.get("layers") == list(layers) and healed.get("config") == gkd.to_dict()


def _summary(library: BlockLibrary, layers: Sequence[str]) -> str:
    kept = sum(1 for layer, n in zip(library.layers, layers, strict=True) if n == layer.parent.name)
    removed = sum(
        1
        for layer, n in zip(library.layers, layers, strict=True)
        if (s := layer.variant(n).spec) is not None and s.is_no_op
    )
    return f"{kept} parent layers, {removed} removed, {len(layers) - kept - removed} changed"


def evaluation_tokens(parent: CausalLM, held: np.ndarray, cfg: DemoConfig) -> tuple[np.ndarray, np.ndarray | None]:
    """(evaluation tokens, GKD validation tokens) of the held-out split: the validation slice is its last
    ``eval_sequences`` rows (when the split holds twice that); evaluation takes, from the start of the rest, as
    many rows as a +-1 % perplexity interval needs (at most all of them), chosen once on the parent so every
    model is scored on the same sequences."""
    from puzzle.child.evaluate import eval_token_count

    n_val = cfg.eval_sequences * cfg.eval_seq_len + 1
    val_tokens = held[-n_val:] if len(held) >= 2 * n_val else None
    pool = held[:-n_val] if val_tokens is not None else held
    return pool[: eval_token_count(parent, pool, cfg.eval_seq_len)], val_tokens


def _context(
    cfg: DemoConfig,
    out: Path,
    library: BlockLibrary,
    scenario: str,
    parent_dir: Path,
    progress: ProgressSink,
    status: Callable[[str], None],
    cache_dir: str | os.PathLike[str] | None,
) -> _Context:
    """What the children stage needs: the parent, held-out evaluation (and GKD validation) tokens, GKD rows."""
    import torch

    from puzzle.data import pack_tensor
    from puzzle.model import load_pretrained

    torch.manual_seed(0)
    parent = load_pretrained(parent_dir)
    tokenizer = load_tokenizer(parent_dir)
    train_docs, held_docs = split_corpus(read_corpus(cfg.corpus), cfg.get_preset().train.held_out_fraction)
    held = cached_tokens(held_docs, tokenizer, "held_out", cache_dir)
    eval_tokens, val_tokens = evaluation_tokens(parent, held, cfg)
    if val_tokens is None:
        status(f"held-out text too short for a validation slice ({len(held)} tokens): GKD results kept as trained")
    status(f"evaluating on {len(eval_tokens) - 1} held-out tokens ({(len(eval_tokens) - 1) // cfg.eval_seq_len} rows)")
    gkd_rows = pack_tensor(cached_tokens(train_docs, tokenizer, "train", cache_dir), cfg.gkd.seq_len)
    store = ResultStore(out / "results")
    return _Context(cfg, out, library, scenario, parent, eval_tokens, val_tokens, gkd_rows, store, progress, status)


def run_demo(
    out_dir: str | os.PathLike[str],
    config: DemoConfig | None = None,
    *,
    progress: ProgressSink | None = None,
    on_status: Callable[[str], None] | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> DemoResult:
    """Run (or finish) the whole demo into ``out_dir``; see the module docstring for the stages."""
    from puzzle.child.assess import measure_latency, predicted_cost

    cfg = config or DemoConfig()
    progress = progress or NullProgress()
    status = on_status or (lambda _msg: None)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    timer = StageTimer()

    parent_dir = parent_stage(
        cfg.get_preset(),
        out,
        corpus=cfg.corpus,
        train_steps=cfg.train_steps,
        progress=progress,
        status=status,
        train_stage="train parent",
        report_reused=False,
    )
    timer.lap("parent")
    library = _build_library(cfg, out, parent_dir, progress, status)
    timer.lap("library")
    scenario = library.resolve_scenario(cfg.scenario)
    assert scenario is not None
    frontier = _frontier(library, scenario, out) if cfg.frontier else []
    timer.lap("frontier")

    ctx = _context(cfg, out, library, scenario, parent_dir, progress, status, cache_dir)
    parent_names = [layer.parent.name for layer in library.layers]
    parent_key = f"parent/{key_digest(library.digest(), cfg.key(), scenario)}"
    if parent_key not in ctx.store:
        (lat,) = measure_latency(ctx.parent, library, parent_names, [scenario], repeats=cfg.latency_repeats)
        ctx.store.put(parent_key, {**_quality(ctx, ctx.parent), **lat.to_dict()})
    p = ctx.store.get(parent_key)
    rows = [Row.evaluated(1.0, "parent", p, layers=tuple(parent_names)), _reference_row(ctx, parent_key)]
    progress.start("children", len(cfg.budgets) * len(cfg.methods) * 2)
    exports: dict[str, str] = {}
    for budget in cfg.budgets:
        rows += _rows_for_budget(ctx, budget, exports)
    progress.finish("children")
    timer.lap("children")

    result = DemoResult(str(out), scenario, p["perplexity"], tuple(rows), frontier, exports, timer.rounded(1))
    write_report(out / "report.json", result)
    parent_pred = predicted_cost(library, parent_names, "runtime_ms", scenario)
    write_frontier_html(out / "frontier.html", frontier, rows, parent_pred, scenario)
    return result


__all__ = ["DemoConfig", "DemoResult", "Row", "choose", "demo_build_config", "demo_space", "format_table", "run_demo"]
