"""Browser tests: Playwright drives Debian's headless Chromium against a real lab (backend + worker)."""
from __future__ import annotations

from pathlib import Path

import pytest

from tests.lab import Lab

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
CHROMIUM = "/usr/bin/chromium"
# As root, in a sandbox, with no network: no sandboxing, no background fetches.
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing (.ci/run installs Debian's chromium)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def ui_lab(tmp_path_factory, tiny_cifar_dir):
    lab = Lab(tmp_path_factory.mktemp("ui-lab"), tiny_cifar_dir, redis=False)
    lab.start_backend()
    lab.new_worker()
    yield lab
    lab.close()


@pytest.fixture(scope="module")
def idle_lab(tmp_path_factory, tiny_cifar_dir):
    """One backend for a whole module, no worker: for tests that read catalogue data or only queue jobs and do
    not count what the module's other tests queued (a lab's start is a few seconds of every such test)."""
    lab = Lab(tmp_path_factory.mktemp("idle-lab"), tiny_cifar_dir, redis=False)
    lab.start_backend()
    yield lab
    lab.close()


@pytest.fixture
def page(browser, request):
    ctx = browser.new_context(viewport={"width": 1300, "height": 900}, accept_downloads=True)
    pg = ctx.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
    pg.errors = errors
    yield pg
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:  # the page as the failure left it; the tests shoot what a person reviews
        shot(pg, f"failed-{request.node.name}")
    ctx.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def shot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
