"""Idempotent result storage: every stage output is keyed by what produced it.

``ResultStore`` maps string keys to JSON records on disk, each written atomically (``puzzle.files``); writing a key twice (a retried task) simply replaces the record
with an equal one, so at-least-once execution is safe.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from puzzle.files import key_digest, write_json


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
        write_json(self.path(key), {"key": key, "value": value})

    def keys(self) -> Iterator[str]:
        for path in sorted(self.root.glob("*.json")):
            yield json.loads(path.read_text())["key"]
