"""The one place errors become HTTP responses.

422  invalid input: ``{"detail": [{"loc": [...], "msg": ..., "type": ...}, ...]}`` listing every problem
     (request validation, and any ConfigError / LibraryError / DataError / InfeasibleError raised while
     serving the request; InfeasibleError adds the binding ``constraint`` and its ``minimum``)
404  NotFoundError          409  ConflictError          401  UnauthorizedError (with WWW-Authenticate)
504  SolveTimeout: the solver hit its time limit (``bound``: the best bound on the objective it knew)
500  VerificationError / SolverError: an internal fault of the search (never an answer that breaks a bound)
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from puzzle.errors import InfeasibleError, PuzzleError, SolverError, SolveTimeout, VerificationError
from service.errors import ConflictError, InvalidInputError, NotFoundError, UnauthorizedError


def _problems(exc: RequestValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors():
        item = {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        out.append(item)
    return out


def puzzle_error_response(exc: PuzzleError) -> JSONResponse:
    if isinstance(exc, NotFoundError):
        return JSONResponse({"detail": str(exc)}, status_code=404)
    if isinstance(exc, ConflictError):
        return JSONResponse({"detail": str(exc)}, status_code=409)
    if isinstance(exc, UnauthorizedError):
        return JSONResponse({"detail": str(exc)}, status_code=401, headers={"WWW-Authenticate": "Bearer"})
    if isinstance(exc, InvalidInputError):
        items = [{"loc": loc, "msg": msg, "type": "invalid"} for loc, msg in exc.problems]
        return JSONResponse({"detail": items}, status_code=422)
    if isinstance(exc, SolveTimeout):
        return JSONResponse({"detail": str(exc), "bound": exc.bound, "time_limit": exc.time_limit}, status_code=504)
    if isinstance(exc, VerificationError | SolverError):
        return JSONResponse({"detail": f"internal search error: {exc}"}, status_code=500)
    problem: dict[str, Any] = {"loc": ["body"], "msg": str(exc), "type": type(exc).__name__}
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
