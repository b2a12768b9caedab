"""Fixtures for system tests: labs of real processes (see tests/lab.py)."""
from __future__ import annotations

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
