"""Shared fixtures: tiny CIFAR-format data sets, the real CIFAR-10 subset, and a clean environment."""
from __future__ import annotations

import os
from pathlib import Path

# No test may touch the internet. huggingface_hub reads this once, when timm first imports it: set it first.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg75"


@pytest.fixture(scope="session")
def real_cifar_dir() -> Path:
    """The real CIFAR-10 subset laid beside the repository (see shared/data/README.md)."""
    if not (SHARED_DATA / "cifar-10-batches-py" / "test_batch").is_file():
        pytest.fail(f"the real CIFAR-10 subset is missing: expected it at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_cifar_dir(tmp_path_factory) -> Path:
    """A small CIFAR-format set in the official layout: 200 generated training and 60 test images."""
    from worker.engine import data

    root = tmp_path_factory.mktemp("tiny-cifar")
    train, val = data.generated(200, 60, seed=1)
    data.write_cifar_batches(root, train, val, batches=2)
    return root


def env_for(home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLOCKLAB_") and k != "REDIS_URL"}
    # Processes run from the repository root and import it from there, with or without an editable install.
    env.update({"BLOCKLAB_HOME": str(home), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))})
    env.update(extra)
    return env


@pytest.fixture
def make_lab(tmp_path, tiny_cifar_dir):
    """Start labs of real processes with extra settings (`make_lab(BLOCKLAB_TOKEN="x")`), no worker yet;
    all are closed after the test."""
    from tests.lab import Lab
    labs = []

    def make(redis: bool = False, redis_args: tuple = (), **env: str):
        lab = Lab(tmp_path / f"lab{len(labs)}", tiny_cifar_dir, redis=redis, redis_args=redis_args)
        lab.env.update(env)
        labs.append(lab)
        lab.start_backend()
        return lab

    yield make
    for lab in labs:
        lab.close()
