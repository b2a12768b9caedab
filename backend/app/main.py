"""BlockLab's web app: the API routers, the static frontend, and the worker-event consumer."""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from .db import migrate
from .ingest import Ingestor
from .routers import catalogue, compare, experiments, health, jobs
from core.settings import get_settings

FRONTEND = Path(__file__).resolve().parents[2] / "frontend"


@asynccontextmanager
async def lifespan(app: FastAPI):
    settings = get_settings()
    settings.home.mkdir(parents=True, exist_ok=True)
    migrate()
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

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > get_settings().max_body_bytes:
            return JSONResponse({"detail": f"request body over {get_settings().max_body_bytes} bytes"}, 413)
        return await call_next(request)

    for r in (catalogue, experiments, jobs, compare, health):
        app.include_router(r.router)

    @app.get("/vendor/plotly.min.js", include_in_schema=False)
    def plotly_js():
        import plotly  # its bundled JavaScript: the UI needs no CDN
        return FileResponse(Path(plotly.__file__).parent / "package_data" / "plotly.min.js",
                            media_type="application/javascript")

    app.mount("/", StaticFiles(directory=FRONTEND, html=True), name="frontend")
    return app


app = create_app()
