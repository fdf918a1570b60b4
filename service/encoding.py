"""What the API encodes: opaque page cursors (the last id of a page, which the next page starts below) and the
hash of a request body (an Idempotency-Key's replay must bring the same body)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

from service.errors import InvalidInputError


def encode_cursor(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"id:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        prefix, _, value = raw.partition(":")
        number = int(value)
        if prefix != "id" or not 0 < number < 2**63:
            raise ValueError(raw)
        return number
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidInputError(
            [(["query", "cursor"], "cursor is not one this API returned; pass next_cursor unchanged")]
        ) from exc


def body_hash(body: Any) -> str:
    """SHA-256 of the canonical JSON of a request body."""
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
