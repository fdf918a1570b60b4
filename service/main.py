"""The FastAPI application: ``/api/v1`` (REST), ``/`` (dashboard), ``/static`` (its files and Plotly.js)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles

from service import db, libraries
from service.api import errors
from service.api.body_limit import BodyLimit
from service.api.main import api_router
from service.api.openapi import document_statuses
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
            libraries.sweep_orphans(settings, app.state.sessions)
        libraries.sweep_scratch(settings, starting=True)  # what a killed process left (docs/access.md)
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

    app.add_middleware(BodyLimit, settings=settings)
    app.include_router(api_router, prefix=API_PREFIX)
    document_statuses(app)

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
