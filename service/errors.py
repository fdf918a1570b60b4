"""Errors the service raises on purpose (all ``PuzzleError``s); ``service.api.errors`` maps them to HTTP."""

from __future__ import annotations

from puzzle.errors import ConfigError, PuzzleError


class NotFoundError(PuzzleError):
    """An id in the request names nothing (HTTP 404)."""


class ConflictError(PuzzleError):
    """The request contradicts the current state (HTTP 409): e.g. a reused Idempotency-Key with another body."""


class UnauthorizedError(PuzzleError):
    """A write without the configured bearer token (HTTP 401)."""


class RateLimitedError(PuzzleError):
    """Too many expensive requests from one client (HTTP 429 with Retry-After)."""

    def __init__(self, message: str, *, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


class DatabaseUnreachableError(ConfigError):
    """PUZZLE_DATABASE_URL names a database that does not answer (one line for the operator, no traceback)."""


class SchemaOutdatedError(ConfigError):
    """The database schema is older (or newer) than this code; ``puzzle db upgrade`` fixes it."""


class InvalidInputError(ConfigError):
    """One or more problems with a request's content found after parsing (HTTP 422 listing each)."""

    def __init__(self, problems: list[tuple[list[str | int], str]]):
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems))
        self.problems = problems


class InfeasibleInputError(InvalidInputError):
    """Constraints no architecture meets (HTTP 422 with the binding ``constraint`` and its ``minimum``)."""

    def __init__(self, loc: list[str | int], message: str, *, constraint: str | None, minimum: float | None):
        super().__init__([(loc, message)])
        self.constraint, self.minimum = constraint, minimum


def invalid(loc: list[str | int], msg: str) -> InvalidInputError:
    """One problem at ``loc`` (e.g. ``["body", "library_id"]``)."""
    return InvalidInputError([(loc, msg)])
