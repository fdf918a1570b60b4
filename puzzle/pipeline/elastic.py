"""An elastic family as one run (the service's ``elastic`` job): parent -> elastic build -> a slice per budget.

    parent   ``stages.parent_stage``: a preset trained in ``WORK/parent``, or a Hugging Face directory checked
    elastic  ``puzzle.elastic.build_elastic`` into the request's ``out`` (steps ``elastic/score``, one per layer
             scored, and ``elastic/distill``, one per training step); a rerun resumes from what ``out`` holds
    export   per budget, ``puzzle.elastic.slice_budget`` into ``WORK/export/budget-<b>``, packed as
             ``budget-<b>.tar.gz`` (``stages.pack``); a budget whose archive is there is kept

``run_elastic`` chains them for an ``ElasticRequest`` and reports them to one progress sink, as
``stages.run_pipeline`` does for a pipeline.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from puzzle.pipeline.stages import PARENT_DIR, Exported, pack, parent_stage
from puzzle.progress import ProgressSink, StageTimer, StepProgress

if TYPE_CHECKING:
    from puzzle.elastic import ElasticRequest, FamilyMember
    from puzzle.presets import Preset


@dataclass(frozen=True)
class ElasticRun:
    request: ElasticRequest
    preset: str | None  # the preset the parent was trained from (None: a directory parent)
    summary: dict[str, Any]  # the folder's elastic.json
    family: tuple[FamilyMember, ...]
    exports: dict[float, Exported]  # budget -> its slice
    seconds: dict[str, float]

    def to_dict(self, relative: Callable[[Path], str] = str) -> dict[str, Any]:
        """``family``: per budget (largest first) its configuration, parameters, predicted cost and quality, held-out
        perplexity and its export; ``elastic``: the family's settings, parent (and its held-out perplexity, with
        the rows it and the budgets' were measured on; None from a schema-1 folder), folder, training and seconds.
        Paths through ``relative``."""
        s, training = self.summary, self.summary["training"]
        parent = {"path": relative(Path(self.request.parent))} | ({"preset": self.preset} if self.preset else {})
        exports = {b: {"dir": relative(e.folder), "archive": relative(e.archive)} for b, e in self.exports.items()}
        return {
            "family": [m.to_dict() | {"export": exports.get(m.budget)} for m in self.family],
            "elastic": {
                "parent": parent,
                "dir": relative(Path(self.request.out)),
                "selection": s["selection"],
                "cost": s["cost"],
                "objective": s["objective"],
                "target": s["target"],
                "parent_params": s["parent_params"],
                "parent_perplexity": s.get("parent_perplexity"),
                "perplexity_on": s.get("perplexity_on"),
                "training": None
                if training is None
                else {k: training[k] for k in ("steps", "tokens", "student_tokens", "wall_s")}
                | {"final_loss": training["losses"][-1] if training["losses"] else None},
                "seconds": self.seconds,
            },
        }


def run_elastic(
    request: ElasticRequest,
    work: Path,
    *,
    preset: Preset | None = None,
    train_steps: int | None = None,
    export: bool = True,
    progress: ProgressSink,
    check: Callable[[], None] = lambda: None,
    status: Callable[[str], None] = lambda _message: None,
) -> ElasticRun:
    """Parent -> elastic family -> a slice per budget for ``request`` in ``work`` (resumes from what it holds).

    ``preset``: train it first, in ``work/parent``, which ``request.parent`` must name; else ``request.parent`` is
    a Hugging Face directory, checked to load before any heavy work. ``status``: one-line messages of the parent
    and elastic stages (prefixed ``parent:`` / ``elastic:``)."""
    from puzzle.elastic import build_elastic, family

    timer = StageTimer()
    check()
    parent = Path(request.parent)
    if preset is not None:
        trained = parent_stage(
            preset,
            work,
            corpus=request.corpus,
            train_steps=train_steps,
            progress=progress,
            status=lambda message: status(f"parent: {message}"),
        )
        assert trained == parent == work / PARENT_DIR, f"a preset parent is trained in {work / PARENT_DIR}"
    else:
        parent_stage(parent, work, corpus=request.corpus, progress=progress)
    timer.lap("parent")
    check()

    def on_layer(done: int, total: int) -> None:
        if done == 1:
            progress.start("elastic/score", total)
        progress.advance("elastic/score")

    on_step = StepProgress(progress, "elastic/distill")
    summary = build_elastic(
        request, on_status=lambda message: status(f"elastic: {message}"), on_layer=on_layer, on_step=on_step
    )
    on_step.finish()
    timer.lap("elastic")
    members = family(request.out)
    exports = export_budgets(Path(request.out), members, work, progress=progress, check=check) if export else {}
    timer.lap("export")
    return ElasticRun(request, None if preset is None else preset.name, summary, members, exports, timer.rounded(3))


def export_budgets(
    folder: Path,
    members: tuple[FamilyMember, ...],
    work: Path,
    *,
    progress: ProgressSink,
    check: Callable[[], None] = lambda: None,
) -> dict[float, Exported]:
    """Each budget of the elastic ``folder`` sliced into ``work/export/budget-<b>`` and packed next to it."""
    from puzzle.elastic import slice_budget
    from puzzle.elastic.space import budget_key

    exports = {}
    progress.start("export", len(members))
    for member in members:
        check()
        name = f"budget-{budget_key(member.budget)}"
        child, archive = work / "export" / name, work / "export" / f"{name}.tar.gz"
        if not archive.is_file():  # the archive is written last (atomically), from a whole child directory
            slice_budget(folder, member.budget, child)
            pack(child, archive)
        exports[member.budget] = Exported(child, archive, [c.name for c in member.config.layers])
        progress.advance("export")
    return exports
