"""The ``/api/v1`` router: every route behind the one access policy (``service.api.access``)."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.access import Access
from service.api.routes import health, jobs, libraries

api_router = APIRouter(dependencies=[Access])
api_router.include_router(health.router)
api_router.include_router(libraries.router)
api_router.include_router(jobs.router)
