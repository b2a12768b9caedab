"""Shared fixtures: tiny CIFAR-format data sets, the real CIFAR-10 subset, and a clean environment.
The test tiers and their markers are declared in tests/tiers.py (its hooks are imported below)."""
from __future__ import annotations

import os
from pathlib import Path

# No test may touch the internet. huggingface_hub reads this once, when timm first imports it: set it first.
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest  # noqa: E402

from tests.tiers import (  # noqa: E402, F401  (pytest finds hooks by name in a conftest)
    pytest_addoption,
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_call,
    pytest_runtest_makereport,
    pytest_runtest_protocol,
    share_cores,
)

share_cores()  # before anything imports torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data" / "cifar10-jpeg75"
CIFAR10_ENV = "BLOCKLAB_TEST_CIFAR10"  # a folder holding the subset's cifar-10-batches-py/


def cifar10_subset_places(environ=os.environ, root: Path = ROOT) -> list[Path]:
    """Where the real CIFAR-10 subset (shared/data/cifar10-jpeg75) is looked for, in order: the environment
    variable, the shared folder beside the checkout, and the lab's own data folder (`make run`'s var/data)."""
    places = [Path(environ[CIFAR10_ENV])] if environ.get(CIFAR10_ENV) else []
    return places + [root.parent / "shared" / "data" / "cifar10-jpeg75", root / "var" / "data"]


def is_cifar10_subset(folder: Path) -> bool:
    """The subset's layout: one training batch and the full test batch (the official set has five batches)."""
    batches = folder / "cifar-10-batches-py"
    return ((batches / "data_batch_1").is_file() and (batches / "test_batch").is_file()
            and not (batches / "data_batch_2").exists())


def find_cifar10_subset(environ=os.environ, root: Path = ROOT) -> Path:
    """The first place holding the subset. Missing, a test is skipped with one line saying where to put it;
    under CI (CI=true), where the subset is always laid beside the checkout, a missing subset fails instead."""
    places = cifar10_subset_places(environ, root)
    for place in places:
        if is_cifar10_subset(place):
            return place
    why = (f"the real CIFAR-10 subset was not found in {', '.join(map(str, places))}: set {CIFAR10_ENV} to the "
           f"folder holding its cifar-10-batches-py/")
    if environ.get("CI", "").lower() in ("true", "1", "yes"):
        pytest.fail(why, pytrace=False)
    pytest.skip(why)


@pytest.fixture(scope="session")
def real_cifar_dir() -> Path:
    """The real CIFAR-10 subset (shared/data/cifar10-jpeg75/README.md), wherever find_cifar10_subset finds it."""
    return find_cifar10_subset()


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
