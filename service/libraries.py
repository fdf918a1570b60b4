"""Storing uploaded block libraries under the artifact root and loading them back (cached per digest)."""

from __future__ import annotations

import json
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

from puzzle.errors import LibraryError
from puzzle.files import write_text
from puzzle.library import BlockLibrary, import_nvlabs
from service.artifacts import inside


def parse_upload(fmt: str, data: dict[str, Any], *, scratch: Path) -> BlockLibrary:
    """A ``BlockLibrary`` from an uploaded body (``puzzle``: library.json; ``nvlabs``: its three files)."""
    if fmt == "puzzle":
        return BlockLibrary.from_dict(data)
    missing = [k for k in ("block_library", "measurement_info", "parent_block_stats") if k not in data]
    unknown = sorted(set(data) - {"block_library", "measurement_info", "parent_block_stats"})
    if missing or unknown:
        raise LibraryError(
            "an nvlabs upload is {block_library, measurement_info, parent_block_stats}"
            + (f"; missing {', '.join(missing)}" if missing else "")
            + (f"; unknown {', '.join(unknown)}" if unknown else "")
        )
    # import_nvlabs reads the NVlabs folder layout: lay the three files out in a private scratch folder.
    scratch.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="nvlabs-", dir=scratch))
    try:
        for key in ("block_library", "measurement_info", "parent_block_stats"):
            (folder / f"{key}.json").write_text(json.dumps(data[key]), encoding="utf-8")
        return import_nvlabs(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def store(root: Path, library: BlockLibrary) -> str:
    """Save ``library`` content-addressed under ``root``; returns its path relative to ``root``."""
    digest = library.digest()
    relative = f"libraries/{digest}"
    folder = inside(root, "libraries", digest)
    if not (folder / "library.json").is_file():
        folder.mkdir(parents=True, exist_ok=True)
        write_text(folder / "library.json", library.to_json())
    return relative


def load(root: Path, relative: str, digest: str) -> BlockLibrary:
    """The stored library (kept in a small in-process cache keyed by digest)."""
    return _load(str(root), digest, relative)


@lru_cache(maxsize=8)
def _load(root: str, digest: str, relative: str) -> BlockLibrary:
    return BlockLibrary.load(inside(Path(root), *relative.split("/")))


def summary(library: BlockLibrary) -> dict[str, Any]:
    """What the API shows about a library without loading it."""
    return {
        "family": library.family,
        "hidden_size": library.hidden_size,
        "metric_keys": list(library.metric_keys),
        "cost_keys": list(library.all_cost_keys()),
        "scenarios": [
            {k: v for k, v in s.to_dict().items() if k in ("name", "kind", "batch_size", "seq_len", "device", "dtype")}
            for s in library.scenarios.values()
        ],
        "default_scenario": library.default_scenario,
    }
