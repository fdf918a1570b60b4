"""The pipeline's stages, as plain functions over a work folder, an executor and one progress sink.

    parent   a preset trained in ``WORK/parent`` (resumes from its checkpoint; ``parent/train`` per optimizer
             step), or a Hugging Face directory checked to be loadable (``parent`` 1/1)
    library  ``puzzle.library.build`` into ``WORK/library`` on the given executor (steps ``prepare``,
             ``distill`` one unit per BLD training, ``score``, ``profile``, ``assemble``); finished units are
             kept in ``library/work`` and skipped when a run resumes
    search   ``puzzle.search.run_search`` over the built library (``solve`` | ``diverse`` | ``frontier``)
    export   per exported point: assembled from the library's weights, written as a Hugging Face directory
             (``puzzle.child.export.export_point``) and packed as ``point-<k>.tar.gz``

``run_pipeline`` chains them for a ``PipelineRequest`` (the service's pipeline job); ``puzzle demo`` composes the
same stages with baselines, GKD and its report. Each stage's steps are reported as ``<stage>/<step>``.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from puzzle.errors import ConfigError
from puzzle.files import atomic_path
from puzzle.library.space import AttentionOptions, FFNOptions, MambaOptions, SearchSpace
from puzzle.presets import Preset, get_preset
from puzzle.progress import ProgressSink, Scoped, StageTimer, StepProgress

if TYPE_CHECKING:
    from puzzle.library import BlockLibrary
    from puzzle.library.build import BuildConfig
    from puzzle.library.executor import Executor
    from puzzle.pipeline.request import BuildSettings, FuseSettings, PipelineRequest
    from puzzle.search.run import SearchResult

STAGES = ("parent", "library", "search", "export")
PARENT_DIR = "parent"  # a preset parent is trained in WORK/parent
DEFAULT_HELD_OUT = 0.05  # share of a directory parent's corpus files held out for scoring


def demo_space() -> SearchSpace:
    """A compact space that builds in minutes on 2 cores: KV heads 2 / 1, FFN 75 / 50 / 25 %, no-ops."""
    return SearchSpace(
        attention=AttentionOptions(kv_heads=(2, 1), linear=False, no_op=True),
        ffn=FFNOptions(fractions=(1.0, 0.75, 0.5, 0.25), linear=False, no_op=True),
        mamba=MambaOptions(head_fractions=(1.0, 0.5), no_op=True),
    )


def space_preset(name: str) -> SearchSpace:
    """``tiny`` (for smoke tests), ``demo`` (what ``puzzle demo`` builds) or ``default`` (the full space)."""
    if name == "tiny":
        return SearchSpace(
            attention=AttentionOptions(kv_heads=(), linear=False, no_op=True),
            ffn=FFNOptions(fractions=(0.5,), multiple=32, linear=False, no_op=True),
            mamba=MambaOptions(head_fractions=(0.5,), no_op=True),
        )
    if name == "demo":
        return demo_space()
    if name == "default":
        return SearchSpace()  # the full default space (puzzle.library.space.default_space)
    raise ConfigError(f"unknown space preset {name!r}; choose tiny, demo or default")


def demo_build_config() -> BuildConfig:
    from puzzle.library.build import BuildConfig
    from puzzle.library.distill import BLDConfig

    return BuildConfig(
        bld=BLDConfig(tokens=65_536, lr=5e-4, batch=8),
        seq_len=128,
        distill_sequences=128,
        holdout_sequences=32,
        repeats=10,
    )


def build_config(settings: BuildSettings, *, held_out_fraction: float, corpus: Path | None) -> BuildConfig:
    """The builder's configuration for a request's build settings (the demo's, with the request's sizes)."""
    from puzzle.library.build import BuildConfig

    base = demo_build_config()
    return BuildConfig(
        bld=replace(base.bld, tokens=settings.bld_tokens),
        seq_len=settings.seq_len,
        distill_sequences=settings.distill_sequences,
        holdout_sequences=settings.holdout_sequences,
        held_out_fraction=held_out_fraction,
        repeats=settings.latency_repeats,
        warmup=min(base.warmup, settings.latency_repeats),
        corpus=None if corpus is None else str(corpus),
    )


# --- stages -------------------------------------------------------------------------------------------------


def parent_stage(
    parent: Preset | Path,
    work: Path,
    *,
    corpus: str | Path | None,
    progress: ProgressSink,
    train_steps: int | None = None,
    status: Callable[[str], None] = lambda _message: None,
    load_stage: str = "parent",
    train_stage: str = "parent/train",
    report_reused: bool = True,
) -> Path:
    """The parent's folder: ``parent`` itself when a directory (checked loadable before any heavy work), else
    the preset trained (or reused) in ``work/parent``. ``report_reused``: a reused parent reports its training
    complete (a job's progress), instead of reporting nothing (the demo's rerun)."""
    if isinstance(parent, Path):
        from puzzle.model import arch_from_hf_config
        from puzzle.model.hf_config import read_config

        progress.start(load_stage, 1)
        arch_from_hf_config(read_config(parent))
        progress.advance(load_stage)
        return parent
    from puzzle.train import train_parent

    folder = work / PARENT_DIR
    on_step = StepProgress(progress, train_stage)
    result = train_parent(
        parent, folder, None if corpus is None else str(corpus), steps=train_steps, on_step=on_step, on_status=status
    )
    if on_step.started:
        on_step.finish()
    elif report_reused:
        progress.start(train_stage, result.steps)
        progress.finish(train_stage)
    if result.reused:
        status(f"reusing the parent trained in {folder}")
    return folder


def target_space(space: SearchSpace, target: str | None, parent_dir: Path) -> SearchSpace:
    """``space`` without the options ``target`` cannot load in a child of the parent in ``parent_dir``."""
    if target is None:
        return space
    from puzzle.model.hf_config import arch_from_hf_config, read_config
    from puzzle.targets import restrict_space

    return restrict_space(space, target, arch_from_hf_config(read_config(parent_dir)))


def library_stage(
    parent_dir: Path,
    work: Path,
    *,
    space: SearchSpace,
    config: BuildConfig,
    executor: Executor,
    progress: ProgressSink,
) -> BlockLibrary:
    """Build (or finish building) the parent's block library in ``work/library``."""
    from puzzle.library.build import build_library

    return build_library(parent_dir, work / "library", space=space, executor=executor, progress=progress, config=config)


