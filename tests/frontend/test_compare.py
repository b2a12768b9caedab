"""The compare view in the browser at 800 px: a run picker with filters, sort, archive and delete; live statuses and
curves; one colour per model with its paper curve dashed in it; legends below the axes; small multiples beyond six
runs; Fig. 2 labelled by model name without overlaps; dry runs and deviations from the paper preset said beside
Table 1. Screenshots in tests/artifacts."""
import pytest

from tests.lab import SLOW, Lab

from . import test_jobs_list
from .conftest import ARTIFACTS, shot
from .test_jobs_list import no_horizontal_overflow, post

narrow = test_jobs_list.narrow  # the 800 px page fixture, shared

pytestmark = pytest.mark.browser
POLL_ACTIVE_S = 2  # compare.js POLL_ACTIVE_MS
TINY = {"weights": "none", "image_size": 32, "train_per_class": 5, "val_limit": 40, "batch_size": 32, "epochs": 2}


@pytest.fixture(scope="module")
def compare_lab(tmp_path_factory):
    """A lab with a worker and data enough for a dry run (core DRY_RUN takes 50 training images per class)."""
    from worker.engine import data

    root = tmp_path_factory.mktemp("cifar-50-per-class")
    train, val = data.generated(500, 60, seed=2)
    data.write_cifar_batches(root, train, val, batches=2)
    lab = Lab(tmp_path_factory.mktemp("compare-lab"), root, redis=False)
    lab.start_backend()
    lab.new_worker()
    yield lab
    lab.close()


def rows(page, sel="#run-table tbody tr[data-job]") -> list[str]:
    return page.eval_on_selector_all(sel, "els => els.map(e => e.querySelector('.name').textContent)")


def boxes(page, plot: str) -> dict:
    """Screen boxes of a Plotly chart's parts (null when absent)."""
    return page.evaluate("""(id) => { const gd = document.getElementById(id);
      const r = (s) => { const e = gd.querySelector(s); return e ? e.getBoundingClientRect().toJSON() : null };
      return { title: r('.gtitle'), modebar: r('.modebar'), legend: r('.legend'), xtitle: r('.xtitle'),
               plot: r('.nsewdrag') } }""", plot)


def apart(a, b) -> bool:
    return a["right"] <= b["left"] or b["right"] <= a["left"] or a["bottom"] <= b["top"] or b["bottom"] <= a["top"]


def test_the_picker_filters_sorts_archives_and_deletes(make_lab, narrow):
    lab = make_lab()  # no worker: the jobs stay queued, or are cancelled
    made = {}
    for name, model, group in [("alpha", "deit_tiny_patch16_224", "g1"), ("beta", "densenet201", "g1"),
                               ("gamma", "resnet152", None), ("delta", "deit_tiny_patch16_224", "g2")]:
        e = post(lab, "/api/experiments", name=name, group=group, config={"model": model, "epochs": 1})
        made[name] = (e["id"], e["jobs"][0]["id"])
    post(lab, f"/api/jobs/{made['delta'][1]}/cancel")
    narrow.goto(lab.url + "/#/compare")
    narrow.wait_for_selector("#run-table tbody tr[data-job] >> nth=3")
    assert rows(narrow) == ["delta", "gamma", "beta", "alpha"]  # newest first
    assert narrow.is_visible("#pick-hint") and not narrow.is_visible("#plot-fig2")  # nothing picked: no empty axes

    narrow.select_option("#filter-model", "deit_tiny_patch16_224")
    assert rows(narrow) == ["delta", "alpha"]
    narrow.select_option("#filter-group", "g1")
    assert rows(narrow) == ["alpha"]
    narrow.select_option("#filter-model", "")
    assert rows(narrow) == ["beta", "alpha"]
    shot(narrow, "compare-picker-filtered")
    narrow.select_option("#filter-group", "")
    narrow.select_option("#filter-status", "cancelled")
    assert rows(narrow) == ["delta"]
    narrow.select_option("#filter-status", "")
    narrow.fill("#filter-text", "DenseNet")  # the paper's name of the model matches too
    assert rows(narrow) == ["beta"]
    narrow.fill("#filter-text", "")
    narrow.click("#run-table th[data-sort='name']")
    assert rows(narrow) == ["alpha", "beta", "delta", "gamma"]
    narrow.click("#run-table th[data-sort='name']")
    assert rows(narrow) == ["gamma", "delta", "beta", "alpha"]
    assert narrow.get_attribute("#run-table th[data-sort='name']", "aria-sort") == "descending"

    delta = f"#run-table tr[data-job='{made['delta'][1]}']"
    narrow.click(f"{delta} button.archive")
    narrow.wait_for_selector(delta, state="detached")
    assert lab.client.get(f"/api/experiments/{made['delta'][0]}").json()["archived"] is True  # hidden, kept
    narrow.check("#show-archived")
    narrow.wait_for_selector(f"{delta} .badge.archived")
    shot(narrow, "compare-picker-archived-shown")

    alpha = f"#run-table tr[data-job='{made['alpha'][1]}']"
    narrow.click(f"{alpha} button.delete")
    narrow.wait_for_selector(f"{alpha} button.delete.armed")  # asks once more, on the button itself
    narrow.click(f"{alpha} button.delete")
    refusal = narrow.wait_for_selector(f"#run-table tr[data-job-error='{made['alpha'][1]}'] .error-text")
    assert "is queued: cancel it first" in refusal.text_content()  # the server's reason, on the row
    assert lab.client.get(f"/api/experiments/{made['alpha'][0]}").status_code == 200
    shot(narrow, "compare-picker-delete-refused")

    narrow.click(f"{delta} button.delete")
    narrow.click(f"{delta} button.delete.armed")
    narrow.wait_for_selector(delta, state="detached")
    assert lab.client.get(f"/api/experiments/{made['delta'][0]}").status_code == 404
    assert no_horizontal_overflow(narrow) and not narrow.errors


