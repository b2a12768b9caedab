from sqlalchemy import inspect, text

from backend.app.db import make_engine, migrate


def test_migrations_create_the_schema_and_keep_data(tmp_path):
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    migrate(url)
    eng = make_engine(url)
    assert {"experiments", "jobs", "epoch_metrics", "job_events", "alembic_version"} <= set(inspect(eng).get_table_names())
    with eng.begin() as c:
        c.execute(text("INSERT INTO experiments (name, config, created_at) VALUES ('kept', '{}', '2026-01-01')"))
    migrate(url)  # an upgrade on an existing database
    with eng.begin() as c:
        assert c.execute(text("SELECT name FROM experiments")).scalar() == "kept"
        assert c.execute(text("PRAGMA journal_mode")).scalar() == "wal"
