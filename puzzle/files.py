"""Files that appear whole or not at all, and stable digests.

Every write of a stage output goes through here: a temporary name in the target's folder, then ``os.replace``,
so a reader, or a re-run after kill -9, sees the whole file or none. Folders are built under a staging name and
swapped into place the same way (``replace_dir``).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """``with atomic_path(file) as tmp: write tmp`` — ``file`` appears whole (renamed on success) or not at all."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the final file the usual permissions
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(target: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_text(target: str | os.PathLike[str], text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | os.PathLike[str], value: Any, *, indent: int | None = 1) -> None:
    """``value`` as JSON (sorted keys, trailing newline), atomically."""
    write_text(target, json.dumps(value, indent=indent, sort_keys=True, allow_nan=True) + "\n")


def save_tensors(target: str | os.PathLike[str], tensors: dict[str, Any]) -> None:
    """A safetensors file of contiguous CPU copies of ``tensors``, atomically."""
    from safetensors.torch import save_file

    with atomic_path(target) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def staging_dir(target: Path) -> Path:
    """A fresh hidden folder beside ``target`` to build it in before ``replace_dir``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))


def replace_dir(staging: Path, target: Path) -> None:
    """Rename the finished ``staging`` onto ``target``; an existing ``target`` is moved aside, then deleted."""
    if not target.exists():
        os.replace(staging, target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    try:
        os.replace(staging, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def key_digest(*parts: Any) -> str:
    """A short stable hex digest of JSON-serialisable ``parts`` (for cache and result keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
