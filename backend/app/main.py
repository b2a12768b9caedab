"""BlockLab's web app: the API routers, the static frontend, and the worker-event consumer."""
from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.orm.exc import ObjectDeletedError

from core.settings import get_settings

from . import jobs as job_life
from .db import migrate
from .ingest import Ingestor
from .live import live
from .routers import catalogue, compare, experiments, health, jobs, mistakes, plan, report, session
from .security import GUARDS, short_errors

FRONTEND = Path(__file__).resolve().parents[2] / "frontend"


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    migrate()
    live.bind(asyncio.get_running_loop())  # ingestion (a thread) wakes event streams on this loop
    ingestor = Ingestor(settings)
    ingestor.start()
    app.state.ingestor = ingestor
    yield
    ingestor.stop()
    ingestor.join(timeout=5)


def create_app() -> FastAPI:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = FastAPI(title="BlockLab", version="0.1.0", lifespan=lifespan,
                  description="Single-block transfer learning (Malpure, Litake, Ingle 2021), as a web lab.")

    # The frame header, Host, Origin and content-type rules for changes, the token, HEAD as GET, and the body limit
    # on the bytes read: one middleware each (security.py), added innermost first so GUARDS[0] is outermost.
    for guard in reversed(GUARDS):
        app.add_middleware(guard)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        # FastAPI's 422 shape, but each echoed value a short snippet and the whole strict JSON (NaN, "\ud800").
        return JSONResponse({"detail": short_errors(exc.errors())}, 422)

    @app.exception_handler(job_life.Gone)
    @app.exception_handler(ObjectDeletedError)
    async def gone(request: Request, exc: Exception):  # deleted while this request looked at it
        detail = str(exc) if isinstance(exc, job_life.Gone) else "it was deleted while this request read it"
        return JSONResponse({"detail": detail}, 404)

    @app.exception_handler(job_life.QueueFull)
    async def queue_full(request: Request, exc: job_life.QueueFull):
        return JSONResponse({"detail": str(exc)}, 429)

    @app.exception_handler(job_life.Conflict)
    async def conflict(request: Request, exc: job_life.Conflict):  # another request changed it first
        return JSONResponse({"detail": str(exc)}, 409)

    for r in (catalogue, experiments, jobs, mistakes, compare, health, plan, report, session):
        app.include_router(r.router)

    @app.get("/vendor/plotly.min.js", include_in_schema=False)
    def plotly_js():
        import plotly  # its bundled JavaScript: the UI needs no CDN
        return FileResponse(Path(plotly.__file__).parent / "package_data" / "plotly.min.js",
                            media_type="application/javascript")

    app.mount("/", StaticFiles(directory=FRONTEND, html=True), name="frontend")
    return app


app = create_app()
