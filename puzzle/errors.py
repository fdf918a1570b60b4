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
