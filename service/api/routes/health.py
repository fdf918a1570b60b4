"""Liveness and readiness."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from sqlalchemy import text

from service import db
from service.schemas import Health, Readiness

router = APIRouter(tags=["health"])
log = logging.getLogger("puzzle.api")


@router.get("/health", response_model=Health)
def health() -> Health:
    """The process is up."""
    return Health(status="ok")


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
def readiness(request: Request, response: Response) -> Readiness:
    """The database answers and its schema is the one this code needs (503 otherwise)."""
    engine = request.app.state.engine
    expected = db.head_revision()
    where = engine.url.get_backend_name()  # never host, user or database name: /ready is open to anyone
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        current = db.current_revision(engine)
    except Exception as exc:  # the point of the probe: any database failure means not ready
        log.warning("readiness: the database does not answer: %s", exc)
        response.status_code = 503
        return Readiness(
            status="not ready",
            database=where,
            schema_revision=None,
            expected_revision=expected,
            detail=f"the database does not answer ({type(exc).__name__}); the server log has the details",
        )
    if current != expected:
        response.status_code = 503
        return Readiness(
            status="not ready",
            database=where,
            schema_revision=current,
            expected_revision=expected,
            detail="schema outdated: run `puzzle db upgrade`",
        )
    return Readiness(status="ready", database=where, schema_revision=current, expected_revision=expected)
