"""Atomic, idempotent result storage: every stage output is keyed by what produced it.

``atomic_write`` writes to a temporary name in the target directory and ``os.replace``s it into place, so a
reader (or a re-run after kill -9) sees either the whole file or none. ``ResultStore`` maps string keys to
JSON records on disk with that guarantee; writing a key twice (a retried task) simply replaces the record
with an equal one, so at-least-once execution is safe.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from puzzle.data import atomic_path


def atomic_write(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same directory, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def save_tensors(path: str | Path, tensors: dict[str, Any]) -> None:
    """Save a safetensors file atomically (contiguous CPU copies of ``tensors``)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp))


def atomic_write_json(path: str | Path, value: Any) -> None:
    atomic_write(path, (json.dumps(value, indent=1, sort_keys=True, allow_nan=True) + "\n").encode())


def key_digest(*parts: Any) -> str:
    """A short stable hex digest of JSON-serialisable ``parts`` (for cache keys)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class ResultStore:
    """JSON records keyed by strings under ``root`` (one file per key, written atomically)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", key)[:60]
        return self.root / f"{slug}-{key_digest(key)}.json"

    def __contains__(self, key: str) -> bool:
        return self.path(key).exists()

    def get(self, key: str) -> dict[str, Any]:
        record = json.loads(self.path(key).read_text())
        return record["value"]

    def put(self, key: str, value: dict[str, Any]) -> None:
        atomic_write_json(self.path(key), {"key": key, "value": value})

    def keys(self) -> Iterator[str]:
        for path in sorted(self.root.glob("*.json")):
            yield json.loads(path.read_text())["key"]
