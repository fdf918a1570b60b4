"""Pipeline jobs on the service side: where their inputs and outputs live under the artifact root, and the
checks a submission passes before it is queued.

Layout under ``PUZZLE_ARTIFACTS`` (every path made by ``artifacts.inside``; clients only ever send names):

    parents/<name>/          Hugging Face parent directories a pipeline may name as ``parent``
    corpora/<name>           text files or folders a pipeline may name as ``corpus``
    pipelines/job-<id>/      one job's work: parent/ (a trained preset), library/ (library.json, weights/,
                             work/ for the builder's resumable results), export/point-<k>/ + point-<k>.tar.gz
"""

from __future__ import annotations

from pathlib import Path

from puzzle.errors import ConfigError
from puzzle.library import BlockLibrary
from service.artifacts import inside
from service.errors import InvalidInputError
from service.schemas import PARENT_PRESETS, PipelineJobCreate
from service.settings import Settings

# Metrics every library built by ``puzzle.library.build`` has (``puzzle.library.score``): what a pipeline may optimise.
BUILT_METRICS = ("kl_div", "lm_loss", "cosine")


def work_dir(settings: Settings, job_id: int) -> Path:
    return inside(settings.artifacts, "pipelines", f"job-{job_id}")


def relative(settings: Settings, path: Path) -> str:
    """``path`` (under the artifact root) relative to it, with '/' separators, as stored in the database."""
    return path.resolve().relative_to(settings.artifacts.resolve()).as_posix()


def is_preset(parent: str) -> bool:
    return parent in PARENT_PRESETS


def parent_dir(settings: Settings, name: str) -> Path:
    return inside(settings.artifacts, "parents", name)


def corpus_path(settings: Settings, name: str | None) -> Path | None:
    return None if name is None else inside(settings.artifacts, "corpora", name)


def _known(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir())[:20] if folder.is_dir() else []
    return ", ".join(names) if names else "none"


def validate(settings: Settings, body: PipelineJobCreate) -> None:
    """Every problem of a pipeline submission at once (InvalidInputError -> 422), before it is queued."""
    from puzzle.search.problem import parse_constraint

    problems: list[tuple[list[str | int], str]] = []
    if not is_preset(body.parent):
        try:
            folder = parent_dir(settings, body.parent)
            if not (folder / "config.json").is_file():
                raise ConfigError(
                    f"parent {body.parent!r} is neither a preset ({', '.join(PARENT_PRESETS)}) nor a Hugging Face "
                    f"directory under PUZZLE_ARTIFACTS/parents/ (known there: {_known(folder.parent)})"
                )
        except ConfigError as exc:
            problems.append((["body", "parent"], str(exc)))
        if body.train_steps is not None:
            problems.append((["body", "train_steps"], "train_steps applies to preset parents only"))
    if body.corpus is not None:
        try:
            path = corpus_path(settings, body.corpus)
            assert path is not None
            if not path.exists():
                raise ConfigError(
                    f"no corpus {body.corpus!r} under PUZZLE_ARTIFACTS/corpora/ (known there: {_known(path.parent)})"
                )
        except ConfigError as exc:
            problems.append((["body", "corpus"], str(exc)))
    search = body.search
    if search.objective not in BUILT_METRICS:
        problems.append(
            (
                ["body", "search", "objective"],
                f"unknown objective {search.objective!r}: a built library has {', '.join(BUILT_METRICS)}",
            )
        )
    for i, text in enumerate(search.constraints):
        try:
            parse_constraint(text)
        except ConfigError as exc:
            problems.append((["body", "search", "constraints", i], str(exc)))
    if problems:
        raise InvalidInputError(problems)


def check_search(library: BlockLibrary, body: PipelineJobCreate) -> None:
    """The search part against the built library (names of costs and scenarios are known only now)."""
    from service.search import validate_params

    validate_params(library, body.search, where="search")
