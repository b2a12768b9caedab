"""The job list in the browser at 800 px: what each job is doing (queue position, phase progress), a dry-run badge,
the error in the row itself, Cancel / Force stop / Resume, and a whole group cancelled and resumed at once.
Screenshots in tests/artifacts."""
import os
import signal

import pytest

from tests.lab import SLOW

from .conftest import shot

pytestmark = pytest.mark.browser
XRW = {"X-Requested-With": "BlockLab"}


@pytest.fixture
def narrow(browser, request):
    """A page 800 px wide: every view must fit it. Its last state is saved as <test name>.png."""
    ctx = browser.new_context(viewport={"width": 800, "height": 1000})
    pg = ctx.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    pg.on("dialog", lambda d: (pg.errors.append(f"dialog: {d.message}"), d.dismiss()))
    yield pg
    shot(pg, request.node.name)
    ctx.close()


def no_horizontal_overflow(page) -> bool:
    return page.evaluate("() => { const m = document.querySelector('main'); const d = document.documentElement; "
                         "return m.scrollWidth <= m.clientWidth + 1 && d.scrollWidth <= d.clientWidth + 1 }")


def post(lab, path, **body):
    r = lab.client.post(path, json=body, headers=XRW)
    assert r.status_code < 300, r.text
    return r.json()


def test_queued_jobs_show_their_position_and_a_dry_run_its_badge(make_lab, narrow):
    lab = make_lab()  # no worker: jobs stay queued
    first = post(lab, "/api/experiments", name="paper run", config={"epochs": 1})["jobs"][0]["id"]
    dry = post(lab, "/api/experiments", name="quick look", config={"epochs": 1}, dry_run=True)["jobs"][0]["id"]
    narrow.goto(lab.url + "/#/jobs")
    narrow.wait_for_selector(f"tr[data-job='{dry}'] .phase-text")
    assert "position 1 of 2" in narrow.text_content(f"tr[data-job='{first}'] .progress")
    assert "position 2 of 2" in narrow.text_content(f"tr[data-job='{dry}'] .progress")
    assert narrow.is_visible(f"tr[data-job='{dry}'] .badge.dry")
    assert narrow.locator(f"tr[data-job='{first}'] .badge.dry").count() == 0  # a paper run is never marked dry
    assert no_horizontal_overflow(narrow) and not narrow.errors
    shot(narrow, "jobs-queued-positions-dry-run")


def test_a_failed_jobs_error_is_in_its_row(ui_lab, narrow):
    # weights=local with nothing in the weights folder: the job fails at once, saying what to put where.
    jid = ui_lab.submit("no local weights", model="deit_tiny_patch16_224", weights="local", epochs=1,
                        image_size=32, val_limit=40)
    failed = ui_lab.wait_status(jid, {"failed", "succeeded"})
    assert failed["status"] == "failed" and failed["error"]
    narrow.goto(ui_lab.url + "/#/jobs")
    err = narrow.wait_for_selector(f"tr[data-job-error='{jid}'] .error-text")
    assert err.is_visible() and err.text_content() == failed["error"]  # in full, in the page: not a tooltip
    assert narrow.is_visible(f"tr[data-job='{jid}'] button.resume")
    assert no_horizontal_overflow(narrow) and not narrow.errors
    shot(narrow, "jobs-failed-error-in-row")


def test_cancel_then_force_stop_a_worker_that_does_not_answer(ui_lab, narrow):
    jid = ui_lab.submit("stuck worker", **SLOW, epochs=50)
    narrow.goto(ui_lab.url + "/#/jobs")
    row = f"tr[data-job='{jid}']"
    narrow.wait_for_selector(f"{row} .status-running", timeout=120_000)
    narrow.wait_for_function(f"(document.querySelector(\"{row} .progress\") || {{}}).textContent?.includes('batch')",
                             timeout=120_000)
    shot(narrow, "jobs-running-phase-progress")
    worker = ui_lab.procs[-1]
    os.killpg(worker.p.pid, signal.SIGSTOP)  # a worker that no longer answers its control queue
    try:
        narrow.click(f"{row} button.cancel")
        narrow.wait_for_selector(f"{row} .status-cancelling", timeout=15_000)
        assert narrow.locator(f"{row} button.cancel").count() == 0
        narrow.wait_for_selector(f"{row} button.force-stop")
        shot(narrow, "jobs-cancelling-force-stop")
        narrow.click(f"{row} button.force-stop")
        narrow.wait_for_selector(f"{row} .status-cancelled", timeout=15_000)
        assert "force" in (ui_lab.job(jid)["error"] or "").lower()
        narrow.wait_for_selector(f"tr[data-job-error='{jid}'] .error-text")
        shot(narrow, "jobs-force-stopped")
    finally:
        os.killpg(worker.p.pid, signal.SIGCONT)
    assert no_horizontal_overflow(narrow) and not narrow.errors


def test_a_whole_group_is_cancelled_and_resumed_at_once(make_lab, narrow):
    lab = make_lab()  # no worker: the group's jobs queue
    ids = [post(lab, "/api/experiments", name=f"sweep lr {lr}", group="lr-sweep", config={"epochs": 1, "lr": lr})
           ["jobs"][0]["id"] for lr in (1e-4, 3e-4, 1e-3)]
    lone = post(lab, "/api/experiments", name="not in the group", config={"epochs": 1})["jobs"][0]["id"]
    narrow.goto(lab.url + "/#/jobs")
    group = "#groups .group-row[data-group='lr-sweep']"
    narrow.wait_for_selector(f"{group} button.group-cancel")
    assert "3 run(s): 3 queued" in narrow.text_content(group)
    shot(narrow, "jobs-group-queued")
    narrow.click(f"{group} button.group-cancel")
    for j in ids:
        narrow.wait_for_selector(f"tr[data-job='{j}'] .status-cancelled", timeout=15_000)
    assert "Cancelled 3 job(s) of group lr-sweep" in narrow.text_content("#message")
    assert lab.job(lone)["status"] == "queued"  # the rest of the lab is left alone
    narrow.wait_for_selector(f"{group} button.group-resume")
    shot(narrow, "jobs-group-cancelled")
    narrow.click(f"{group} button.group-resume")
    for j in ids:
        narrow.wait_for_selector(f"tr[data-job='{j}'] .status-queued", timeout=15_000)
    assert all(lab.job(j)["status"] == "queued" for j in ids)
    assert no_horizontal_overflow(narrow) and not narrow.errors
