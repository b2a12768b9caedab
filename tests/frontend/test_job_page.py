"""The job page in the browser: what the job does now (phase line and bar), charts that wait with a message, per-class
and confusion plots that follow the run, the heatmap, what ran, errors, cancel and force stop, leaving at once.
Screenshots in tests/artifacts."""
import json
import os
import signal

import pytest

from tests.lab import QUICK, SLOW

from .conftest import shot

pytestmark = pytest.mark.browser

# Every EventSource and fetch the page opens, so a test can ask whether a left view still streams or fetches.
PROBE = """
window.__es = [];
const ES = window.EventSource;
window.EventSource = class extends ES { constructor(...a) { super(...a); window.__es.push(this); } };
window.__inflight = 0;
const realFetch = window.fetch;
window.fetch = (...a) => { window.__inflight++; return realFetch(...a).finally(() => { window.__inflight--; }); };
"""

STATE = """() => { const p = document.getElementById('plot-acc'); const s = document.getElementById('job-status');
  return { status: s && s.textContent, points: p && p.data ? p.data[0].x.length : 0,
           shown: Number(document.getElementById('epoch-pick').dataset.shown || 0) }; }"""


def _state(page) -> dict:
    return page.evaluate(STATE)


def test_charts_wait_with_a_message_then_follow_the_latest_epoch_and_show_the_best_after(ui_lab, page):
    blocker = ui_lab.submit("blocker", **SLOW, epochs=50)
    page.goto(f"{ui_lab.url}/#/job/{blocker}")
    # Before its first epoch: what the worker does, in the phase line and in place of each chart.
    page.wait_for_selector("#job-phase .phase-line[data-phase='training'] #phase-bar", timeout=120_000)
    wait = page.text_content("#plot-acc-wait")
    assert wait.startswith("waiting for the first epoch: ") and "training batch" in wait, wait
    assert page.is_hidden("#plot-acc") and page.is_hidden("#plot-confusion")  # no empty axes
    assert "training batch" in page.text_content("#phase-text")
    shot(page, "job-waiting-first-epoch")

    jid = ui_lab.submit("followed", **dict(QUICK, epochs=4, image_size=64, feature_cache=False))
    page.goto(f"{ui_lab.url}/#/job/{jid}")
    page.wait_for_selector("#plot-acc-wait:has-text('waiting for the first epoch: queued · position 1')")
    assert page.text_content("#phase-text").startswith("queued · position 1")
    shot(page, "job-waiting-queued")

    assert ui_lab.client.post(f"/api/jobs/{blocker}/cancel").status_code == 200
    # While it runs, the per-class and confusion plots show the latest epoch.
    seen = page.wait_for_function(f"""() => {{ const s = ({STATE})();
        return (s.status === 'running' && s.points >= 2) || s.status === 'succeeded' ? s : null; }}""",
                                  timeout=180_000).json_value()
    assert seen["status"] == "running", f"never saw the run with 2 epochs: {seen}"
    assert seen["shown"] == seen["points"]
    shot(page, "job-running-follows-latest")

    page.wait_for_selector("#job-status.status-succeeded", timeout=180_000)
    best = ui_lab.job(jid)["best_epoch"]
    page.wait_for_function(f"() => ({STATE})().shown === {best} && ({STATE})().points === 4")
    title = page.evaluate("document.getElementById('plot-confusion').layout.title.text")
    assert title.startswith(f"Confusion matrix, epoch {best}, best"), title
    assert f"best epoch ({best})" in page.text_content("#epoch-pick option[value='']")
    page.select_option("#epoch-pick", "1")  # the user's pick wins
    page.wait_for_function(f"() => ({STATE})().shown === 1")
    assert page.evaluate("document.getElementById('plot-class').layout.title.text").startswith("Per-class accuracy, epoch 1")
    assert not page.errors
    shot(page, "job-finished-epoch-picked")


def test_the_confusion_heatmap_reads_light_to_dark_with_counts_and_row_percentages(ui_lab, page):
    jid = ui_lab.submit("heatmap", **QUICK)
    ui_lab.wait_status(jid, "succeeded")
    page.goto(f"{ui_lab.url}/#/job/{jid}")
    page.wait_for_function("() => { const e = document.getElementById('plot-confusion'); return e && e.data }")
    trace = page.evaluate("(() => { const t = document.getElementById('plot-confusion').data[0];"
                          " return {scale: t.colorscale, text: t.text, z: t.z, bar: t.colorbar.title.text} })()")
    assert trace["scale"][0][1] == "#ffffff" and trace["scale"][-1][1] == "#08306b"  # white (none) to dark blue
    assert trace["bar"] == "images"
    matrix = ui_lab.client.get(f"/api/jobs/{jid}/metrics").json()[-1]["confusion"]
    assert trace["z"] == matrix and trace["text"] == [[str(c) for c in r] for r in matrix]  # counts in the cells
    assert page.evaluate("document.getElementById('plot-confusion').data[0].texttemplate") == "%{text}"

    # The hover names true class, predicted class, count and share of that true class.
    page.locator("#plot-confusion").scroll_into_view_if_needed()
    box = page.locator("#plot-confusion .nsewdrag").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.05, box["y"] + box["height"] * 0.05)  # top left cell
    page.wait_for_selector("#plot-confusion .hoverlayer .hovertext")
    hover = page.text_content("#plot-confusion .hoverlayer .hovertext")
    row = sum(matrix[0])
    assert "true: airplane" in hover and "predicted: airplane" in hover, hover
    assert f"count: {matrix[0][0]} of {row}" in hover and f"{100 * matrix[0][0] / row:.1f}% of true airplane" in hover
    shot(page, "job-confusion-counts")

    page.click("#confusion-mode")
    page.wait_for_function("document.getElementById('plot-confusion').data[0].colorbar.title.text === '% of true class'")
    z = page.evaluate("document.getElementById('plot-confusion').data[0].z")
    for r, counts in zip(z, matrix):
        if sum(counts):
            assert abs(sum(r) - 100) < 1e-6
    assert page.evaluate("document.getElementById('plot-confusion').data[0].zmax") == 100
    assert page.evaluate("document.getElementById('plot-confusion').layout.title.text").endswith("(row %)")
    assert page.text_content("#confusion-mode") == "Show counts"
    page.mouse.move(0, 0)
    shot(page, "job-confusion-row-percent")
    assert not page.errors


