"""Fixtures for system tests: labs of real processes (see tests/lab.py).

BLOCKLAB_TEST_BUSY=N runs N processes that keep a core busy for the whole session, so the suite can be shown to
hold on a loaded machine (CI shares its two cores with other work): `BLOCKLAB_TEST_BUSY=2 make test-all`.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.lab import Lab


@pytest.fixture(params=["sqlite", "redis"])
def lab(request, tmp_path, tiny_cifar_dir):
    lab = Lab(tmp_path, tiny_cifar_dir, redis=request.param == "redis")
    lab.start_backend()
    yield lab
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        print(lab.logs())  # the processes' own words, beside the failure
    lab.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(scope="session", autouse=True)
def busy_cores():
    n = int(os.environ.get("BLOCKLAB_TEST_BUSY", "0") or 0)
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    yield n
    for p in procs:
        p.kill()
        p.wait()