def test_the_compare_view_follows_runs_live(compare_lab, narrow):
    blocker = compare_lab.submit("blocker", **SLOW, epochs=50)  # holds the worker: the compared runs wait in the queue
    compare_lab.wait_status(blocker, "running", timeout=120)
    dry = post(compare_lab, "/api/experiments", name="dry deit", dry_run=True,
               config={"model": "deit_tiny_patch16_224", "weights": "none", "batch_size": 32})["jobs"][0]["id"]
    dense = post(compare_lab, "/api/experiments", name="small densenet",
                 config={"model": "densenet201", **TINY})["jobs"][0]["id"]
    narrow.goto(compare_lab.url + f"/#/compare?jobs={dry},{dense}")
    wait = narrow.wait_for_selector("#plot-compare-wait:visible")
    assert "Waiting for the first epoch" in wait.text_content() and "queued · position" in wait.text_content()
    assert not narrow.is_visible("#plot-compare")  # a message, not empty axes
    narrow.evaluate("window.__no_reload = true")
    shot(narrow, "compare-waiting-for-first-epoch")

    post(compare_lab, f"/api/jobs/{blocker}/cancel")
    for j in (dry, dense):
        narrow.wait_for_selector(f"#compare-table tr[data-job='{j}'] .status-succeeded", timeout=240_000)
    narrow.wait_for_function("() => { const g = document.getElementById('plot-compare'); return g && g.data && "
                             "g.data.filter(t => t.name.includes('(job ')).every(t => t.x.length === 2) }",
                             timeout=4 * POLL_ACTIVE_S * 1000)
    assert narrow.evaluate("window.__no_reload === true")  # statuses and curves came in live

    traces = narrow.evaluate("document.getElementById('plot-compare').data.map(t => "
                             "({name: t.name, colour: t.line.color, dash: t.line.dash || 'solid'}))")
    by = {t["name"]: t for t in traces}
    dense_run = next(t for n, t in by.items() if n.startswith("small densenet"))
    paper = by["paper: DenseNet201"]
    assert paper["dash"] == "dash" and paper["colour"] == dense_run["colour"]  # the paper line in its model's colour
    dry_run = next(t for n, t in by.items() if n.startswith("[dry run] dry deit"))  # marked in the legend
    assert dry_run["colour"] != dense_run["colour"]
    b = boxes(narrow, "plot-compare")
    assert b["legend"]["top"] >= b["xtitle"]["bottom"]  # the legend sits below the axis title
    assert apart(b["title"], b["modebar"])  # the mode bar covers no title
    shot(narrow, "compare-live-done")

    dry_row = f"#compare-table tr[data-job='{dry}']"
    assert narrow.is_visible(f"{dry_row} .badge.dry") and "dry run: not comparable" in narrow.text_content(dry_row)
    assert "not the paper preset" in narrow.text_content(f"#compare-table tr[data-job='{dense}'] td.diff")
    note = narrow.text_content(f"#compare-table tr[data-job-note='{dense}']")  # under the run, across the table
    assert "Leaves the paper preset" in note and "Epochs 2 (paper 20)" in note and "Weights none (paper hub)" in note
    assert "not a paper run" in narrow.text_content(f"#compare-table tr[data-job-note='{dry}']")

    labels = narrow.evaluate("""() => [...document.querySelectorAll('#plot-fig2 .annotation')].map(a => {
        const r = a.querySelector('.annotation-text-g').getBoundingClientRect().toJSON();
        return {...r, text: a.textContent} })""")
    assert len(labels) == 10 and {"DenseNet201", "DeiT-B distilled", "ResNet152V2"} <= {x["text"] for x in labels}
    for i, a in enumerate(labels):
        for c in labels[i + 1:]:
            assert apart(a, c), f"labels overlap: {a['text']} and {c['text']}"
    fig2 = narrow.evaluate("document.getElementById('plot-fig2').data.map(t => ({name: t.name, mode: t.mode, "
                           "text: t.text}))")
    runs = {t["name"]: t for t in fig2}
    assert runs["your runs"]["mode"] == "markers" and runs["your runs"]["text"] == [f"small densenet (job {dense})"]
    assert runs["your dry runs"]["text"] == [f"[dry run] dry deit (job {dry})"]
    f = boxes(narrow, "plot-fig2")
    assert apart(f["title"], f["modebar"]) and f["legend"]["top"] >= f["xtitle"]["bottom"]
    narrow.locator("#plot-fig2").screenshot(path=str(ARTIFACTS / "compare-fig2-labels.png"))
    assert no_horizontal_overflow(narrow) and not narrow.errors