def test_the_job_page_shows_what_ran_and_works_800px_wide(ui_lab, page):
    jid = ui_lab.submit("what ran", **dict(QUICK, lr=3e-4))
    ui_lab.wait_status(jid, "succeeded")
    page.set_viewport_size({"width": 800, "height": 1000})
    page.goto(f"{ui_lab.url}/#/job/{jid}")
    page.wait_for_selector("#job-ran table.kv")
    config = page.text_content("#job-config")
    assert "Batch size32 (paper: 512)" in config and "Learning rate (Adam)0.0003 (paper: 0.0001)" in config
    ran = {r[0]: r[1] for r in page.eval_on_selector_all(
        "#job-ran table.kv tr", "rows => rows.map(r => [r.cells[0].textContent, r.cells[1].textContent])")}
    settings = ui_lab.job(jid)["settings"]
    assert ran["Image size"] == f"{settings['image_size']} px" and ran["Device"] == settings["device"]
    assert ran["Precision"].startswith(settings["precision"]) and ran["Training images"] == f"{settings['train_images']:,}"
    assert ran["Feature cache"].startswith("reused" if settings["feature_cache"]["reused"] else "computed in this run")
    assert ran["Total"] != "–" and ran["Started"] != "–"
    attempts = page.eval_on_selector_all("#job-attempts tbody tr", "rows => rows.map(r => r.cells[5].textContent)")
    assert attempts == ["succeeded"]
    assert page.is_visible("#clone") and not page.is_visible("button.cancel")

    # 800 px: one column, nothing wider than the window, the mode bar clear of every title.
    assert page.evaluate("document.documentElement.scrollWidth") <= 800
    for plot in ("plot-acc", "plot-loss", "plot-class", "plot-confusion"):
        page.hover(f"#{plot} .nsewdrag")
        bar = page.locator(f"#{plot} .modebar").bounding_box()
        title = page.locator(f"#{plot} .gtitle").bounding_box()
        assert bar and title
        apart = (title["x"] + title["width"] <= bar["x"] or bar["y"] + bar["height"] <= title["y"]
                 or title["y"] + title["height"] <= bar["y"])
        assert apart, (plot, bar, title)
        assert page.locator(f"#{plot}").bounding_box()["width"] <= 800
    page.mouse.move(0, 0)
    shot(page, "job-what-ran-800px")
    assert not page.errors


def test_a_failed_job_shows_its_error_on_the_page(ui_lab, page):
    jid = ui_lab.submit("offline hub", **dict(QUICK, weights="hub"))  # no internet, nothing cached: it fails
    page.goto(f"{ui_lab.url}/#/job/{jid}")
    page.wait_for_selector("#job-status.status-failed", timeout=180_000)
    error = ui_lab.job(jid)["error"]
    assert page.text_content("#job-error") == error
    # In the form's terms: what to choose and which file to put where, no command-line flag.
    assert f"choose weights: local and put {QUICK['model']}.safetensors" in error and "--weights" not in error
    assert page.is_visible("#job-error")
    # The file is still missing: what to put where, and no Resume that would fail the same way (test_fix_offer.py).
    page.wait_for_selector("#fix-card")
    assert "A file is missing: the pretrained weights of deit_tiny_patch16_224" in page.text_content("#fix-card")
    assert not page.is_visible("button.resume") and page.is_disabled("#fix-run-again")
    # No epoch to chart: one line says so where four empty charts stood.
    assert page.text_content("#no-epoch") == "no epoch finished: the job is failed" and page.is_visible("#no-epoch")
    assert not page.is_visible("#plot-acc") and not page.is_visible("#job-detail")
    shot(page, "job-failed-error")
    page.set_viewport_size({"width": 800, "height": 900})
    shot(page, "job-failed-error-800px")


