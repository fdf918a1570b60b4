"""Request body limits enforced on the bytes actually read (an ASGI middleware), chunked or not.

A declared ``Content-Length`` over the limit is refused before anything is read. Otherwise the body's
chunks are counted as the app reads them: past the limit, reading stops (the app sees an error and no
more bytes) and the client gets 413, whatever the app would have answered. Uploads
(``POST /api/v1/libraries``) may be ``PUZZLE_MAX_UPLOAD_BYTES``; every other body ``PUZZLE_MAX_BODY_BYTES``.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UPLOAD_PATHS = frozenset({"/api/v1/libraries"})


class BodyTooLarge(HTTPException):
    """Raised into the app from ``receive`` once the body passes its limit (FastAPI re-raises HTTPExceptions)."""


def _limit_for(scope: Scope, settings: Any) -> tuple[int, str]:
    if scope["path"].rstrip("/") in UPLOAD_PATHS:
        return settings.max_upload_bytes, "PUZZLE_MAX_UPLOAD_BYTES"
    return settings.max_body_bytes, "PUZZLE_MAX_BODY_BYTES"


async def _refuse(send: Send, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 413, "headers": [*headers, (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """The middleware of the module docstring (``settings``: the app's ``Settings``)."""

    def __init__(self, app: ASGIApp, settings: Any):
        self.app, self.settings = app, settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit, name = _limit_for(scope, self.settings)
        declared = dict(scope.get("headers") or ()).get(b"content-length", b"").decode("latin-1")
        if declared.isdigit() and int(declared) > limit:
            await _refuse(send, f"request body of {declared} bytes exceeds {name}={limit}")
            return
        state = {"read": 0, "over": False, "started": False}
        message_text = f"request body exceeds {name}={limit} bytes (counted as read)"

        async def limited_receive() -> Message:
            if state["over"]:
                raise BodyTooLarge(413, message_text)
            message = await receive()
            if message["type"] == "http.request":
                state["read"] += len(message.get("body", b""))
                if state["read"] > limit:
                    state["over"] = True
                    raise BodyTooLarge(413, message_text)
            return message

        async def guarded_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                if state["over"]:
                    state["started"] = True
                    await _refuse(send, message_text)
                    return
                state["started"] = True
            elif state["over"]:
                return  # the app's own answer to a body it could not read is replaced by the 413
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except BodyTooLarge:
            if not state["started"]:
                await _refuse(send, message_text)
