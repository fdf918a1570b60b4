"""The ``puzzle`` command line.

Each command group lives in its own module of this package and exposes ``register(subparsers)``;
``main`` wires them together. User mistakes (``PuzzleError`` or bad arguments) print one line on
stderr and exit with code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import NoReturn

from puzzle.errors import PuzzleError, SolveTimeout

# Modules of puzzle.cli that register commands, in the order they appear in --help.
COMMAND_MODULES: tuple[str, ...] = (
    "demo",
    "parent",
    "evaluate",
    "library",
    "search",
    "export",
    "fuse",
    "elastic",
    "service",
)

USAGE_ERROR = 2
TIMEOUT = 3  # a solver hit --time-limit before it found an answer (the message gives its best bound)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error on one line (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="puzzle", description="Find, build and ship cheaper heterogeneous variants of a trained LLM.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(f"puzzle.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from puzzle import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return USAGE_ERROR
    try:
        return int(args.func(args) or 0)
    except SolveTimeout as exc:  # not the user's mistake, nor an answer: say so with its own code
        print(f"puzzle: {exc}", file=sys.stderr)
        return TIMEOUT
    except PuzzleError as exc:
        print(f"puzzle: error: {exc}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("puzzle: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