def test_cancel_then_force_stop_a_worker_that_does_not_answer(make_lab, page):
    lab = make_lab(BLOCKLAB_HEARTBEAT_TIMEOUT_S="120")  # the watchdog stays out of it
    worker = lab.new_worker()
    jid = lab.submit("stuck", **SLOW, epochs=50)
    page.goto(f"{lab.url}/#/job/{jid}")
    page.wait_for_selector("#job-status.status-running", timeout=120_000)
    assert page.is_visible("button.cancel") and not page.is_visible("button.force-stop")
    os.killpg(worker.p.pid, signal.SIGSTOP)  # a worker that hears nothing
    try:
        page.click("button.cancel")
        page.wait_for_selector("#job-status.status-cancelling")
        page.wait_for_selector("button.force-stop")
        shot(page, "job-cancelling-force-stop")
        page.click("button.force-stop")
        page.wait_for_selector("#job-status.status-cancelled", timeout=10_000)
        assert "force" in page.text_content("#job-error").lower()
        assert page.is_visible("button.resume")
        shot(page, "job-force-stopped")
    finally:
        os.killpg(worker.p.pid, signal.SIGCONT)
    assert not page.errors


def test_leaving_a_job_at_once_leaves_nothing_of_it_behind(make_lab, page):
    lab = make_lab()  # no worker: the job stays queued, its page streams
    jid = lab.submit("left at once", **QUICK)
    page.add_init_script(PROBE)
    page.goto(lab.url + "/#/jobs")
    page.wait_for_selector("#jobs")
    opened = 0
    for delay in (0, 5, 20, 40, 100, 400):
        page.evaluate(f"""() => {{ window.__es = []; location.hash = '#/job/{jid}';
                                   setTimeout(() => {{ location.hash = '#/new'; }}, {delay}); }}""")
        page.wait_for_selector("#job-form")
        page.wait_for_function("() => window.__inflight === 0 && document.querySelector('#method-card .method-card-body')")
        streams = page.evaluate("window.__es.map(e => e.readyState)")
        opened += len(streams)
        assert all(s == 2 for s in streams), (delay, streams)  # every stream it opened is closed
        left = page.evaluate("""() => ({ head: !!document.querySelector('#job-head'), plots: document.querySelectorAll('.js-plotly-plot').length,
                                         views: document.querySelectorAll('#view > .view').length })""")
        assert left == {"head": False, "plots": 0, "views": 1}, (delay, left)
    assert opened >= 1  # the slower visits did open the job's stream, and closed it on leaving
    page.evaluate(f"location.hash = '#/job/{jid}'")
    page.wait_for_selector("#plot-acc-wait:has-text('queued')")
    assert page.evaluate("window.__es.filter(e => e.readyState !== 2).length") == 1  # a visit that stays streams
    assert not page.errors
    shot(page, "job-left-at-once")


PHASES = [  # (progress as the API gives it, what the line must say)
    ({"phase": "starting", "done": 0, "total": None}, "starting"),
    ({"phase": "downloading", "done": 52_000_000, "total": 346_000_000, "what": "weights of deit_tiny_patch16_224"},
     "downloading weights of deit_tiny_patch16_224 52 of 346 MB"),
    ({"phase": "loading", "done": 100, "total": 200}, "loading data 100 / 200 images"),
    ({"phase": "features", "done": 1200, "total": 5000, "split": "train"}, "frozen features (train) 1,200 / 5,000 images"),
    ({"phase": "training", "done": 12, "total": 98, "epoch": 1}, "epoch 1 · training batch 12/98"),
    ({"phase": "validating", "done": 5, "total": 20, "epoch": 1}, "epoch 1 · validating batch 5/20"),
]


def test_each_phase_has_a_line_a_bar_and_a_waiting_message(make_lab, page):
    """Every phase as the API reports it (a worker passes through some in milliseconds): the real job's view with
    its status and progress set, and its event stream held back so that the view shows exactly that."""
    lab = make_lab()
    jid = lab.submit("phases", **QUICK)
    now = {}

    def running(route):
        job = route.fetch().json()
        job.update(status="running", progress={"unit": "", "epoch": None, "split": None, **now})
        route.fulfill(status=200, content_type="application/json", body=json.dumps(job))

    page.route(f"**/api/jobs/{jid}", running)
    page.route(f"**/api/jobs/{jid}/events*", lambda route: route.abort())
    for i, (progress, words) in enumerate(PHASES):
        now.clear()
        now.update(progress)
        page.goto(f"{lab.url}/?visit={i}#/job/{jid}")
        page.wait_for_selector(f"#job-phase .phase-line[data-phase='{progress['phase']}']")
        assert words in page.text_content("#phase-text"), progress
        assert page.text_content("#plot-acc-wait") == f"waiting for the first epoch: {page.text_content('#phase-text')}"
        if progress["total"]:
            assert page.get_attribute("#phase-bar", "aria-valuenow") == str(round(100 * progress["done"] / progress["total"]))
        else:
            assert page.locator("#phase-bar").count() == 0  # no fraction known: no bar that would lie
        assert page.is_visible("button.cancel")
        if progress["phase"] in ("features", "downloading"):
            shot(page, f"job-phase-{progress['phase']}")
    assert not page.errors
