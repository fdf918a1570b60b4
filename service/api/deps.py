"""Request dependencies (``Annotated`` aliases used by every route)."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.errors import UnauthorizedError
from service.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="PUZZLE_API_TOKEN; needed for writes when configured")


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


def require_token(
    settings: SettingsDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Writes need ``Authorization: Bearer <PUZZLE_API_TOKEN>`` when a token is configured."""
    if settings.api_token is None:
        return
    expected = settings.api_token.get_secret_value().encode()
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise UnauthorizedError("this server needs 'Authorization: Bearer <token>' for writes (PUZZLE_API_TOKEN)")
    if not hmac.compare_digest(credentials.credentials.encode(), expected):
        raise UnauthorizedError("the bearer token is not valid for this server")


WriteAccess = Depends(require_token)


# Ids are 64-bit database keys: anything larger can name nothing (and must not reach the database).
MAX_ID = 2**63 - 1
JobIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="job id")]
LibraryIdPath = Annotated[int, Path(ge=1, le=MAX_ID, description="library id")]