@dataclass(frozen=True)
class Exported:
    """One exported point: its Hugging Face directory, the archive of it and its variant names."""

    folder: Path
    archive: Path
    layers: list[str]


def export_stage(
    library: BlockLibrary,
    work: Path,
    parent_dir: Path,
    result: SearchResult,
    points: Sequence[int],
    *,
    progress: ProgressSink,
    extra: dict[str, Any] | None = None,
    target: str | None = None,
    fuse: FuseSettings | None = None,
    corpus: Path | None = None,
) -> dict[int, Exported]:
    """Export each of ``points`` of ``result`` (indices into its points) into ``work/export/point-<k>`` and pack
    it as ``point-<k>.tar.gz``; a point whose archive and manifest are already there is kept. With ``fuse``, each
    child's attention-free FFN runs are fused first (``fuse_stage``) and the manifest records it."""
    from puzzle.child.assemble import load_parent
    from puzzle.child.export import MANIFEST_NAME, export_point, read_manifest

    wanted = list(dict.fromkeys(points))
    missing = [k for k in wanted if k >= len(result.points)]
    if missing:
        n = len(result.points)
        raise ConfigError(
            f"export_points {missing} are out of range: the search found {n} point(s); export points 0..{n - 1}"
        )
    out_root = work / "export"
    exports: dict[int, Exported] = {}
    parent_model = None
    progress.start("export", len(wanted))
    for k in wanted:
        point = result.points[k]
        layers = point.arch.names(library)
        folder, archive = out_root / f"point-{k}", out_root / f"point-{k}.tar.gz"
        done = archive.is_file() and (folder / MANIFEST_NAME).is_file() and read_manifest(folder)["layers"] == layers
        if not done:
            parent_model = parent_model or load_parent(library, parent_dir)
            fused, fusion = (None, None)
            if fuse is not None:
                fused, fusion = fuse_stage(library, work, point.arch, parent_model, parent_dir, corpus, fuse)
            export_point(
                library,
                work / "library",
                point.arch,
                folder,
                parent=parent_model,
                tokenizer_dir=parent_dir,
                objective={"metric": result.request.objective, "value": point.objective},
                constraints=result.request.constraint_texts,
                solver=result.solutions[0].solver if result.request.mode == "solve" else None,
                scenario=result.scenario,
                extra={
                    **(extra or {}),
                    "point": k,
                    "mode": result.request.mode,
                    **({"fusion": fusion} if fuse else {}),
                },
                force=True,
                target=target,
                model=fused,
            )
            pack(folder, archive)
        exports[k] = Exported(folder, archive, layers)
        progress.advance("export")
    return exports


