"""The ``/api/v1`` router."""

from __future__ import annotations

from fastapi import APIRouter

from service.api.routes import health, jobs, libraries

api_router = APIRouter()
api_router.include_router(health.router)
api_router.include_router(libraries.router)
api_router.include_router(jobs.router)
