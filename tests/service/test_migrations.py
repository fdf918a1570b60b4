"""Schema migrations: ``puzzle db upgrade`` on empty PostgreSQL and SQLite, models == migrations, and the app
refusing an outdated schema."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError

from service import db
from service.errors import SchemaOutdatedError
from service.main import create_app
from service.models import Base
from service.settings import Settings
from tests.service.fixtures import REPO


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "puzzle", *args],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_models_match_migrations_on_postgres(pg_url: str) -> None:
    engine = db.engine_for(db.normalise_url(pg_url))
    assert db.current_revision(engine) == db.head_revision()
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], f"models and migrations disagree: {diff}"


def test_job_events_are_append_only_on_postgres(pg_url: str) -> None:
    engine = db.engine_for(db.normalise_url(pg_url))
    with engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (kind, state, spec, attempts, max_attempts, cancel_requested, created_at, progress_done, progress_total) VALUES ('search', 'queued', '{}', 0, 1, false, now(), 0, 0)"
            )
        )
        conn.execute(text("INSERT INTO job_events (job_id, at, type, data) VALUES (1, now(), 'log', '{}')"))
    for statement in ("UPDATE job_events SET type = 'x'", "DELETE FROM job_events"):
        with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))


def test_cli_upgrade_on_empty_sqlite_then_current(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh' / 'puzzle.db'}"
    before = _cli("db", "current", env={"PUZZLE_DATABASE_URL": url})
    assert before.returncode == 0, before.stderr
    assert "empty" in before.stdout and "puzzle db upgrade" in before.stdout
    up = _cli("db", "upgrade", env={"PUZZLE_DATABASE_URL": url})
    assert up.returncode == 0, up.stderr
    assert f"empty -> {db.head_revision()}" in up.stdout
    engine = db.make_engine(url)
    assert db.current_revision(engine) == db.head_revision()
    with engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
    engine.dispose()
    again = _cli("db", "upgrade", env={"PUZZLE_DATABASE_URL": url})
    assert again.returncode == 0 and f"{db.head_revision()} -> {db.head_revision()}" in again.stdout


def test_app_refuses_to_start_on_an_empty_database(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'empty.db'}", artifacts=tmp_path / "art")
    with pytest.raises(SchemaOutdatedError, match="puzzle db upgrade"), TestClient(create_app(settings)):
        pass


def test_serve_and_worker_refuse_an_outdated_schema_in_one_line(tmp_path: Path) -> None:
    env = {"PUZZLE_DATABASE_URL": f"sqlite:///{tmp_path / 'old.db'}"}
    for command in (("serve", "--port", "1"), ("worker", "--once")):
        out = _cli(*command, env=env)
        assert out.returncode == 2
        assert "run `puzzle db upgrade`" in out.stderr and "Traceback" not in out.stderr


def test_readiness_reports_an_outdated_schema(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    app = create_app(Settings(database_url=url, artifacts=tmp_path / "art"), check_schema=False)
    with TestClient(app) as c:
        r = c.get("/api/v1/ready")
        assert r.status_code == 503
        assert r.json()["schema_revision"] is None and "puzzle db upgrade" in r.json()["detail"]
    db.upgrade(url)
    with TestClient(app) as c:
        assert c.get("/api/v1/ready").json()["status"] == "ready"
        assert c.get("/api/v1/health").json() == {"status": "ok"}
