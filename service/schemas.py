"""Request and response bodies: ``XCreate`` (what a client sends), ``XPublic`` (one), ``XsPublic`` (a page).

The bodies of searches and pipelines are the HTTP face of puzzle's request types (``puzzle.search.request``,
``puzzle.pipeline.request``): their enums and defaults come from puzzle's constants, and a route turns a body
into the request once (``SearchRequest.from_dict`` / ``service.pipelines.validate``). An elastic job's body is
``puzzle.elastic.ElasticRequest``'s fields (``service.elastic.validate``); a null (the default) there takes the
request's default, since that module loads torch, which the API imports only when an elastic job is submitted.
Response models read ORM rows directly (``from_attributes``).
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from puzzle.pipeline.request import (
    MAX_EXPORT_POINTS,
    NAME_PATTERN,
    PARENT_PRESETS,
    SPACE_PRESETS,
    BuildSettings,
    export_points_problem,
)
from puzzle.search.request import DEFAULT_OBJECTIVE, SEARCH_MODES, shape_problems
from puzzle.search.solvers import SOLVER_NAMES
from puzzle.targets import DEFAULT_TARGET, TARGETS
from service.models import JOB_KINDS, JOB_STATES

Name = Annotated[str, Field(pattern=NAME_PATTERN, min_length=1, max_length=100)]
Key = Annotated[str, Field(min_length=1, max_length=200)]
Constraint = Annotated[str, Field(min_length=1, max_length=200)]

# Literal[tuple] is Literal[*tuple]: each enum is puzzle's (or the job store's) own list of names
JobState = Literal[JOB_STATES]  # type: ignore[valid-type]
JobKind = Literal[JOB_KINDS]  # type: ignore[valid-type]
SearchMode = Literal[SEARCH_MODES]  # type: ignore[valid-type]
SolverName = Literal[SOLVER_NAMES]  # type: ignore[valid-type]
TargetName = Literal[tuple(TARGETS)]  # type: ignore[valid-type]
SpacePreset = Literal[SPACE_PRESETS]  # type: ignore[valid-type]
_DEFAULT_BUILD = BuildSettings()


class _Strict(BaseModel):
    # NaN / Infinity are valid Python JSON but no valid input (and PostgreSQL refuses them in JSON columns)
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# Every number of an uploaded library: finite and no larger than this in size (costs, sizes, batch sizes ...)
MAX_UPLOAD_NUMBER = 1e15
MAX_UPLOAD_DEPTH = 32


def number_problems(data: Any, loc: tuple[str | int, ...] = ()) -> list[tuple[tuple[str | int, ...], str]]:
    """Every number in ``data`` (nested dicts and lists) that is not finite or beyond ``MAX_UPLOAD_NUMBER``."""
    if len(loc) > MAX_UPLOAD_DEPTH:
        return [(loc, f"nested deeper than {MAX_UPLOAD_DEPTH} levels")]
    if isinstance(data, dict):
        return [p for key, value in data.items() for p in number_problems(value, (*loc, str(key)))]
    if isinstance(data, list):
        return [p for i, value in enumerate(data) for p in number_problems(value, (*loc, i))]
    if isinstance(data, bool) or not isinstance(data, int | float):
        return []
    if isinstance(data, float) and not math.isfinite(data):
        return [(loc, f"{data} is not a finite number")]
    if abs(data) > MAX_UPLOAD_NUMBER:
        return [
            (loc, f"{float(data):g} is beyond the sane range of a library's numbers (|x| <= {MAX_UPLOAD_NUMBER:g})")
        ]
    return []


# --- libraries -------------------------------------------------------------------------------------------


class NVlabsLibrary(_Strict):
    """The three files of an NVlabs Puzzle demo library, as JSON objects."""

    block_library: dict[str, Any] = Field(description="block_library.json: {layer_i: {variant: {stats, metrics}}}")
    measurement_info: dict[str, Any] = Field(description="measurement_info.json: gpu, dtype, batch_size, ...")
    parent_block_stats: dict[str, Any] = Field(description="parent_block_stats.json: {stats, metrics}")


class LibraryCreate(_Strict):
    """Upload a block library: ``format`` puzzle (our ``library.json``) or nvlabs (its three files)."""

    name: Name
    format: Literal["puzzle", "nvlabs"] = "puzzle"
    data: dict[str, Any] = Field(description="puzzle: the library.json object; nvlabs: an NVlabsLibrary object")

    @field_validator("data")
    @classmethod
    def _finite(cls, data: dict[str, Any]) -> dict[str, Any]:
        problems = number_problems(data)
        if problems:
            listed = "; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems[:10])
            more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
            raise ValueError(f"numbers of a library must be finite and |x| <= {MAX_UPLOAD_NUMBER:g}: {listed}{more}")
        return data


class ScenarioPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    name: str
    kind: str
    batch_size: int
    seq_len: int
    device: str
    dtype: str


class LibraryPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    digest: str
    format: str
    n_layers: int
    n_variants: int
    family: str | None
    hidden_size: int | None
    metric_keys: list[str]
    cost_keys: list[str]
    scenarios: list[ScenarioPublic]
    default_scenario: str | None
    created_at: datetime


class LibrariesPublic(BaseModel):
    data: list[LibraryPublic]
    next_cursor: str | None = None


# --- jobs --------------------------------------------------------------------------------------------------


class SearchParams(_Strict):
    """What to search for in a stored library."""

    mode: SearchMode = "solve"
    objective: Key = Field(default=DEFAULT_OBJECTIVE, description="a metric of the library (e.g. kl_div, lm_loss)")
    constraints: list[Constraint] = Field(default_factory=list, max_length=32, examples=[["runtime_ms<=50%"]])
    scenario: Key | None = None
    axis: Key | None = Field(default=None, description="frontier: the cost to sweep (e.g. runtime_ms)")
    lo: float | None = Field(default=None, description="frontier: smallest value of the axis to include")
    hi: float | None = Field(default=None, description="frontier: largest value of the axis to include")
    solver: SolverName | None = Field(default=None, description="MIP backend (default: dp, exact)")
    n: int = Field(default=5, ge=1, le=100, description="diverse: number of solutions")
    d: int = Field(default=1, ge=1, le=10_000, description="diverse: layers each solution must differ in")
    target: TargetName | None = Field(
        default=None, description="deployment target: choose only variants this engine loads (default: any)"
    )

    @model_validator(mode="after")
    def _check(self) -> SearchParams:
        problems = shape_problems(self.mode, self.axis, self.lo, self.hi)
        if problems:
            raise ValueError("; ".join(msg for _, msg in problems))
        return self


class SearchJobCreate(SearchParams):
    kind: Literal["search"]
    library_id: int = Field(ge=1, le=2**63 - 1)
    max_attempts: int | None = Field(default=None, ge=1, le=100)


class PipelineBuild(_Strict):
    """How the block library is built (``puzzle.library.build``). The defaults are small: minutes on a CPU."""

    space: SpacePreset = Field(
        default=_DEFAULT_BUILD.space,
        description="search space: tiny (KV heads halved, FFN 50 %, Mamba heads 50 %, no-ops; for smoke tests), "
        "demo (KV heads 2/1, FFN 75/50/25 %, no-ops: what `puzzle demo` builds) or default (the full Puzzle "
        "space of the parent's family)",
    )
    bld_tokens: int = Field(
        default=_DEFAULT_BUILD.bld_tokens, ge=64, le=10**10, description="BLD training tokens per unit"
    )
    seq_len: int = Field(
        default=_DEFAULT_BUILD.seq_len, ge=8, le=8192, description="sequence length of BLD and scoring text"
    )
    distill_sequences: int = Field(
        default=_DEFAULT_BUILD.distill_sequences, ge=2, le=1_000_000, description="BLD text: sequences cached"
    )
    holdout_sequences: int = Field(
        default=_DEFAULT_BUILD.holdout_sequences, ge=1, le=1_000_000, description="scoring text: held-out sequences"
    )
    held_out_fraction: float | None = Field(
        default=None,
        gt=0,
        lt=1,
        description="share of corpus files held out for scoring (default: the preset's, 0.05 for a directory)",
    )
    latency_repeats: int = Field(
        default=_DEFAULT_BUILD.latency_repeats, ge=1, le=1000, description="timed runs per latency measurement"
    )


class PipelineFuse(_Strict):
    """FFN fusion of each exported child: runs of attention-free layers joined into one wide FFN while the KL to
    the parent on calibration text stays within ``max_kl``."""

    max_kl: float = Field(default=0.05, ge=0, le=10, description="KL bound to the parent (nats / token)")
    max_fusions: int | None = Field(default=None, ge=1, le=10_000, description="at most this many joins")
    calib_tokens: int = Field(default=16_384, ge=256, le=10**8, description="tokens that score pairs and bound KL")
    eval_tokens: int = Field(default=32_768, ge=256, le=10**8, description="held-out tokens for before / after")


class _ParentJob(_Strict):
    """What pipeline and elastic jobs start from: a parent (a preset the job trains, or a stored one) and a corpus."""

    parent: Name = Field(
        description=f"a preset trained by the job ({' or '.join(PARENT_PRESETS)}), or the name of a Hugging Face "
        "directory under PUZZLE_ARTIFACTS/parents/ (a name, never a path)",
        examples=["tiny-llama"],
    )
    train_steps: int | None = Field(
        default=None, ge=1, le=1_000_000, description="preset parents: optimizer steps (default: the preset's)"
    )
    corpus: Name | None = Field(
        default=None,
        description="text to train / distill / score on: the name of a file or folder under "
        "PUZZLE_ARTIFACTS/corpora/ (default: the Python standard library of the worker)",
    )


class PipelineJobCreate(_ParentJob):
    """Parent -> library -> search -> export, in a work folder of the job under ``PUZZLE_ARTIFACTS`` (a re-queued
    job resumes there: training from its checkpoint, the library build skipping finished units)."""

    kind: Literal["pipeline"]
    build: PipelineBuild = Field(default_factory=PipelineBuild)
    search: SearchParams = Field(
        default_factory=SearchParams, description="the same search a 'search' job runs, over the built library"
    )
    export: bool = Field(default=True, description="write each of export_points as a Hugging Face directory")
    export_points: list[Annotated[int, Field(ge=0, le=10_000_000)]] = Field(
        default_factory=lambda: [0],
        min_length=1,
        max_length=MAX_EXPORT_POINTS,
        description="indices into the search result's points to export (solve: 0; diverse: 0..n-1; frontier: "
        "points sorted by the axis, cheapest first); GET /jobs/{id}/export?point=k serves each as a tar.gz",
    )
    target: TargetName | None = Field(
        default=DEFAULT_TARGET,
        description="deployment target: build, choose and export only children this engine loads (null: any)",
    )
    fuse: PipelineFuse | None = Field(default=None, description="fuse each exported child's FFN runs (null: no)")
    max_attempts: int | None = Field(default=None, ge=1, le=100)

    @model_validator(mode="after")
    def _check_points(self) -> PipelineJobCreate:
        problem = export_points_problem(self.search.mode, self.search.n, tuple(self.export_points), self.export)
        if problem is not None:
            raise ValueError(problem)
        return self


Fraction = Annotated[float, Field(ge=0, le=1)]
MAX_BUDGETS = 16


class ElasticSpaceParams(_Strict):
    """The sizes scored for every layer, as fractions of the parent's per axis (each list includes 1.0; 0 removes
    the subblock). Null: ``puzzle elastic train``'s defaults."""

    attention: list[Fraction] | None = Field(default=None, min_length=1, max_length=16, description="KV groups")
    ffn: list[Fraction] | None = Field(default=None, min_length=1, max_length=16, description="FFN channels")
    mamba: list[Fraction] | None = Field(default=None, min_length=1, max_length=16, description="heads per group")
    ffn_multiple: int | None = Field(
        default=None, ge=1, le=65_536, description="FFN widths on this grid (default: the target's, 256 or 1)"
    )


