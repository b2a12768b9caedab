"""What a user does in the browser: submit, watch live, compare, download, cancel. Screenshots in tests/artifacts."""
import csv
import io

import pytest

from tests.lab import QUICK, SLOW, wait_for

from .conftest import shot

pytestmark = pytest.mark.browser


def _points(page, plot="plot-acc") -> int:
    """Points in the plot's first trace (0 while the view is still rendering)."""
    return page.evaluate(f"() => {{ const e = document.getElementById('{plot}'); "
                         f"return e && e.data ? e.data[0].x.length : 0 }}")


def _wait_points(page, n, timeout, plot="plot-acc"):
    page.wait_for_function(f"() => {{ const e = document.getElementById('{plot}'); "
                           f"return e && e.data && e.data[0].x.length >= {n} }}", timeout=timeout)


def test_submit_a_job_through_the_form_and_watch_it_live(ui_lab, page):
    page.goto(ui_lab.url + "/#/new")
    page.fill("#f-name", "browser run")
    page.select_option("#f-model", "deit_tiny_patch16_224")
    assert page.input_value("#f-epochs") == "20" and page.input_value("#f-batch_size") == "512"  # the paper preset
    assert not page.is_visible("#f-image_size")  # advanced fields folded away
    page.click("#advanced summary")
    page.fill("#f-epochs", "4")
    page.fill("#f-batch_size", "32")
    page.select_option("#f-weights", "none")
    page.fill("#f-val_limit", "40")
    page.fill("#f-train_per_class", "20")  # the tiny set's all: a short run, queued without a plan dialog
    page.fill("#f-image_size", "96")
    page.uncheck("#f-feature_cache")
    shot(page, "new-job-form")
    page.click("#submit")
    page.wait_for_url("**/#/job/*")
    page.evaluate("window.__no_reload = true")
    _wait_points(page, 1, 120_000)
    first = _points(page)
    page.wait_for_selector("#job-status.status-succeeded", timeout=180_000)
    _wait_points(page, 4, 30_000)
    assert _points(page) == 4 and first >= 1  # the chart gained points without a reload
    assert page.evaluate("document.getElementById('plot-confusion').data[0].type") == "heatmap"
    assert page.evaluate("window.__no_reload === true") and not page.errors  # live, not reloaded
    shot(page, "job-view")


def test_validation_errors_show_next_to_their_fields(ui_lab, page):
    page.goto(ui_lab.url + "/#/new")
    page.click("#advanced summary")
    page.fill("#f-epochs", "0")
    page.fill("#f-lr_factor", "3")
    page.click("#submit")
    page.wait_for_selector("#err-epochs:not(:empty)")
    assert "greater than or equal to 1" in page.text_content("#err-epochs")
    assert "less than 1" in page.text_content("#err-lr_factor")
    assert page.url.endswith("#/new")


def test_compare_two_jobs_and_download_the_csv(ui_lab, page):
    a = ui_lab.submit("alpha", **QUICK)
    b = ui_lab.submit("=HYPERLINK(\"x\")", **dict(QUICK, lr=3e-4))
    for j in (a, b):
        ui_lab.wait_status(j, "succeeded")
    page.goto(ui_lab.url + "/#/compare")
    page.check(f"#picker input[value='{a}']")
    page.check(f"#picker input[value='{b}']")
    page.click("#compare-go")
    page.wait_for_selector("#compare-table tbody tr >> nth=1")
    assert page.evaluate("document.getElementById('plot-fig2').data[0].x.length") == 10  # the paper's ten points
    shot(page, "compare-view")
    with page.expect_download() as dl:
        page.click("#download-csv")
    rows = list(csv.DictReader(io.StringIO(open(dl.value.path()).read())))
    assert [int(r["job_id"]) for r in rows] == [a, b]
    assert rows[1]["experiment"].startswith("'=")  # neutralized formula
    assert all(r["status"] == "succeeded" and r["epochs_run"] == "2" for r in rows)


def test_cancel_a_running_job_from_the_jobs_table(ui_lab, page):
    jid = ui_lab.submit("to cancel", **SLOW, epochs=50)
    page.goto(ui_lab.url + "/#/jobs")
    row = f"tr[data-job='{jid}']"
    page.wait_for_selector(f"{row} .status-running", timeout=120_000)
    page.wait_for_function(f"(document.querySelector(\"{row} .progress\") || {{}}).textContent?.includes('batch')")
    shot(page, "jobs-running")
    page.click(f"{row} button.cancel")
    page.wait_for_selector(f"{row} .status-cancelled", timeout=30_000)
    assert page.is_visible(f"{row} button.resume")
    shot(page, "jobs-cancelled")


def test_what_a_user_typed_is_shown_inert(ui_lab, page):
    ui_lab.submit("<img src=x onerror=alert(1)><script>alert(2)</script>", **dict(QUICK, epochs=1))
    page.goto(ui_lab.url + "/#/jobs")
    page.wait_for_selector("td.name")
    assert "<img src=x onerror=alert(1)>" in page.text_content("td.name")
    assert page.evaluate("document.querySelectorAll('td.name img, td.name script').length") == 0
    assert not page.errors  # no alert dialog, no script error


def test_errors_appear_as_messages(ui_lab, page):
    page.goto(ui_lab.url + "/#/job/99999")
    page.wait_for_selector("#message:not([hidden])")
    assert "not found" in page.text_content("#message")


def test_reproduce_table1_opens_the_group_beside_table1(make_lab, page):
    lab = make_lab()  # no worker: the ten paper models only queue
    page.goto(lab.url + "/#/new")
    page.click("#reproduce")
    page.click("#plan-dialog[open] #plan-confirm")  # the plan comes first (test_plan_dialog.py)
    page.wait_for_url("**/#/compare?group=*")
    page.wait_for_selector("#compare-table tbody tr >> nth=9")
    names = page.eval_on_selector_all("#compare-table tbody tr td:nth-child(4)", "els => els.map(e => e.textContent)")
    assert len(names) == 10 and "DeiT-B distilled" in names and "ResNet152V2" in names
    shot(page, "reproduce-table1")


def test_the_ui_asks_for_the_token_once(make_lab, page):
    """With a token every API route needs it, reads too: the page asks before it can show anything, once, and its
    event streams (an EventSource sends no header) carry the session cookie it gets for it."""
    lab = make_lab(BLOCKLAB_TOKEN="let-me-in")
    auth = {"X-BlockLab-Token": "let-me-in"}
    page.goto(lab.url + "/#/new")
    page.wait_for_selector("#token-box:not([hidden])")
    assert "access token" in page.text_content("#message")
    assert lab.client.get("/api/experiments").status_code == 401
    page.fill("#token-input", "let-me-in")
    page.click("#token-form button")
    page.click("#submit")  # the form, refused its options before, is drawn once the token is in
    page.wait_for_url("**/#/job/*")
    wait_for(lambda: lab.client.get("/api/health").json()["event_streams"] >= 1, 30,
             "the job page's event stream, with the session cookie")
    assert page.evaluate("document.cookie") == ""  # HttpOnly: no script on the page holds the session
    page.reload()  # kept for later visits: asked once
    page.goto(lab.url + "/#/new")
    page.click("#submit")
    page.wait_for_url("**/#/job/*")
    assert page.is_hidden("#token-box")
    assert len(lab.client.get("/api/experiments", headers=auth).json()) == 2
