"""The ``pipeline`` job kind: parent -> library -> search -> export, in the job's work folder.

Stages and what they report (``ctx.progress(stage, done, total)``; a stage with steps reports ``stage/step``):

    parent   a preset: ``parent/train`` per optimizer step (resumes from its checkpoint); a directory under
             ``PUZZLE_ARTIFACTS/parents``: ``parent`` 1/1
    library  ``puzzle.library.build`` on Ray (``PUZZLE_RAY_ADDRESS`` joins a cluster, else a local one is started):
             ``library/prepare``, ``library/distill`` (one unit per BLD training), ``library/score``,
             ``library/profile``, ``library/assemble``; finished units are kept in ``library/work`` and skipped
             when a re-queued job runs again. The library is then stored like an upload (``job.library_id``)
    search   the search a ``search`` job runs, over the built library: ``search/solve`` | ``search/diverse``
             (per pool member) | ``search/frontier``
    export   per exported point: assembled from library weights, written as a Hugging Face directory
             (``puzzle.child.export``) and packed as ``point-<k>.tar.gz`` for ``GET /jobs/{id}/export``

Everything is written under ``PUZZLE_ARTIFACTS/pipelines/job-<id>`` (see ``service.pipelines``); the job's
result is the search result plus ``pipeline`` (parent, library, exports).
"""

from __future__ import annotations

import os
import tarfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from puzzle.files import atomic_path
from service import crud, db, pipelines
from service import libraries as library_store
from service import search as search_ops
from service.errors import ConflictError
from service.schemas import PipelineJobCreate

if TYPE_CHECKING:
    from puzzle.library import BlockLibrary
    from puzzle.library.space import SearchSpace
    from workers.runner import JobContext

STAGES = ("parent", "library", "search", "export")


class StageProgress:
    """A ``puzzle.progress.ProgressSink`` that reports one pipeline stage's steps to the job.

    ``start / advance / finish`` of step ``s`` become ``ctx.progress("<stage>/<s>", done, total)``, at most every
    ``interval_s`` seconds in between (start, finish and the last unit always); every call checks for cancel."""

    def __init__(self, ctx: JobContext, stage: str, *, interval_s: float = 0.25):
        self.ctx, self.stage, self.interval_s = ctx, stage, interval_s
        self.totals: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self._last = 0.0

    def _report(self, step: str, *, force: bool) -> None:
        now = time.monotonic()
        done, total = self.done[step], self.totals.get(step, 0)
        if force or done >= total or now - self._last >= self.interval_s:
            self._last = now
            self.ctx.progress(f"{self.stage}/{step}", done, total)
        else:
            self.ctx.check()

    def start(self, stage: str, total: int) -> None:
        self.totals[stage], self.done[stage] = total, 0
        self._report(stage, force=True)

    def advance(self, stage: str, n: int = 1) -> None:
        self.done[stage] = self.done.get(stage, 0) + n
        self._report(stage, force=False)

    def finish(self, stage: str) -> None:
        self.done[stage] = self.totals.get(stage, self.done.get(stage, 0))
        self._report(stage, force=True)


# --- stages --------------------------------------------------------------------------------------------


def _parent(ctx: JobContext, spec: PipelineJobCreate, work: Path) -> Path:
    if not pipelines.is_preset(spec.parent):
        ctx.progress("parent", 0, 1)
        folder = pipelines.parent_dir(ctx.settings, spec.parent)
        from puzzle.model import arch_from_hf_config
        from puzzle.model.hf import read_config

        arch_from_hf_config(read_config(folder))  # a parent this code can load, before any heavy work
        ctx.progress("parent", 1, 1)
        return folder
    from puzzle.presets import get_preset
    from puzzle.progress import StepProgress
    from puzzle.train import train_parent

    on_step = StepProgress(StageProgress(ctx, "parent"), "train")

    result = train_parent(
        get_preset(spec.parent),
        work / "parent",
        pipelines.corpus_path(ctx.settings, spec.corpus),
        steps=spec.train_steps,
        on_step=on_step,
        on_status=lambda message: ctx.log(f"parent: {message}"),
    )
    if on_step.started:
        on_step.finish()
    else:
        ctx.progress("parent/train", result.steps, result.steps)  # reused a finished parent
    return work / "parent"


def space_preset(name: str) -> SearchSpace:
    from puzzle.library.space import AttentionOptions, FFNOptions, MambaOptions, SearchSpace
    from puzzle.pipeline.demo import demo_space

    if name == "tiny":
        return SearchSpace(
            attention=AttentionOptions(kv_heads=(), linear=False, no_op=True),
            ffn=FFNOptions(fractions=(0.5,), multiple=32, linear=False, no_op=True),
            mamba=MambaOptions(head_fractions=(0.5,), no_op=True),
        )
    if name == "demo":
        return demo_space()
    return SearchSpace()  # the full default space (puzzle.library.space.default_space)


def _library(ctx: JobContext, spec: PipelineJobCreate, work: Path, parent_dir: Path) -> BlockLibrary:
    from puzzle.library.build import BuildConfig, build_library
    from puzzle.library.executor import make_executor
    from puzzle.pipeline.demo import demo_build_config

    knobs = spec.build
    held_out = knobs.held_out_fraction
    if held_out is None:
        from puzzle.presets import get_preset

        held_out = get_preset(spec.parent).train.held_out_fraction if pipelines.is_preset(spec.parent) else 0.05
    base = demo_build_config()
    corpus = pipelines.corpus_path(ctx.settings, spec.corpus)
    config = BuildConfig(
        bld=replace(base.bld, tokens=knobs.bld_tokens),
        seq_len=knobs.seq_len,
        distill_sequences=knobs.distill_sequences,
        holdout_sequences=knobs.holdout_sequences,
        held_out_fraction=held_out,
        repeats=knobs.latency_repeats,
        warmup=min(base.warmup, knobs.latency_repeats),
        corpus=None if corpus is None else str(corpus),
    )
    address = ctx.settings.ray_address or os.environ.get("RAY_ADDRESS") or None
    with make_executor("ray", address=address) as executor:
        return build_library(
            parent_dir,
            work / "library",
            space=space_preset(knobs.space),
            executor=executor,
            progress=StageProgress(ctx, "library"),
            config=config,
        )


