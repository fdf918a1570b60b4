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
    # When set, every write (POST/DELETE) needs ``Authorization: Bearer <token>``.
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
    # Largest request body accepted for a library upload (bytes).
    max_upload_bytes: int = Field(default=64 * 1024 * 1024, gt=0)


@lru_cache
def get_settings() -> Settings:
    return Settings()
