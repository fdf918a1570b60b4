"""Request dependencies (``Annotated`` aliases used by every route; the access policy is ``service.api.access``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session

from service.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_session(request: Request) -> Iterator[Session]:
    session = request.app.state.sessions()
    try:
        yield session
    finally:
        session.close()


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]


# Ids are 64-bit database keys: anything larger can name nothing (and must not reach the database).
MAX_ID = 2**63 - 1
JobIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="job id")]
LibraryIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="library id")]
