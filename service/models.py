"""The job store's tables (SQLAlchemy 2). Changing them needs an Alembic revision in ``migrations/versions``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
TERMINAL_STATES = ("succeeded", "failed", "cancelled")
JOB_KINDS = ("search", "pipeline", "elastic")

# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets BIGINT identities.
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stored as naive UTC on every backend, read back as timezone-aware UTC."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None else None


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, datetime: UTCDateTime}


class Library(Base):
    """A stored block library: metadata here, the library itself at ``ARTIFACTS/<path>/library.json``."""

    __tablename__ = "libraries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    digest: Mapped[str] = mapped_column(String(64), index=True)
    format: Mapped[str] = mapped_column(String(16))
    path: Mapped[str] = mapped_column(String(200))
    n_layers: Mapped[int] = mapped_column(Integer)
    n_variants: Mapped[int] = mapped_column(Integer)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)

    # what ``LibraryPublic`` reads from the stored summary (``service.libraries.summary``)
    family = property(lambda self: self.summary.get("family"))
    hidden_size = property(lambda self: self.summary.get("hidden_size"))
    metric_keys = property(lambda self: self.summary.get("metric_keys", []))
    cost_keys = property(lambda self: self.summary.get("cost_keys", []))
    scenarios = property(lambda self: self.summary.get("scenarios", []))
    default_scenario = property(lambda self: self.summary.get("default_scenario"))


class Job(Base):
    """One unit of work with its state machine, progress, heartbeat and result."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state_id", "state", "id"),
        Index("ix_jobs_kind_id", "kind", "id"),
        CheckConstraint(f"state IN ({', '.join(repr(s) for s in JOB_STATES)})", name="ck_jobs_state"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), default="queued")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    library_id: Mapped[int | None] = mapped_column(ForeignKey("libraries.id"), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(nullable=True)
    stage: Mapped[str | None] = mapped_column(String(64), nullable=True)
    stage_started_at: Mapped[datetime | None] = mapped_column(nullable=True)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    eta_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)

    @property
    def progress(self) -> dict[str, Any]:
        """What ``JobPublic.progress`` shows."""
        return {"stage": self.stage, "done": self.progress_done, "total": self.progress_total, "eta_s": self.eta_s}

    @property
    def has_result(self) -> bool:
        return self.result is not None


class JobEvent(Base):
    """Append-only log of what happened to a job; ``id`` is the SSE event id (resumable with Last-Event-ID)."""

    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    at: Mapped[datetime] = mapped_column(default=utcnow)
    type: Mapped[str] = mapped_column(String(32))
    data: Mapped[dict[str, Any]] = mapped_column(JSON)


class IdempotencyKey(Base):
    """A submit's ``Idempotency-Key``: the hash of the body it came with and the job it created."""

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class FrontierCache(Base):
    """A computed frontier per (library, query), shared by every API process."""

    __tablename__ = "frontier_cache"

    library_id: Mapped[int] = mapped_column(ForeignKey("libraries.id"), primary_key=True)
    query_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    result: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
