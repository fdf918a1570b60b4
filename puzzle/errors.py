"""The one error hierarchy of Puzzle.

Every error a user can cause derives from ``PuzzleError``; the CLI prints its message on one line and
exits with code 2, the service maps each class to an HTTP status in one place.
"""

from __future__ import annotations


class PuzzleError(Exception):
    """Base of every error Puzzle raises on purpose."""


class ConfigError(PuzzleError):
    """A specification, option or constraint is invalid (says what and how to fix it)."""


class CheckpointError(PuzzleError):
    """A checkpoint on disk is missing files, has unknown types or tensors of the wrong shape."""


class DataError(PuzzleError):
    """A corpus or tokenizer cannot be read or is too small for what was asked."""


class LibraryError(PuzzleError):
    """A block library is malformed, of an unknown schema or format."""


class InfeasibleError(PuzzleError):
    """No architecture satisfies the constraints.

    ``constraint`` names the binding constraint and ``minimum`` the smallest achievable value of it.
    """

    def __init__(self, message: str, *, constraint: str | None = None, minimum: float | None = None):
        super().__init__(message)
        self.constraint = constraint
        self.minimum = minimum


class SolveTimeout(PuzzleError):
    """A solver backend hit its time limit before it found (or proved) an answer; never an ``InfeasibleError``.

    ``solver`` names the backend, ``time_limit`` the limit in seconds and ``bound`` the best bound on the
    objective it knew when it stopped (None when the backend gives none).
    """

    def __init__(self, solver: str, time_limit: float | None, bound: float | None = None, *, detail: str = ""):
        limit = f"{time_limit:g} s" if time_limit is not None else "its"
        known = f"; best bound on the objective so far: {bound:.6g}" if bound is not None else "; no bound known yet"
        more = f" ({detail})" if detail else ""
        super().__init__(
            f"time-out: solver {solver} reached {limit} time limit before finding an architecture{known}{more}; "
            "raise the time limit or loosen the constraints"
        )
        self.solver = solver
        self.time_limit = time_limit
        self.bound = bound


class SolverError(PuzzleError):
    """A solver backend failed on a problem it should take (a numerical or backend error, not a user mistake)."""


class VerificationError(PuzzleError):
    """A solver returned an assignment whose re-summed totals break a bound: an internal error, never returned."""
