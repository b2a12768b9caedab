"""A depth sweep in the browser: one model at several depths submitted from the new-job form as one group (one
experiment per depth), then the depth view's chart of best validation accuracy against depth, with time per epoch,
trainable parameters and the paper's result at depth 1 marked. Screenshots in tests/artifacts."""
import pytest

from core import catalogue

from .conftest import shot

pytestmark = pytest.mark.browser
MODEL = "deit_base_distilled_patch16_224"  # a paper model: Table 1 has its number at depth 1
SMALL = {"epochs": "1", "batch_size": "16"}
ADVANCED = {"train_per_class": "2", "val_limit": "20", "image_size": "32"}
RESULTS = {0: (0.70, 1.5, 7_690), 1: (0.90, 3.0, 7_100_000), 2: (0.92, 5.0, 14_200_000)}  # acc, s/epoch, params


def _finish(lab, jid, acc, seconds, params):
    """As a worker's reports would leave the job: succeeded, two epochs, its info before epoch 1."""
    from sqlalchemy.orm import Session

    from backend.app.db import make_engine
    from backend.app.models import EpochMetric, Job
    from core.protocol import JobStatus
    engine = make_engine(f"sqlite:///{lab.tmp / 'home' / 'blocklab.db'}")
    with Session(engine) as db:
        job = db.get(Job, jid)
        job.status, job.info = JobStatus.SUCCEEDED, {"device": "cpu", "precision": "fp32", "trainable_params": params}
        for e, a in ((1, acc - 0.1), (2, acc)):
            db.add(EpochMetric(job_id=jid, epoch=e, val_acc=a, val_loss=1 - a, train_loss=1.0, train_acc=a,
                               seconds=seconds))
        db.commit()
    engine.dispose()


def test_a_depth_sweep_is_one_group_and_its_chart_marks_the_papers_depth_1(make_lab, page, tmp_path):
    lab = make_lab()  # no worker: the sweep's jobs queue, then this test reports their results
    page.goto(lab.url + "/#/new")
    page.wait_for_selector("#method-card .method-card-body")
    page.fill("#f-name", "depth")
    page.select_option("#f-model", MODEL)
    for k, v in SMALL.items():
        page.fill(f"#f-{k}", v)
    page.click("#advanced summary")
    for k, v in ADVANCED.items():
        page.fill(f"#f-{k}", v)
    page.select_option("#f-weights", "none")

    for bad, said in (("1, 1", "at least two different depths"), ("0, 1, x", "is not a depth")):
        page.fill("#sweep-depths", bad)  # nothing is queued for a bad list
        page.click("#sweep-submit")
        page.wait_for_selector(f"#sweep-error:has-text('{said}')")
    assert lab.client.get("/api/experiments").json() == []

    page.fill("#sweep-depths", "0, 1, 2")
    page.fill("#sweep-group", "deit depth")
    page.click("#sweep-submit")
    page.wait_for_url("**/#/depth/deit%20depth")
    exps = lab.client.get("/api/experiments").json()
    assert len(exps) == 3 and {e["group"] for e in exps} == {"deit depth"}
    by_depth = {e["config"]["trainable_blocks"]: e for e in exps}
    assert sorted(by_depth) == [0, 1, 2]
    assert all(e["config"]["model"] == MODEL and e["config"]["epochs"] == 1 for e in exps)  # the form's values
    page.wait_for_selector("#depth-status:has-text('still queued or running')")
    assert page.is_visible("#plot-depth-wait")  # no epoch yet: a message, no empty axes

    for k, (acc, s, params) in RESULTS.items():
        _finish(lab, by_depth[k]["jobs"][0]["id"], acc, s, params)
    page.wait_for_selector("#depth-status:has-text('all ended')")  # the page follows the runs
    page.wait_for_selector("#plot-depth .scatterlayer .trace")
    traces = page.evaluate("""() => document.getElementById('plot-depth').data.map(t => ({
        name: t.name, x: t.x, y: t.y, type: t.type || 'scatter', meta: t.meta || null }))""")
    acc = next(t for t in traces if t["name"].endswith("best val acc"))
    assert acc["x"] == ["0", "1", "2"] and acc["y"] == [0.70, 0.90, 0.92]
    assert next(t for t in traces if t["type"] == "bar")["y"] == [1.5, 3.0, 5.0]
    assert next(t for t in traces if t["name"].endswith("trainable params"))["y"] == [7_690, 7_100_000, 14_200_000]
    paper = next(t for t in traces if t["meta"] == "paper")
    assert paper["x"] == ["1"] and paper["y"] == [catalogue.paper_row(catalogue.get(MODEL))["val_acc"]]
    assert page.locator("#plot-depth .textpoint").count() >= 1  # the star's label is drawn
    assert page.locator("#depth-table tbody tr").count() == 3
    href = page.get_attribute("#depth-report-html", "href")
    assert href == "/api/report.html?group=deit%20depth"
    r = lab.client.get(href)
    assert r.status_code == 200 and 'id="fig-depth"' in r.text  # the report of a sweep has its depth chart
    shot(page, "depth-sweep-chart")
    assert not page.errors
    _the_report_draws_offline(page, r.text, tmp_path)


def _the_report_draws_offline(page, text, tmp_path):
    """The downloaded HTML opened from disk with every network request refused: both figures are drawn."""
    asked = []
    page.route("**/*", lambda route: (asked.append(route.request.url), route.abort())
               if not route.request.url.startswith("file:") else route.continue_())
    path = tmp_path / "report.html"
    path.write_text(text)
    page.goto(path.as_uri())
    page.wait_for_selector("#fig-depth .scatterlayer .trace")
    page.wait_for_selector("#fig-curves .scatterlayer .trace")
    assert page.evaluate("() => document.getElementById('fig-depth').data.some(t => t.x.length === 1 && "
                         "t.marker && t.marker.symbol === 'star')")
    shot(page, "depth-sweep-report")
    assert asked == [] and not page.errors
