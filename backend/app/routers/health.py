from fastapi import APIRouter, Request
from sqlalchemy import text

from core.settings import get_settings, home_id

from ..db import session_scope
from ..live import live

router = APIRouter(prefix="/api", tags=["health"])


@router.get("/health")
def health(request: Request):
    with session_scope() as db:
        db.execute(text("SELECT 1"))
    ingest = getattr(request.app.state, "ingestor", None)
    return {"status": "ok", "database": "ok", "home": home_id(get_settings().home),
            "event_consumer": "running" if ingest is not None and ingest.is_alive() else "stopped",
            "events_seen": ingest.events_seen if ingest is not None else 0, "event_streams": live.open}
