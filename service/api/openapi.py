"""Every status an operation can answer, documented in the OpenAPI from the same facts that produce it.

401 / 429 follow the access policy (``service.api.access``: method and operation id), 400 / 413 a request
body (FastAPI's unreadable body, ``service.api.body_limit``), 404 an id in the path, 422 any input
(parameters, body, or a problem found while serving it). 409 is per route (``responses=`` on the route).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from service.api.access import EXPENSIVE, READ_METHODS


class Message(BaseModel):
    """An error with one message."""

    detail: str


class Problem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class Problems(BaseModel):
    """Invalid input: every problem with its location."""

    detail: list[Problem]


def _doc(description: str, model: str = "Message") -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{model}"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _statuses(method: str, operation: dict[str, Any]) -> dict[int, dict[str, Any]]:
    expensive = operation.get("operationId") in EXPENSIVE
    write = method.upper() not in READ_METHODS
    params = operation.get("parameters") or []
    body = "requestBody" in operation
    out: dict[int, dict[str, Any]] = {}
    if body:
        out[400] = _doc("the body could not be read")
        out[413] = _doc("the body is over its limit (PUZZLE_MAX_UPLOAD_BYTES / PUZZLE_MAX_BODY_BYTES)")
    if write or expensive:
        out[401] = _doc("PUZZLE_API_TOKEN is set and the request lacks its bearer token")
    if any(p.get("in") == "path" and p.get("name") in ("job_id", "library_id") for p in params):
        out[404] = _doc("no such id")
    if params or body or expensive:
        out[422] = _doc("invalid input, each problem with its location", "Problems")
    if expensive:
        out[429] = _doc("over this client's rate for expensive reads (Retry-After says when to retry)")
    return out


def document_statuses(app: FastAPI) -> None:
    """Make ``app.openapi()`` add the statuses above to each operation (an operation's own entries win) and
    declare the bearer token only where the policy asks for it."""
    plain = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = plain()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in (Message, Problem, Problems):
            components.setdefault(model.__name__, model.model_json_schema(ref_template="#/components/schemas/{model}"))
        for operations in schema["paths"].values():
            for method, operation in operations.items():
                if method.upper() in READ_METHODS and operation.get("operationId") not in EXPENSIVE:
                    operation.pop("security", None)  # reads are open to anyone (docs/access.md)
                responses = operation.setdefault("responses", {})
                for status, doc in _statuses(method, operation).items():
                    responses.setdefault(str(status), doc)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
