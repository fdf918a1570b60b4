"""``PipelineRequest``: parent -> library -> search -> export, as one typed request (a REST body, a job spec).

Names only, never paths: ``parent`` is a preset (``puzzle.presets.PRESETS``, trained by the pipeline) or the name
of a Hugging Face directory under a parents folder; ``corpus`` the name of a file or folder under a corpora
folder. Where those folders are is the caller's (the service: ``PUZZLE_ARTIFACTS/parents`` and ``/corpora``).
``from_dict`` lists every problem at once (``RequestError``); ``input_problems`` checks the named inputs exist.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from puzzle.presets import PRESETS
from puzzle.search.request import Problems, RequestError, SearchRequest
from puzzle.targets import DEFAULT_TARGET, TARGETS

PARENT_PRESETS: tuple[str, ...] = tuple(PRESETS)
SPACE_PRESETS = ("tiny", "demo", "default")
BUILT_METRICS = ("kl_div", "lm_loss", "cosine")  # what every built library records (puzzle.library.score)
# Names are labels only (never paths): letters, digits, '_', '.', '-', starting with a letter or digit.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$"
MAX_EXPORT_POINTS = 16
DEFAULT_HELD_OUT_FRACTION = 0.05  # a directory parent's (puzzle.pipeline.stages.DEFAULT_HELD_OUT)


@dataclass(frozen=True)
class BuildSettings:
    """How the block library is built (``puzzle.library.build``). The defaults are small: minutes on a CPU."""

    space: str = "demo"  # a SPACE_PRESETS name (``puzzle.pipeline.stages.space_preset``)
    bld_tokens: int = 65_536
    seq_len: int = 128
    distill_sequences: int = 128
    holdout_sequences: int = 32
    held_out_fraction: float | None = None  # None: the preset's, 0.05 for a directory parent
    latency_repeats: int = 10

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FuseSettings:
    """FFN fusion of each exported child (``puzzle.child.fusion_plan``): joins kept while the KL to the parent on
    calibration text stays within ``max_kl`` (nats/token), at most ``max_fusions``."""

    max_kl: float = 0.05
    max_fusions: int | None = None
    calib_tokens: int = 16_384
    eval_tokens: int = 32_768

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def export_points_problem(mode: str, n: int, points: tuple[int, ...], export: bool) -> str | None:
    """Why ``points`` cannot be exported from a ``mode`` search of ``n`` solutions (None when they can, or when
    the number of points is known only after the search: a frontier)."""
    count = 1 if mode == "solve" else n if mode == "diverse" else None
    if export and count is not None and points and max(points) >= count:
        return f"export_points must be below {count}: a {mode} search gives {count} point(s)"
    return None


@dataclass(frozen=True)
class PipelineRequest:
    """One pipeline run (see the module docstring)."""

    parent: str
    train_steps: int | None = None  # preset parents: optimizer steps (None: the preset's)
    corpus: str | None = None  # None: the default corpus (the Python standard library)
    build: BuildSettings = field(default_factory=BuildSettings)
    search: SearchRequest = field(default_factory=SearchRequest)
    export: bool = True
    export_points: tuple[int, ...] = (0,)
    target: str | None = DEFAULT_TARGET  # build, choose and export only what this engine loads (None: any)
    fuse: FuseSettings | None = None  # fuse each exported child's attention-free FFN runs (None: no fusion)

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise RequestError(problems)

    @property
    def is_preset(self) -> bool:
        return self.parent in PARENT_PRESETS

    @property
    def search_request(self) -> SearchRequest:
        """The search, bounded to the pipeline's target unless it names its own."""
        if self.search.target is not None or self.target is None:
            return self.search
        return replace(self.search, target=self.target)

    @property
    def held_out_fraction(self) -> float:
        """Share of the corpus held out for scoring: the request's, else the preset's, else 0.05."""
        if self.build.held_out_fraction is not None:
            return self.build.held_out_fraction
        return PRESETS[self.parent].train.held_out_fraction if self.is_preset else DEFAULT_HELD_OUT_FRACTION

    def to_dict(self) -> dict[str, Any]:
        return {
            "parent": self.parent,
            "train_steps": self.train_steps,
            "corpus": self.corpus,
            "build": self.build.to_dict(),
            "search": self.search.to_dict(),
            "export": self.export,
            "export_points": list(self.export_points),
            "target": self.target,
            "fuse": None if self.fuse is None else self.fuse.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PipelineRequest:
        """Parse ``data`` (keys of ``to_dict``; others ignored), listing every problem at once."""
        problems: Problems = []
        search = SearchRequest()
        try:
            search = SearchRequest.from_dict(data.get("search") or {})
        except RequestError as exc:
            problems += [(("search", *loc), msg) for loc, msg in exc.problems]
            objective = (data.get("search") or {}).get("objective", search.objective)
            if (problem := _objective_problem(objective)) is not None:
                problems.append((("search", "objective"), problem))
        build_data = dict(data.get("build") or {})
        unknown = sorted(set(build_data) - set(BuildSettings.__dataclass_fields__))
        if unknown:
            problems.append((("build",), f"unknown build settings {', '.join(unknown)}"))
        build = BuildSettings(**{k: v for k, v in build_data.items() if k not in unknown})
        fields: dict[str, Any] = {
            "parent": data.get("parent"),
            "train_steps": data.get("train_steps"),
            "corpus": data.get("corpus"),
            "export": bool(data.get("export", True)),
            "export_points": tuple(data.get("export_points") or (0,)),
            "target": data.get("target", DEFAULT_TARGET),
            "fuse": _fuse_settings(data.get("fuse"), problems),
        }
        try:
            request = cls(build=build, search=search, **fields)
        except RequestError as exc:
            problems += exc.problems
            request = None
        if problems or request is None:
            raise RequestError(problems)
        return request


def _fuse_settings(data: Any, problems: Problems) -> FuseSettings | None:
    if data is None:
        return None
    if not isinstance(data, Mapping):
        problems.append((("fuse",), 'fuse must be an object like {"max_kl": 0.05}'))
        return None
    unknown = sorted(set(data) - set(FuseSettings.__dataclass_fields__))
    if unknown:
        problems.append((("fuse",), f"unknown fuse settings {', '.join(unknown)}"))
    settings = FuseSettings(**{k: v for k, v in data.items() if k not in unknown})
    if not isinstance(settings.max_kl, int | float) or isinstance(settings.max_kl, bool) or not settings.max_kl >= 0:
        problems.append((("fuse", "max_kl"), f"max_kl must be a number >= 0, got {settings.max_kl!r}"))
    for name in ("max_fusions", "calib_tokens", "eval_tokens"):
        value = getattr(settings, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            problems.append((("fuse", name), f"{name} must be a positive integer, got {value!r}"))
    return settings


def input_problems(
    parent: str,
    corpus: str | None,
    parents: Path,
    corpora: Path,
    *,
    where: str = "",
    request: PipelineRequest | None = None,
) -> Problems:
    """The named parent directory and corpus, if not there (``where``: how to name their folders to users);
    with ``request``, also what the job would fail on later: a corpus the library stage cannot split into
    training and held-out text (``corpus_problem``), a diversity larger than the parent's layers."""
    problems: Problems = []
    if parent not in PARENT_PRESETS and not (parents / parent / "config.json").is_file():
        problems.append(
            (
                ("parent",),
                f"parent {parent!r} is neither a preset ({', '.join(PARENT_PRESETS)}) nor a Hugging Face "
                f"directory under {where}parents/ (known there: {_known(parents)})",
            )
        )
    elif request is not None:
        layers = parent_layers(parent, parents)
        if request.search.mode == "diverse" and layers is not None and request.search.diversity > layers:
            problems.append(
                (("search", "d"), f"d ({request.search.diversity}) must not exceed the parent's {layers} layers")
            )
    if corpus is not None and not (corpora / corpus).exists():
        problems.append((("corpus",), f"no corpus {corpus!r} under {where}corpora/ (known there: {_known(corpora)})"))
    elif corpus is not None and request is not None:
        problem = corpus_problem(corpora / corpus, request.held_out_fraction)
        if problem is not None:
            problems.append((("corpus",), problem))
    return problems


def corpus_problem(path: Path, held_out_fraction: float, knob: str = "build.held_out_fraction") -> str | None:
    """Why the library stage could not use the corpus at ``path``: the same reading and split it does
    (``puzzle.data.read_corpus`` / ``split_corpus``), needing training and held-out text both (``knob``: the
    request's setting of the held-out share, named in the advice)."""
    from puzzle.data import read_corpus, split_corpus, split_problem
    from puzzle.errors import DataError

    try:
        train, held = split_corpus(read_corpus(path), held_out_fraction)
    except DataError as exc:
        return str(exc)
    problem = split_problem(train, held, held_out_fraction)
    return None if problem is None else f"{problem}: add files or set {knob}"


def parent_layers(parent: str, parents: Path) -> int | None:
    """The parent's number of layers (a preset's architecture, or a directory's config.json); None if unknown."""
    if parent in PARENT_PRESETS:
        preset = PRESETS[parent]
        return preset.make_arch(preset.vocab_size).n_layers
    try:
        import json

        config = json.loads((parents / parent / "config.json").read_text(encoding="utf-8"))
        layers = config.get("num_hidden_layers")
        return int(layers) if isinstance(layers, int) and layers > 0 else None
    except (OSError, ValueError):
        return None


def _known(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir())[:20] if folder.is_dir() else []
    return ", ".join(names) if names else "none"


def _objective_problem(objective: Any) -> str | None:
    if objective in BUILT_METRICS:
        return None
    return f"unknown objective {objective!r}: a built library has {', '.join(BUILT_METRICS)}"


def source_problems(parent: Any, corpus: Any, train_steps: int | None) -> Problems:
    """What is wrong with a job's named inputs: ``parent`` and ``corpus`` are names, never paths, and
    ``train_steps`` applies to a preset parent only (a pipeline's, an elastic job's)."""
    problems: Problems = []
    for name, value in (("parent", parent), ("corpus", corpus)):
        if (value is not None or name == "parent") and not (isinstance(value, str) and re.match(NAME_PATTERN, value)):
            problems.append(((name,), f"{name} must be a name (letters, digits, '_', '.', '-'), never a path"))
    if train_steps is not None and parent not in PARENT_PRESETS:
        problems.append((("train_steps",), "train_steps applies to preset parents only"))
    return problems


def _problems(r: PipelineRequest) -> Problems:
    problems = source_problems(r.parent, r.corpus, r.train_steps)
    if r.build.space not in SPACE_PRESETS:
        problems.append(
            (("build", "space"), f"unknown space preset {r.build.space!r}; choose one of {', '.join(SPACE_PRESETS)}")
        )
    if r.target is not None and r.target not in TARGETS:
        problems.append((("target",), f"unknown target {r.target!r}; choose one of {', '.join(TARGETS)}"))
    if (problem := _objective_problem(r.search.objective)) is not None:
        problems.append((("search", "objective"), problem))
    if not 1 <= len(r.export_points) <= MAX_EXPORT_POINTS or any(k < 0 for k in r.export_points):
        problems.append((("export_points",), f"export_points: 1 to {MAX_EXPORT_POINTS} indices >= 0"))
    elif (problem := export_points_problem(r.search.mode, r.search.n, r.export_points, r.export)) is not None:
        problems.append((("export_points",), problem))
    return problems