def fuse_stage(
    library: BlockLibrary,
    work: Path,
    arch: Any,
    parent_model: Any,
    parent_dir: Path,
    corpus: Path | None,
    settings: FuseSettings,
) -> tuple[Any, dict[str, Any]]:
    """The child ``arch`` assembled and FFN-fused under ``settings`` (KL bound against the parent), with the
    fusion report; a child without a fusable run is returned unfused, the report saying why."""
    from puzzle.child.assemble import assemble
    from puzzle.child.fusion_plan import FusionConfig, fuse_child, fusion_tokens
    from puzzle.data import load_tokenizer

    child = assemble(library, work / "library", arch.names(library), parent=parent_model)
    calib, evaluation = fusion_tokens(
        None if corpus is None else str(corpus), load_tokenizer(parent_dir), settings.calib_tokens, settings.eval_tokens
    )
    config = FusionConfig(max_kl=settings.max_kl, max_fusions=settings.max_fusions)
    try:
        fused, report = fuse_child(child, calib[: settings.calib_tokens], evaluation, config, parent=parent_model)
    except ConfigError as exc:  # e.g. no run of attention-free layers: nothing to fuse
        return child, {"fused_groups": [], "skipped": str(exc)}
    return fused, report.to_dict()


def pack(folder: Path, archive: Path) -> None:
    """``folder`` as ``archive`` (tar.gz whose top folder is the folder's name), written atomically."""
    with atomic_path(archive) as tmp, tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
        tar.add(folder, arcname=folder.name)


# --- the whole pipeline -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PipelineResult:
    request: PipelineRequest
    parent_dir: Path
    library_dir: Path
    search: SearchResult
    exports: dict[int, Exported]
    seconds: dict[str, float]
    library_info: dict[str, Any] = field(default_factory=dict)  # what ``on_library`` returned

    def to_dict(self, relative: Callable[[Path], str] = str) -> dict[str, Any]:
        """The search result plus ``pipeline`` (parent, library, exports, seconds); paths through ``relative``."""
        r = self.request
        parent = {"preset": r.parent} if r.is_preset else {"directory": r.parent}
        exports = {
            str(k): {"dir": relative(e.folder), "archive": relative(e.archive), "layers": e.layers}
            for k, e in self.exports.items()
        }
        return {
            **self.search.to_dict(),
            "pipeline": {
                "parent": {**parent, "path": relative(self.parent_dir)},
                **self.library_info,
                "library_dir": relative(self.library_dir),
                "exports": exports,
                "seconds": self.seconds,
            },
        }


def run_pipeline(
    request: PipelineRequest,
    work: Path,
    *,
    parent_dir: Path | None,
    corpus: Path | None,
    executor: Executor,
    progress: ProgressSink,
    check: Callable[[], None] = lambda: None,
    on_library: Callable[[BlockLibrary], dict[str, Any]] | None = None,
    extra: dict[str, Any] | None = None,
    status: Callable[[str], None] = lambda _message: None,
) -> PipelineResult:
    """Parent -> library -> search -> export for ``request`` in ``work`` (resumes from what it holds).

    ``parent_dir``: where a directory parent is (None for a preset); ``on_library``: called with the built
    library before the search (a job stores it there); ``extra``: recorded in each export's manifest;
    ``status``: one-line messages of the parent stage (prefixed ``parent:``)."""
    from puzzle.search.run import run_search

    work.mkdir(parents=True, exist_ok=True)
    timer = StageTimer()
    check()
    if request.is_preset:
        parent_dir = parent_stage(
            get_preset(request.parent),
            work,
            corpus=corpus,
            train_steps=request.train_steps,
            progress=progress,
            status=lambda message: status(f"parent: {message}"),
        )
    else:
        assert parent_dir is not None, "a directory parent needs its folder"
        parent_dir = parent_stage(parent_dir, work, corpus=corpus, progress=progress)
    timer.lap("parent")
    knobs = request.build
    # the request's rule (also what a submission's corpus check splits with)
    config = build_config(knobs, held_out_fraction=request.held_out_fraction, corpus=corpus)
    library = library_stage(
        parent_dir,
        work,
        space=target_space(space_preset(knobs.space), request.target, parent_dir),
        config=config,
        executor=executor,
        progress=Scoped(progress, "library"),
    )
    info = on_library(library) if on_library is not None else {}
    timer.lap("library")
    search = request.search_request
    search.check(library)  # names of costs and scenarios are known only now
    found = run_search(library, search, progress=Scoped(progress, "search"), check=check)
    timer.lap("search")
    exports = (
        export_stage(
            library,
            work,
            parent_dir,
            found,
            request.export_points,
            progress=progress,
            extra=extra,
            target=search.target,
            fuse=request.fuse,
            corpus=corpus,
        )
        if request.export
        else {}
    )
    timer.lap("export")
    return PipelineResult(request, parent_dir, work / "library", found, exports, timer.rounded(3), info)
