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


def _upgrade_to(url: str, revision: str) -> None:
    from pathlib import Path

    from alembic import command
    from alembic.config import Config

    import backend.app.db as db
    cfg = Config()
    cfg.set_main_option("script_location", str(Path(db.__file__).with_name("migrations")))
    cfg.set_main_option("sqlalchemy.url", url)
    command.upgrade(cfg, revision)


def test_0005_carries_old_progress_over_and_keeps_ids_unique(tmp_path):
    """The four batch columns become one progress report; queued_at and dry_run get values; AUTOINCREMENT stays."""
    import json
    url = f"sqlite:///{tmp_path / 'lab.db'}"
    _upgrade_to(url, "0004")
    eng = make_engine(url)
    with eng.begin() as c:
        c.execute(text("INSERT INTO experiments (name, config, created_at) VALUES ('old', '{}', '2026-01-01')"))
        for jid, phase in ((1, "train"), (2, "val"), (3, None)):
            c.execute(text("INSERT INTO jobs (id, experiment_id, status, attempt, phase, progress_epoch, "
                           "progress_batch, progress_batches, created_at) VALUES (:id, 1, 'running', 1, :ph, 3, 7, "
                           "40, '2026-01-02 10:00:00')"), {"id": jid, "ph": phase})
    migrate(url)
    with eng.begin() as c:
        rows = c.execute(text("SELECT id, progress, queued_at, created_at FROM jobs ORDER BY id")).all()
        assert json.loads(rows[0].progress) == {"phase": "training", "done": 7, "total": 40, "epoch": 3,
                                                "split": None}
        assert json.loads(rows[1].progress)["phase"] == "validating" and rows[2].progress is None
        assert all(r.queued_at == r.created_at for r in rows)
        assert c.execute(text("SELECT dry_run FROM experiments")).scalar() == 0
        cols = {r[1] for r in c.execute(text("PRAGMA table_info(jobs)"))}
        assert "phase" not in cols and "progress_batch" not in cols
        for table in ("jobs", "experiments"):
            sql = c.execute(text("SELECT sql FROM sqlite_master WHERE name = :t"), {"t": table}).scalar()
            assert "AUTOINCREMENT" in sql, sql
