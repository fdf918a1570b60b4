"""Locate the read-only shared data folder (real data for tests and benchmarks); tests skip when it is absent."""

from __future__ import annotations

import os
from pathlib import Path


def shared_data_dir(repo_root: str | os.PathLike[str] | None = None) -> Path | None:
    """The shared data folder: ``PUZZLE_SHARED_DATA``, else ``<repo>/../shared/data``; ``None`` when absent."""
    env = os.environ.get("PUZZLE_SHARED_DATA")
    if env:
        return Path(env) if Path(env).is_dir() else None
    root = Path(repo_root) if repo_root else Path(__file__).resolve().parent.parent
    candidate = root.parent / "shared" / "data"
    return candidate if candidate.is_dir() else None
