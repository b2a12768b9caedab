import pytest
from fastapi.testclient import TestClient


def reset_caches():
    from backend.app import db, queue
    from core import settings
    settings.get_settings.cache_clear()
    db.get_engine.cache_clear()
    db._sessionmaker.cache_clear()
    queue._client.cache_clear()


@pytest.fixture
def api(tmp_path, monkeypatch):
    """The real app on a fresh home (SQLite database and broker), no worker attached."""
    for k in ("REDIS_URL", "BLOCKLAB_TOKEN"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("BLOCKLAB_HOME", str(tmp_path / "home"))
    reset_caches()
    from backend.app.main import create_app
    # As the lab's own pages do: a write carries this header (a foreign page cannot send it; security.py).
    with TestClient(create_app(), headers={"X-Requested-With": "BlockLab"}) as client:
        yield client
    reset_caches()


TINY = {"model": "deit_tiny_patch16_224", "weights": "none", "epochs": 2, "batch_size": 16,
        "train_per_class": 2, "val_limit": 20, "image_size": 32}