def _register(ctx: JobContext, library: BlockLibrary, work: Path) -> dict[str, Any]:
    """Store the built library like an upload (frontier, solve and the dashboard work on it); sets job.library_id."""
    digest = library.digest()
    name = f"job{ctx.job_id}-{digest[:12]}"
    path = pipelines.relative(ctx.settings, work / "library")
    with db.session_scope(ctx.sessions) as session:
        row = crud.get_library_by_name(session, name=name)
        if row is None:
            row = crud.create_library(
                session,
                name=name,
                fmt="puzzle",
                digest=digest,
                path=path,
                n_layers=library.n_layers,
                n_variants=library.n_variants,
                summary=library_store.summary(library),
            )
        elif row.digest != digest or row.path != path:
            raise ConflictError(f"library {name!r} exists with other content; cannot register job {ctx.job_id}'s")
        crud.attach_library(session, job_id=ctx.job_id, worker_id=ctx.worker_id, library_id=row.id)
        return {"library_id": row.id, "library_name": name, "library_digest": digest}


def _export(
    ctx: JobContext, spec: PipelineJobCreate, work: Path, parent_dir: Path, library: BlockLibrary, result: dict
) -> dict[str, Any]:
    from puzzle.child.assemble import assemble, load_parent
    from puzzle.child.export import MANIFEST_NAME, build_manifest, export_child, predicted_costs, read_manifest

    points = result["points"]
    wanted = list(dict.fromkeys(spec.export_points))
    missing = [k for k in wanted if k >= len(points)]
    if missing:
        from puzzle.errors import ConfigError

        raise ConfigError(
            f"export_points {missing} are out of range: the search found {len(points)} point(s); "
            f"export points 0..{len(points) - 1}"
        )
    out_root = work / "export"
    lib_dir = work / "library"
    exports: dict[str, Any] = {}
    parent_model = None
    ctx.progress("export", 0, len(wanted))
    for n, k in enumerate(wanted):
        layers = [library.layers[i].variants[j].name for i, j in enumerate(points[k]["choices"])]
        target, archive = out_root / f"point-{k}", out_root / f"point-{k}.tar.gz"
        done = archive.is_file() and (target / MANIFEST_NAME).is_file() and read_manifest(target)["layers"] == layers
        if not done:
            parent_model = parent_model or load_parent(library, parent_dir)
            child = assemble(library, lib_dir, layers, parent=parent_model)
            manifest = build_manifest(
                parent_digest=library.parent.get("digest"),
                library_digest=library.digest(),
                layers=layers,
                objective={"metric": result["objective_name"], "value": points[k]["objective"]},
                constraints=result.get("constraints", ()),
                predicted_costs=predicted_costs(library, layers),
                solver=(result.get("search") or {}).get("solver"),
                scenario=result.get("scenario"),
                extra={"job_id": ctx.job_id, "point": k, "mode": result["mode"]},
            )
            export_child(child, target, manifest=manifest, tokenizer_dir=parent_dir, force=True)
            _pack(target, archive)
        exports[str(k)] = {
            "dir": pipelines.relative(ctx.settings, target),
            "archive": pipelines.relative(ctx.settings, archive),
            "layers": layers,
        }
        ctx.progress("export", n + 1, len(wanted))
    return exports


def _pack(folder: Path, archive: Path) -> None:
    """``folder`` as ``archive`` (tar.gz whose top folder is the folder's name), written atomically."""
    with atomic_path(archive) as tmp, tarfile.open(tmp, "w:gz", compresslevel=1) as tar:
        tar.add(folder, arcname=folder.name)


def run_pipeline(ctx: JobContext) -> dict[str, Any]:
    """Runner of ``pipeline`` jobs (see the module docstring); resumes from the job's work folder."""
    spec = PipelineJobCreate.model_validate({**ctx.spec, "kind": "pipeline"})
    work = pipelines.work_dir(ctx.settings, ctx.job_id)
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(stage: str) -> None:
        nonlocal started
        now = time.perf_counter()
        timings[stage] = round(now - started, 3)
        started = now

    ctx.check()
    parent_dir = _parent(ctx, spec, work)
    lap("parent")
    library = _library(ctx, spec, work, parent_dir)
    info = _register(ctx, library, work)
    lap("library")
    pipelines.check_search(library, spec)
    params = spec.search.model_dump(mode="json")

    def search_progress(stage: str, done: int, total: int) -> None:
        ctx.progress(f"search/{stage}", done, total)

    result = search_ops.run_search(library, params, progress=search_progress, check_stop=ctx.check)
    lap("search")
    exports = _export(ctx, spec, work, parent_dir, library, result) if spec.export else {}
    lap("export")
    parent = {"preset": spec.parent} if pipelines.is_preset(spec.parent) else {"directory": spec.parent}
    result["pipeline"] = {
        "parent": {**parent, "path": pipelines.relative(ctx.settings, parent_dir)},
        **info,
        "library_dir": pipelines.relative(ctx.settings, work / "library"),
        "exports": exports,
        "seconds": timings,
    }
    return result
