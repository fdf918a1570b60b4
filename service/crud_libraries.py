"""Reads and writes of stored libraries (re-exported by ``service.crud``, the job store's one face)."""

from __future__ import annotations

from cachetools import LRUCache
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service.encoding import decode_cursor, encode_cursor
from service.errors import ConflictError, NotFoundError
from service.models import Library


def get_library(session: Session, *, library_id: int) -> Library:
    library = session.get(Library, library_id)
    if library is None:
        raise NotFoundError(f"no library with id {library_id}")
    return library


def get_library_by_name(session: Session, *, name: str) -> Library | None:
    return session.scalars(select(Library).where(Library.name == name)).first()


def create_library(
    session: Session, *, name: str, fmt: str, digest: str, path: str, n_layers: int, n_variants: int, summary: dict
) -> Library:
    library = Library(
        name=name, format=fmt, digest=digest, path=path, n_layers=n_layers, n_variants=n_variants, summary=summary
    )
    session.add(library)
    try:
        session.flush()
    except IntegrityError as exc:
        session.rollback()
        raise ConflictError(f"a library named {name!r} already exists with other content; choose another name") from exc
    return library


def list_libraries(session: Session, *, limit: int, cursor: str | None = None) -> tuple[list[Library], str | None]:
    query = select(Library).order_by(Library.id.desc()).limit(limit + 1)
    if cursor:
        query = query.where(Library.id < decode_cursor(cursor))
    rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, encode_cursor(rows[-1].id) if more else None


# Stored libraries never change and are never deleted: where one lives is remembered per process and database,
# which saves every job submission a round trip.
_LIBRARY_REFS: LRUCache[tuple[str, int], tuple[str, str]] = LRUCache(4096)


def library_ref(session: Session, *, library_id: int) -> tuple[str, str] | None:
    """(path, digest) of a stored library, or None when no library has this id."""
    key = (str(session.get_bind().engine.url), library_id)
    ref = _LIBRARY_REFS.get(key)
    if ref is None:
        row = session.get(Library, library_id)
        if row is None:
            return None
        ref = _LIBRARY_REFS[key] = (row.path, row.digest)
    return ref
