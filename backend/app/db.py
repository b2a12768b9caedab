"""SQLite through SQLAlchemy 2: WAL (readers never block the writer), a busy timeout instead of 'database is
locked' errors, and Alembic migrations applied at start so an upgrade keeps old data."""
from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from core.settings import get_settings


class Base(DeclarativeBase):
    pass


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}
                           if url.startswith("sqlite") else {})
    if url.startswith("sqlite"):
        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()
    return engine


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().database)


@lru_cache
def _sessionmaker() -> sessionmaker:
    return sessionmaker(get_engine(), expire_on_commit=False)


def session_scope() -> Session:
    return _sessionmaker()()


def get_session() -> Iterator[Session]:
    with session_scope() as s:
        yield s


def migrate(url: str | None = None) -> None:
    """Bring the schema to the newest Alembic revision (creates it on a new database)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    cfg.set_main_option("sqlalchemy.url", url or get_settings().database)
    command.upgrade(cfg, "head")
