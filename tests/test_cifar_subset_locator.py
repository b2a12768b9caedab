"""A clone with nothing beside it passes its tests: the real CIFAR-10 subset is looked for in three places, and
where it is in none a test that needs it is skipped with one line (failed under CI, where it is always laid)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import CIFAR10_ENV, ROOT, find_cifar10_subset


def _subset(folder, batches=1):
    d = folder / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for i in range(1, batches + 1):
        (d / f"data_batch_{i}").write_bytes(b"")
    (d / "test_batch").write_bytes(b"")
    return folder


def test_the_variable_comes_first_then_the_shared_folder_then_the_labs_data(tmp_path):
    root = tmp_path / "clone"
    shared = _subset(tmp_path / "shared" / "data" / "cifar10-jpeg75")
    own = _subset(root / "var" / "data")
    mine = _subset(tmp_path / "mine")
    assert find_cifar10_subset({CIFAR10_ENV: str(mine)}, root) == mine
    assert find_cifar10_subset({}, root) == shared
    shutil.rmtree(shared)
    assert find_cifar10_subset({}, root) == own


def test_a_missing_subset_is_a_one_line_skip_naming_the_places_and_the_variable(tmp_path):
    with pytest.raises(pytest.skip.Exception) as e:
        find_cifar10_subset({"CI": "false"}, tmp_path / "clone")
    why = str(e.value)
    assert "\n" not in why and CIFAR10_ENV in why and str(tmp_path / "clone" / "var" / "data") in why


def test_under_ci_a_missing_subset_fails(tmp_path):
    with pytest.raises(pytest.fail.Exception, match=CIFAR10_ENV):
        find_cifar10_subset({"CI": "true"}, tmp_path / "clone")


def test_the_full_official_set_is_not_taken_for_the_subset(tmp_path):
    """The subset's tests count its 10,000 training images: a folder with the official five batches is another
    set, so the next place is tried."""
    root = tmp_path / "clone"
    _subset(root / "var" / "data", batches=5)
    with pytest.raises(pytest.skip.Exception):
        find_cifar10_subset({}, root)


@pytest.mark.subprocess
@pytest.mark.slow
def test_a_clone_without_shared_skips_the_real_data_tests_and_fails_them_under_ci(tmp_path):
    clone = tmp_path / "blocklab"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{ROOT}", str(clone)], check=True)
    for path in ("tests/conftest.py", "tests/tiers.py"):  # the working tree's fixtures, committed or not
        shutil.copy(ROOT / path, clone / path)
    env = {k: v for k, v in os.environ.items() if k not in (CIFAR10_ENV, "CI", "PYTHONPATH")}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "real_subset",
           "tests/worker/test_data.py"]
    r = subprocess.run(cmd, cwd=clone, env={**env, "PYTHONPATH": str(clone)}, capture_output=True, text=True)
    assert r.returncode == 0 and "1 skipped" in r.stdout and "real CIFAR-10 subset was not found" in r.stdout, \
        r.stdout + r.stderr
    r = subprocess.run(cmd, cwd=clone, env={**env, "PYTHONPATH": str(clone), "CI": "true"}, capture_output=True,
                       text=True)
    assert r.returncode == 1 and "1 error" in r.stdout and CIFAR10_ENV in r.stdout, r.stdout + r.stderr
