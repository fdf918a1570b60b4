"""Service settings from environment variables with the ``PUZZLE_`` prefix (the same for API, workers, compose)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """``PUZZLE_DATABASE_URL``, ``PUZZLE_API_TOKEN``, ``PUZZLE_RAY_ADDRESS``, ``PUZZLE_ARTIFACTS`` and tuning knobs."""

    model_config = SettingsConfigDict(env_prefix="PUZZLE_", extra="ignore")

    # SQLite file for a local single-user run; PostgreSQL (postgresql+psycopg://...) for a shared service.
    database_url: str = "sqlite:///runs/puzzle.db"
    # When set, every write and every expensive read (frontier, solve) needs ``Authorization: Bearer <token>``
    # (docs/access.md; ``service.api.access`` enforces it).
    api_token: SecretStr | None = None
    # Ray cluster for pipeline stages (``None``: a local cluster started in-process when a stage needs one).
    ray_address: str | None = None
    # Root folder of everything the service writes (libraries, exports); nothing is written outside it.
    artifacts: Path = Path("runs/artifacts")
    # Attempts a job gets before a lost worker makes it fail (stale running jobs are re-queued until then).
    job_max_attempts: int = Field(default=3, ge=1, le=100)
    heartbeat_s: float = Field(default=5.0, gt=0)
    # A running job whose heartbeat is older than this is considered lost and re-queued.
    stale_after_s: float = Field(default=60.0, gt=0)
    # How often an idle worker looks for queued jobs.
    poll_s: float = Field(default=1.0, gt=0)
    # Largest request body accepted for a library upload (bytes), counted on the bytes read, chunked or not.
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    # Largest body of any other request (job submissions, solves).
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    # Synchronous frontier / solve: the largest library they run on (bigger ones: submit a search job) ...
    max_search_layers: int = Field(default=512, ge=1)
    max_search_variants: int = Field(default=50_000, ge=1)
    # ... the largest answer (frontier points x layers) and the longest they may run.
    max_frontier_cells: int = Field(default=5_000_000, ge=1)
    sync_time_limit_s: float = Field(default=60.0, gt=0, allow_inf_nan=False)
    # Frontier bodies kept in the database (oldest evicted; each process also keeps up to 256 MB in memory).
    frontier_cache_rows: int = Field(default=64, ge=1)
    # Expensive reads (frontier, solve) per client: a token bucket of ``rate_burst`` refilled at ``rate_per_s``
    # per second, per process (0: no limit).
    rate_per_s: float = Field(default=2.0, ge=0, allow_inf_nan=False)
    rate_burst: int = Field(default=20, ge=1)
    # Scratch entries (uploads being parsed) older than this are swept at start and before each upload.
    scratch_max_age_s: float = Field(default=600.0, gt=0, allow_inf_nan=False)
    # A failed pipeline job's work folder is kept this many days (for a look, or a re-run), then swept;
    # a cancelled job's is deleted when the cancel is recorded.
    failed_work_retention_days: float = Field(default=7.0, ge=0, allow_inf_nan=False)


@lru_cache
def get_settings() -> Settings:
    return Settings()
