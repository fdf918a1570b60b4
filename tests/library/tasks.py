"""Module-level task functions for the executor tests (Ray workers import them by name)."""

from __future__ import annotations

import os
from pathlib import Path


def square(x: int, log_dir: str) -> dict:
    with open(Path(log_dir) / f"calls-{x}", "a") as fh:
        fh.write(".")
    return {"x": x, "square": x * x}


def fail_once(marker: str, value: int) -> dict:
    """Raises on its first attempt (leaves a marker), succeeds on the retry."""
    path = Path(marker)
    if not path.exists():
        path.write_text("failed once")
        raise RuntimeError("transient failure")
    return {"value": value}


def die_once(marker: str, value: int) -> dict:
    """Kills its worker process on the first attempt (a real crash), succeeds on the retry."""
    path = Path(marker)
    if not path.exists():
        path.write_text("died once")
        os._exit(1)
    return {"value": value, "pid": os.getpid()}


def always_fail() -> dict:
    raise ValueError("broken task")