def test_beyond_six_runs_one_small_chart_per_model(compare_lab, narrow):
    done = [j["id"] for j in compare_lab.client.get("/api/jobs").json() if j["status"] == "succeeded"]
    assert len(done) >= 2, "runs after test_the_compare_view_follows_runs_live"
    blocker = compare_lab.submit("blocker 2", **SLOW, epochs=50)
    compare_lab.wait_status(blocker, "running", timeout=120)
    others = []
    for model in ("resnet152", "vgg19", "cait_s24_224", "coat_lite_small", "deit_small_patch16_224"):
        jid = post(compare_lab, "/api/experiments", name=f"queued {model}", config={"model": model, **TINY})["jobs"][0]["id"]
        others.append(jid)
    ids = done + others
    narrow.goto(compare_lab.url + f"/#/compare?jobs={','.join(map(str, ids))}")
    narrow.wait_for_selector("#multiples .chart >> nth=6")
    assert narrow.locator("#plot-compare").count() == 0  # no single crowded chart
    shown = narrow.eval_on_selector_all("#multiples .chart", "els => els.map(e => e.dataset.model)")
    assert len(shown) == len(set(shown)) == 7
    drawn = narrow.evaluate("""() => [...document.querySelectorAll('#multiples .plot')].filter(p => !p.hidden)
        .map(p => ({model: p.parentElement.dataset.model, title: p.layout.title.font.color,
                    colours: [...new Set(p.data.map(t => t.line.color))]}))""")
    assert {d["model"] for d in drawn} >= {"densenet201", "deit_tiny_patch16_224"}
    from core.palette import run_shade
    for d in drawn:  # one colour per model: its paper lines and title in it, its runs in its shades (core.palette)
        shades = {d["title"].lower()} | {run_shade(d["title"], k).lower() for k in range(12)}
        assert {c.lower() for c in d["colours"]} <= shades, d
    assert "queued · position" in narrow.text_content("#multiples .chart[data-model='vgg19'] .plot-wait")
    shot(narrow, "compare-small-multiples")
    assert no_horizontal_overflow(narrow) and not narrow.errors
    post(compare_lab, f"/api/jobs/{blocker}/cancel")
    for j in others:
        post(compare_lab, f"/api/jobs/{j}/cancel")


def test_leaving_the_compare_view_stops_its_requests(make_lab, narrow):
    lab = make_lab()
    jid = post(lab, "/api/experiments", name="queued", config={"epochs": 1})["jobs"][0]["id"]
    narrow.goto(lab.url + f"/#/compare?jobs={jid}")
    narrow.wait_for_selector("#plot-compare-wait:visible")
    with narrow.expect_request(lambda r: "/api/experiments" in r.url, timeout=3 * POLL_ACTIVE_S * 1000):
        pass  # it polls while the run is queued
    seen = []
    narrow.on("request", lambda r: seen.append(r.url) if "/api/experiments" in r.url or "/metrics" in r.url else None)
    narrow.click("#nav-new")
    narrow.wait_for_selector("#job-form")
    seen.clear()
    narrow.wait_for_timeout(3 * POLL_ACTIVE_S * 1000)  # an absence is only seen by waiting past the poll period
    assert seen == [] and not narrow.errors
