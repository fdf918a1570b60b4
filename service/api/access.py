"""The access policy (docs/access.md), enforced in this one dependency on the whole ``/api/v1`` router.

Every request is classified by its route, never by the route's own code:

    read       GET of stored state (jobs, events, libraries, results): open to anyone
    write      any other method (POST): needs the token when ``PUZZLE_API_TOKEN`` is set
    expensive  a read whose cost grows with its input (``EXPENSIVE``: frontier, solve): needs the token as a
               write does, and is rate-limited per client (``RateLimiter``); its size, run time and answer
               are bounded where it runs (``service.search``)

The rate limit is a small in-process token bucket per client address (behind a proxy: the proxy's, unless
uvicorn is told to trust ``X-Forwarded-For``): each API process counts on its own, so N uvicorn workers allow N times the rate.
"""

from __future__ import annotations

import hmac
import math
import threading
import time
from typing import Annotated

from cachetools import LRUCache
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.errors import RateLimitedError, UnauthorizedError
from service.settings import Settings

EXPENSIVE = frozenset({"get_frontier", "solve_library"})  # operation ids (route names)
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

_bearer = HTTPBearer(
    auto_error=False, description="PUZZLE_API_TOKEN: needed for writes and expensive reads when configured"
)


def classify(request: Request) -> str:
    """'read', 'write' or 'expensive' for the route ``request`` matched."""
    route = request.scope.get("route")
    if getattr(route, "name", None) in EXPENSIVE:
        return "expensive"
    return "read" if request.method in READ_METHODS else "write"


class RateLimiter:
    """Token buckets per client key: ``burst`` requests at once, refilled at ``rate`` per second."""

    def __init__(self, rate: float, burst: int, *, clients: int = 10_000):
        self.rate, self.burst = rate, burst
        self._buckets: LRUCache[str, tuple[float, float]] = LRUCache(clients)  # key -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, key: str, now: float | None = None) -> float:
        """0 when the request may go ahead, else the seconds until the client's next token."""
        if self.rate <= 0:
            return 0.0
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.get(key, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                return (1.0 - tokens) / self.rate
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0


def _limiter(request: Request, settings: Settings) -> RateLimiter:
    limiter = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:
        limiter = request.app.state.rate_limiter = RateLimiter(settings.rate_per_s, settings.rate_burst)
    return limiter


def enforce(request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """The policy of the module docstring: 401 without the token where one is needed, 429 over the rate."""
    settings: Settings = request.app.state.settings
    level = classify(request)
    if level == "read":
        return
    if settings.api_token is not None:
        expected = settings.api_token.get_secret_value().encode()
        what = "writes and expensive reads (frontier, solve)"
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise UnauthorizedError(f"this server needs 'Authorization: Bearer <token>' for {what} (PUZZLE_API_TOKEN)")
        if not hmac.compare_digest(credentials.credentials.encode(), expected):
            raise UnauthorizedError("the bearer token is not valid for this server")
    if level == "expensive":
        # per client address (a made-up bearer value must not buy a fresh bucket)
        wait = _limiter(request, settings).take(request.client.host if request.client else "unknown")
        if wait > 0:
            raise RateLimitedError(
                f"too many frontier / solve requests from this client: at most {settings.rate_burst} at once and "
                f"{settings.rate_per_s:g} per second after that; retry in {math.ceil(wait)} s",
                retry_after=math.ceil(wait),
            )


Access = Depends(enforce)
