"""The one place errors become HTTP responses.

422  invalid input: ``{"detail": [{"loc": [...], "msg": ..., "type": ...}, ...]}`` listing every problem
     (request validation, and any ConfigError / LibraryError / DataError / InfeasibleError raised while
     serving the request; InfeasibleError adds the binding ``constraint`` and its ``minimum``)
404  NotFoundError          409  ConflictError          401  UnauthorizedError (with WWW-Authenticate)
429  RateLimitedError (with Retry-After)
504  SolveTimeout: the solver hit its time limit (``bound``: the best bound on the objective it knew)
500  VerificationError / SolverError: an internal fault of the search (never an answer that breaks a bound)
500  anything else: ``{"detail": "internal error ..."}`` naming only the error's class and an id to find
     its traceback in the server log (never the traceback, a message or a path)

No message shows a server path: absolute paths are replaced by ``<server path>`` (``scrub``).
"""

from __future__ import annotations

import logging
import re
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from puzzle.errors import InfeasibleError, PuzzleError, SolverError, SolveTimeout, VerificationError
from service.errors import (
    ConflictError,
    InfeasibleInputError,
    InvalidInputError,
    NotFoundError,
    RateLimitedError,
    UnauthorizedError,
)

log = logging.getLogger("puzzle.api")
# an absolute path of two or more parts (not an API path /api/..., nor a URL path after a host)
_PATH = re.compile(r"(?<![\w.:/])/(?!api/)(?:[\w.\-]+/)+[\w.\-]*")


def scrub(message: str) -> str:
    """``message`` with every absolute server path replaced by ``<server path>``."""
    return _PATH.sub("<server path>", message)


def _problems(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        item = {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        out.append(item)
    return out


def puzzle_error_response(exc: PuzzleError) -> JSONResponse:
    text = scrub(str(exc))
    if isinstance(exc, NotFoundError):
        return JSONResponse({"detail": text}, status_code=404)
    if isinstance(exc, ConflictError):
        return JSONResponse({"detail": text}, status_code=409)
    if isinstance(exc, UnauthorizedError):
        return JSONResponse({"detail": text}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, RateLimitedError):
        return JSONResponse({"detail": text}, status_code=429, headers={"Retry-After": str(exc.retry_after)})
    if isinstance(exc, InvalidInputError):
        items: list[dict[str, Any]] = [{"loc": loc, "msg": scrub(msg), "type": "invalid"} for loc, msg in exc.problems]
        if isinstance(exc, InfeasibleInputError):
            items[0].update(type="InfeasibleError", constraint=exc.constraint, minimum=exc.minimum)
        return JSONResponse({"detail": items}, status_code=422)
    if isinstance(exc, SolveTimeout):
        return JSONResponse({"detail": text, "bound": exc.bound, "time_limit": exc.time_limit}, status_code=504)
    if isinstance(exc, VerificationError | SolverError):
        return JSONResponse({"detail": f"internal search error: {text}"}, status_code=500)
    problem: dict[str, Any] = {"loc": ["body"], "msg": text, "type": type(exc).__name__}
    if isinstance(exc, InfeasibleError):
        problem.update(constraint=exc.constraint, minimum=exc.minimum)
    return JSONResponse({"detail": [problem]}, status_code=422)


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": jsonable_encoder(_problems(exc))}, status_code=422)

    @app.exception_handler(PuzzleError)
    async def _puzzle(_request: Request, exc: PuzzleError) -> JSONResponse:
        return puzzle_error_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        log.error("internal error %s on %s %s", incident, request.method, request.url.path, exc_info=exc)
        detail = f"internal error ({type(exc).__name__}); the server log has its details under id {incident}"
        return JSONResponse({"detail": detail}, status_code=500)