class ElasticTrainParams(_Strict):
    """Multi-budget distillation of the shared weights. Null: ``puzzle elastic train``'s defaults."""

    tokens: int | None = Field(default=None, ge=0, le=10**10, description="distillation text tokens (0: no training)")
    batch: int | None = Field(default=None, ge=1, le=4096, description="sequences per step")
    seq_len: int | None = Field(default=None, ge=8, le=8192, description="tokens per sequence")
    lr: float | None = Field(default=None, gt=0, le=1, description="peak learning rate")
    budgets_per_step: int | None = Field(
        default=None, ge=0, le=MAX_BUDGETS + 1, description="submodels trained per step (0: all)"
    )


class ElasticJobCreate(_ParentJob):
    """One checkpoint for every budget (``puzzle elastic train``), each budget then sliced out as a Hugging Face
    child (``GET /jobs/{id}/export?budget=b``), in a work folder of the job under ``PUZZLE_ARTIFACTS`` (a re-queued
    job resumes there)."""

    kind: Literal["elastic"]
    budgets: list[float] = Field(
        min_length=1,
        max_length=MAX_BUDGETS,
        description="distinct fractions of the parent's cost in (0, 1], one submodel each",
        examples=[[0.8, 0.6, 0.4]],
    )
    selection: Key | None = Field(
        default=None, description="who picks each budget's submodel: mip (default, exact) or router (trained)"
    )
    cost: Key | None = Field(
        default=None,
        description="the cost a budget bounds: num_params (default), memory_mib, or runtime_ms with measure_latency",
    )
    objective: Key | None = Field(
        default=None, description="the replace-one-block metric the MIP minimises: kl_div (default), lm_loss, cosine"
    )
    space: ElasticSpaceParams = Field(default_factory=ElasticSpaceParams)
    train: ElasticTrainParams = Field(default_factory=ElasticTrainParams)
    calibration_rows: int | None = Field(default=None, ge=1, le=100_000, description="rows that rank the parent")
    holdout_rows: int | None = Field(default=None, ge=1, le=100_000, description="held-out rows that score slices")
    score_seq_len: int | None = Field(default=None, ge=8, le=8192, description="tokens per calibration / held-out row")
    held_out_fraction: float | None = Field(
        default=None, gt=0, lt=1, description="share of corpus files held out for scoring (default: the preset's, 0.05)"
    )
    measure_latency: bool = Field(default=False, description="measure every slice's latency (runtime_ms)")
    target: TargetName | None = Field(
        default=DEFAULT_TARGET,
        description="deployment target: score, choose and slice only children this engine loads (null: any)",
    )
    export: bool = Field(default=True, description="slice every budget into a Hugging Face child served as tar.gz")
    max_attempts: int | None = Field(default=None, ge=1, le=100)


