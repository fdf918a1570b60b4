"""The FastAPI application: ``/api/v1`` (REST), ``/`` (dashboard), ``/static`` (its files and Plotly.js)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from service import db
from service.api import errors
from service.api.main import api_router
from service.settings import Settings, get_settings

API_PREFIX = "/api/v1"
STATIC_DIR = Path(__file__).resolve().parent / "static"


def plotly_js() -> Path:
    """``plotly.min.js`` bundled in the installed ``plotly`` Python package (served locally, no CDN)."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    assert path.is_file(), f"plotly.min.js missing from the plotly package at {path}"
    return path


def _operation_id(route: APIRoute) -> str:
    """Stable operation ids: the route function's name (submit_job, list_jobs, get_frontier, ...)."""
    return route.name


def create_app(settings: Settings | None = None, *, check_schema: bool = True) -> FastAPI:
    """The app for ``settings`` (default: from the environment). With ``check_schema`` it refuses to start
    on a database whose schema is not this code's (the error names ``puzzle db upgrade``)."""
    settings = settings or get_settings()
    engine = db.engine_for(db.normalise_url(settings.database_url))

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if check_schema:
            db.check_schema(engine)
        yield

    app = FastAPI(
        title="Puzzle",
        version="1",
        description="Submit and watch Puzzle jobs, store block libraries, explore Pareto frontiers.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        docs_url=f"{API_PREFIX}/docs",
        redoc_url=None,
        generate_unique_id_function=_operation_id,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = db.session_factory(engine)
    errors.install(app)

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        """Refuse bodies over PUZZLE_MAX_UPLOAD_BYTES before reading them (413)."""
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > settings.max_upload_bytes:
            return JSONResponse(
                {
                    "detail": f"request body of {length} bytes exceeds PUZZLE_MAX_UPLOAD_BYTES={settings.max_upload_bytes}"
                },
                status_code=413,
            )
        return await call_next(request)

    app.include_router(api_router, prefix=API_PREFIX)

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> Response:
        return Response(status_code=204)

    @app.get("/static/plotly.min.js", include_in_schema=False)
    def plotly_bundle() -> FileResponse:
        return FileResponse(plotly_js(), media_type="text/javascript")

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
