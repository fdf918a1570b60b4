"""Storing uploaded block libraries under the artifact root and loading them back (cached per digest).

No leftovers: an upload is parsed in a private folder under ``tmp/`` (removed when done, whatever happens)
and stored by renaming a complete folder into ``libraries/<digest>`` (never half-written). Scratch entries
are named ``<kind>-<host>-<pid>-...``: when the API starts and before each upload, those of this host's
processes that are gone (killed mid-upload) are swept at once, any entry older than
``PUZZLE_SCRATCH_MAX_AGE_S`` too. A stored folder no row refers to (the loser of a name race) is removed
under the digest's lock, and swept at start once older than the same age.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from puzzle.errors import LibraryError
from puzzle.files import write_text
from puzzle.library import BlockLibrary, import_nvlabs
from service.artifacts import inside
from service.models import Library
from service.settings import Settings


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
    folder = Path(tempfile.mkdtemp(prefix=scratch_prefix("nvlabs"), dir=scratch))
    try:
        for key in ("block_library", "measurement_info", "parent_block_stats"):
            (folder / f"{key}.json").write_text(json.dumps(data[key]), encoding="utf-8")
        return import_nvlabs(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def scratch_dir(settings: Settings) -> Path:
    return inside(settings.artifacts, "tmp")


def scratch_prefix(kind: str) -> str:
    """``<kind>-<host>-<pid>-``: whose scratch entry it is, so a restarted API can sweep a killed one's at once."""
    return f"{kind}-{_HOST}-{os.getpid()}-"


_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname())[:60] or "host"
_OWNED = re.compile(r"^[a-z]+-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-[a-z0-9_]+$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_scratch(settings: Settings, *, starting: bool = False, now: float | None = None) -> list[str]:
    """Remove ``tmp/`` entries a dead process left: this host's whose process is gone (``starting``: also
    this process's own pid, reused after a restart in a container), and any entry older than
    ``PUZZLE_SCRATCH_MAX_AGE_S``. Returns their names."""
    folder = scratch_dir(settings)
    now = time.time() if now is None else now
    swept = []
    for entry in folder.iterdir() if folder.is_dir() else ():
        owner = _OWNED.match(entry.name)
        pid = int(owner["pid"]) if owner is not None and owner["host"] == _HOST else None
        dead = pid is not None and (not _alive(pid) or (starting and pid == os.getpid()))
        try:
            old = now - entry.lstat().st_mtime > settings.scratch_max_age_s
        except FileNotFoundError:
            continue
        if dead or old:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            swept.append(entry.name)
    return swept


def store(settings: Settings, library: BlockLibrary) -> str:
    """Save ``library`` content-addressed under the artifact root (a complete folder renamed into place);
    returns its path relative to the root."""
    digest = library.digest()
    folder = inside(settings.artifacts, "libraries", digest)
    if not (folder / "library.json").is_file():
        scratch = scratch_dir(settings)
        scratch.mkdir(parents=True, exist_ok=True)
        staged = Path(tempfile.mkdtemp(prefix=scratch_prefix("store"), dir=scratch))
        try:
            write_text(staged / "library.json", library.to_json())
            folder.parent.mkdir(parents=True, exist_ok=True)
            try:
                staged.rename(folder)
            except OSError:  # the same content arrived meanwhile (or an empty leftover sits there)
                if not (folder / "library.json").is_file():
                    shutil.rmtree(folder, ignore_errors=True)
                    staged.rename(folder)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
    return f"libraries/{digest}"


def lock_digest(session: Session, digest: str) -> None:
    """Serialise store / drop of one digest until the session's transaction ends (PostgreSQL advisory lock;
    SQLite has one writer at a time anyway)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": int(digest[:15], 16)})


def drop_if_unused(settings: Settings, session: Session, digest: str) -> bool:
    """Remove ``libraries/<digest>`` when no stored library refers to it; True when removed."""
    try:
        lock_digest(session, digest)
        used = session.scalar(select(Library.id).where(Library.digest == digest).limit(1)) is not None
        if not used:
            shutil.rmtree(inside(settings.artifacts, "libraries", digest), ignore_errors=True)
        session.commit()
    except Exception:
        session.rollback()
        raise
    return not used


def sweep_orphans(settings: Settings, sessions: sessionmaker[Session], *, now: float | None = None) -> list[str]:
    """Remove stored library folders no row refers to, once older than ``PUZZLE_SCRATCH_MAX_AGE_S``."""
    root = inside(settings.artifacts, "libraries")
    now = time.time() if now is None else now
    removed = []
    for folder in root.iterdir() if root.is_dir() else ():
        if not re.fullmatch(r"[0-9a-f]{64}", folder.name) or not folder.is_dir():
            continue
        if now - folder.stat().st_mtime > settings.scratch_max_age_s:
            with sessions() as session:
                if drop_if_unused(settings, session, folder.name):
                    removed.append(folder.name)
    return removed


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
