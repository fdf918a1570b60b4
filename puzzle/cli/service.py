"""``puzzle db upgrade``, ``puzzle serve``, ``puzzle worker``: run the job service.

These handlers import ``service`` / ``workers`` lazily (inside the handler): the ``puzzle`` library itself
never depends on the service, only its command line offers to start it. The service's dependencies are the
``service`` extra; without them each command exits 2 with one line saying what to install.
"""

from __future__ import annotations

import argparse
import importlib

from puzzle.errors import ConfigError

# The import names of the ``service`` extra (pyproject.toml), checked before any service command runs.
SERVICE_MODULES = (
    "fastapi",
    "uvicorn",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "pydantic",
    "pydantic_settings",
    "cachetools",
)
INSTALL_HINT = "pip install -e '.[service]'"


def require_service() -> None:
    """ConfigError (exit 2, one line) naming the install command when a dependency of the service is missing."""
    missing = []
    for name in SERVICE_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ConfigError(
            f"the service needs its extra dependencies (missing: {', '.join(missing)}); run: {INSTALL_HINT}"
        )


def register(subparsers: argparse._SubParsersAction) -> None:
    dbp = subparsers.add_parser("db", help="manage the job-store database (PUZZLE_DATABASE_URL)")
    dsub = dbp.add_subparsers(dest="db_command", metavar="SUBCOMMAND", required=True)
    up = dsub.add_parser("upgrade", help="apply the schema migrations (works on an empty database)")
    up.add_argument("--url", help="database URL (default: PUZZLE_DATABASE_URL, else a local SQLite file)")
    up.add_argument("--revision", default="head", help="target revision (default: head)")
    up.set_defaults(func=_db_upgrade)
    cur = dsub.add_parser("current", help="print the database's schema revision and the one this code needs")
    cur.add_argument("--url", help="database URL (default: PUZZLE_DATABASE_URL)")
    cur.set_defaults(func=_db_current)

    serve = subparsers.add_parser("serve", help="run the REST API and dashboard (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")
    serve.add_argument(
        "--keep-alive", type=float, default=30.0, help="seconds an idle keep-alive connection stays open"
    )
    serve.set_defaults(func=_serve)

    worker = subparsers.add_parser("worker", help="claim and run queued jobs")
    worker.add_argument("--id", help="worker id shown on the jobs it runs (default: host:pid:random)")
    worker.add_argument("--once", action="store_true", help="run at most one job, then exit")
    worker.add_argument("--max-jobs", type=int, help="exit after this many jobs")
    worker.add_argument("--exit-when-idle", action="store_true", help="exit when no job is queued")
    worker.set_defaults(func=_worker)


def _settings(url: str | None = None):  # type: ignore[no-untyped-def]
    from service.settings import Settings

    return Settings(database_url=url) if url else Settings()


def _db_upgrade(args: argparse.Namespace) -> int:
    require_service()
    from service import db

    settings = _settings(args.url)
    before, after = db.upgrade(settings.database_url, args.revision)
    print(f"database schema: {before or 'empty'} -> {after}")
    return 0


def _db_current(args: argparse.Namespace) -> int:
    require_service()
    from service import db

    settings = _settings(args.url)
    engine = db.make_engine(settings.database_url)
    try:
        current = db.current_revision(engine)
    finally:
        engine.dispose()
    head = db.head_revision()
    print(
        f"database schema: {current or 'empty'}; this Puzzle needs {head}"
        + ("" if current == head else " (run `puzzle db upgrade`)")
    )
    return 0


def _serve(args: argparse.Namespace) -> int:
    require_service()
    import uvicorn

    from service import db

    settings = _settings()
    engine = db.make_engine(settings.database_url)
    try:
        db.check_schema(engine)  # fail here with one line, not inside uvicorn
    finally:
        engine.dispose()
    uvicorn.run(
        "service.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        timeout_keep_alive=args.keep_alive,
    )
    return 0


def _worker(args: argparse.Namespace) -> int:
    require_service()
    import logging
    import signal
    import threading

    from service import db
    from workers.runner import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = _settings()
    engine = db.make_engine(settings.database_url)
    try:
        db.check_schema(engine)
    finally:
        engine.dispose()
    worker = Worker(settings, worker_id=args.id)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    max_jobs = 1 if args.once else args.max_jobs
    ran = worker.run(stop, max_jobs=max_jobs, exit_when_idle=args.exit_when_idle or args.once)
    print(f"worker {worker.worker_id}: ran {ran} job(s)")
    return 0