JobCreate = Annotated[SearchJobCreate | PipelineJobCreate | ElasticJobCreate, Field(discriminator="kind")]


class Progress(BaseModel):
    stage: str | None
    done: int
    total: int
    eta_s: float | None = Field(description="seconds left in this stage, once the rate is stable")


class JobPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    kind: str
    state: JobState
    spec: dict[str, Any]
    library_id: int | None
    attempts: int
    max_attempts: int
    cancel_requested: bool
    worker_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    progress: Progress
    error: str | None
    has_result: bool


class JobsPublic(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None = None


class JobEventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    job_id: int
    at: datetime
    type: str
    data: dict[str, Any]


class JobEventsPublic(BaseModel):
    data: list[JobEventPublic]
    last_id: int = Field(description="pass as ?after= to get only newer events")


# --- search results -------------------------------------------------------------------------------------


class SolveRequest(_Strict):
    objective: Key = "kl_div"
    constraints: list[Constraint] = Field(default_factory=list, max_length=32, examples=[["runtime_ms<=50%"]])
    scenario: Key | None = None
    solver: SolverName | None = Field(default=None, description="MIP backend (default: dp, exact)")
    target: TargetName | None = Field(default=None, description="deployment target (default: any)")


class PointPublic(BaseModel):
    """One architecture: its objective value, whole-model costs and the index of the variant chosen per layer."""

    objective: float
    costs: dict[str, float]
    choices: list[int]
    summary: str


class SolutionPublic(BaseModel):
    library_id: int
    objective_name: str
    point: PointPublic
    solver: str | None = None


class FrontierPublic(BaseModel):
    """A Pareto frontier: ``points`` sorted by the axis (view ``points``), or the parallel arrays a plot needs
    (view ``columns``: ``axis_values``, ``objectives``, ``summaries``)."""

    library_id: int
    objective_name: str
    axis: str
    scenario: str | None
    constraints: list[str]
    points: list[PointPublic] | None = None
    axis_values: list[float] | None = None
    objectives: list[float] | None = None
    summaries: list[str] | None = None


class LayerView(BaseModel):
    index: int
    variant: str
    is_parent: bool
    attention: dict[str, Any] | None
    ffn: dict[str, Any] | None
    mamba: dict[str, Any] | None
    costs: dict[str, float]
    metrics: dict[str, float]


class ArchitecturePublic(BaseModel):
    library_id: int
    job_id: int | None
    point: int | None
    objective_name: str
    objective: float
    costs: dict[str, float]
    summary: str
    layers: list[LayerView]
    block_configs: list[dict[str, Any]] | None


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    database: str = Field(description="the database's kind (postgresql, sqlite); never its host, user or name")
    schema_revision: str | None
    expected_revision: str
    detail: str | None = None
