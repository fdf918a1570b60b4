"""The artifact root: the only folder the service writes to, and the only way paths under it are made.

Clients never name files: stored paths are built from server-computed digests and ids, and ``inside``
refuses anything that would resolve outside the root (``..``, absolute paths, symlinks pointing out).
"""

from __future__ import annotations

from pathlib import Path

from puzzle.errors import ConfigError


def inside(root: Path, *parts: str) -> Path:
    """``root/parts...`` resolved, or ConfigError when it would leave ``root``."""
    base = root.resolve()
    for part in parts:
        if not part or Path(part).is_absolute() or ".." in Path(part).parts or "\x00" in part:
            raise ConfigError(f"path component {part!r} is not allowed (no absolute paths, '..' or empty names)")
    target = base.joinpath(*parts).resolve()
    if target != base and not target.is_relative_to(base):
        raise ConfigError(f"path {'/'.join(parts)!r} leaves the artifact root")
    return target
