"""The compare view tells runs apart and draws loss beside accuracy, at 1400 and at 800 px: a clone with one changed
option is another shade and marker of its model's colour in both charts, in Fig. 2, in both tables and in the report;
the paper's curves stay dashed in the model's own colour; training curves on request; the per-epoch CSV is linked
beside the summary CSV. The runs' epochs come through the real ingestion path, written into the lab's database from
here (no worker: nothing trains). Screenshots in tests/artifacts."""
import csv

import pytest

from backend.app.ingest import handle_event

from . import test_jobs_list
from .conftest import ARTIFACTS, shot
from .test_jobs_list import no_horizontal_overflow, post
from .test_seeds import TINY, seeded  # noqa: F401 (a fixture: a lab without a worker, its database writable here)

narrow = test_jobs_list.narrow  # the 800 px page fixture, shared

pytestmark = pytest.mark.browser


@pytest.fixture
def wide(browser, request):
    """A page 1400 px wide. Its last state is saved as <test name>-1400.png."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = ctx.new_page()
    pg.errors = []
    pg.on("pageerror", lambda e: pg.errors.append(str(e)))
    yield pg
    shot(pg, f"{request.node.name}-1400")
    ctx.close()


def _run(job_id, rows, keras=None):
    """A job through the real ingestion path: started, one epoch per (val_acc, val_loss, train_acc, train_loss);
    `keras`: the loss Keras prints per epoch, as a head_l2 run records it."""
    handle_event({"type": "started", "job_id": job_id, "attempt": 1, "ts": 0, "worker": "w", "device": "cpu"})
    for epoch, (acc, loss, tacc, tloss) in enumerate(rows, 1):
        handle_event({"type": "epoch", "job_id": job_id, "attempt": 1, "ts": 0, "row": {
            "epoch": epoch, "train_loss": tloss, "train_acc": tacc, "val_loss": loss, "val_acc": acc, "lr": 1e-4,
            "seconds": 2.0, "images_per_s": 100.0, "per_class_acc": [acc] * 10, "confusion": [[0] * 10] * 10,
            **({"keras_val_loss": keras[epoch - 1]} if keras else {})}})
    handle_event({"type": "finished", "job_id": job_id, "attempt": 1, "ts": 0, "status": "succeeded"})


def _lab(lab):
    """An original, its clone with one changed option (the learning rate), and a run of another model."""
    made = {}
    for name, cfg, rows, keras in [
            ("original", TINY, [(0.90, 0.40, 0.80, 0.60), (0.93, 0.30, 0.90, 0.35)], None),
            ("clone lr", {**TINY, "lr": 1e-3}, [(0.88, 0.50, 0.78, 0.70), (0.91, 0.45, 0.86, 0.50)], None),
            ("deit", {**TINY, "model": "deit_tiny_patch16_224", "head_l2": 0.01},
             [(0.60, 1.20, 0.50, 1.40), (0.70, 0.90, 0.65, 1.0)], [3.2, 2.5]),
            ("not compared", TINY, [(0.5, 1.0, 0.5, 1.0)], None)]:
        made[name] = post(lab, "/api/experiments", name=name, config=cfg)["jobs"][0]["id"]
        _run(made[name], rows, keras)
    return made


def _traces(page, plot):
    return page.evaluate("""(id) => document.getElementById(id).data.map(t => ({name: t.name, meta: t.meta || null,
        colour: t.line && t.line.color, dash: (t.line && t.line.dash) || 'solid', symbol: t.marker && t.marker.symbol,
        mode: t.mode, y: t.y, visible: t.visible}))""", plot)


def _drawn(page, plot):
    page.wait_for_function("(id) => { const g = document.getElementById(id); return g && g.data && "
                           "g.data.some(t => t.meta === 'run' && t.y.length === 2) }", arg=plot)


def _check(page, lab, made):
    ids = ",".join(str(made[k]) for k in ("original", "clone lr", "deit"))
    page.goto(lab.url + f"/#/compare?jobs={ids}")
    for plot in ("plot-compare", "plot-compare-loss"):
        _drawn(page, plot)
    looks = {int(k): v for k, v in lab.client.get(f"/api/compare/stats?jobs={ids}").json()["looks"].items()}
    colours = {m["id"]: m["colour"] for m in lab.client.get("/api/models").json()}
    a, b, d = made["original"], made["clone lr"], made["deit"]
    assert looks[a]["model_colour"] == looks[b]["model_colour"] == colours["densenet201"]  # related: one model
    assert (looks[a]["colour"], looks[a]["symbol"]) != (looks[b]["colour"], looks[b]["symbol"])

    for plot, metric, values in [("plot-compare", "acc", {a: [0.90, 0.93], b: [0.88, 0.91]}),
                                 ("plot-compare-loss", "loss", {a: [0.40, 0.30], b: [0.50, 0.45]})]:
        traces = _traces(page, plot)
        runs = {t["name"]: t for t in traces if t["meta"] == "run"}
        for jid, name in [(a, "original"), (b, "clone lr"), (d, "deit")]:
            t = runs[f"{name} (job {jid})"]
            assert (t["colour"], t["symbol"], t["dash"]) == (looks[jid]["colour"], looks[jid]["symbol"], "solid")
        assert runs[f"original (job {a})"]["y"] == values[a] and runs[f"clone lr (job {b})"]["y"] == values[b]
        paper = [t for t in traces if t["name"].startswith("paper: DenseNet201")]
        assert paper and all(t["dash"] == "dash" and t["colour"] == colours["densenet201"] and t["mode"] == "lines"
                             for t in paper), paper  # the paper's curve: dashed, no markers, the model's colour
        if metric == "loss":
            assert "Keras val_loss" in paper[0]["name"]  # the authors' loss has the L2 penalty in it: said
            keras = [t for t in traces if t["meta"] == "keras"]  # a head_l2 run's own Keras loss, to read it against
            assert [(t["name"], t["y"], t["colour"], t["dash"]) for t in keras] == [
                (f"deit (job {d}) (Keras val_loss, L2 penalty included)", [3.2, 2.5], looks[d]["colour"], "dot")]
        assert not [t for t in traces if t["meta"] == "train"]  # training curves only on request

    fig2 = page.evaluate("document.getElementById('plot-fig2').data.filter(t => t.name === 'your runs')[0]")
    by_text = dict(zip(fig2["text"], zip(fig2["marker"]["color"], fig2["marker"]["symbol"])))
    assert by_text[f"clone lr (job {b})"] == (looks[b]["colour"], looks[b]["symbol"])
    assert by_text[f"original (job {a})"] == (looks[a]["colour"], looks[a]["symbol"])

    swatch = "el => [el.dataset.colour, el.dataset.symbol]"
    for jid in (a, b, d):
        assert page.eval_on_selector(f"#compare-table tr[data-job='{jid}'] .look", swatch) == [
            looks[jid]["colour"], looks[jid]["symbol"]]
    page.wait_for_selector(f"#run-table tr[data-job='{a}'] .look")  # the picker shows the compared runs' looks
    for jid in (a, b):
        assert page.eval_on_selector(f"#run-table tr[data-job='{jid}'] .look", swatch) == [
            looks[jid]["colour"], looks[jid]["symbol"]]
    extra = made["not compared"]  # a run not compared: its own look too, never a plain square like a ■ marker
    own = lab.client.get(f"/api/jobs/{extra}").json()["look"]
    assert page.eval_on_selector(f"#run-table tr[data-job='{extra}'] .look", swatch) == [own["colour"], own["symbol"]]
    assert not page.query_selector_all("#run-table .swatch")
    seed_swatches = page.eval_on_selector_all("#seeds-table tr[data-group-key] .look", f"els => els.map({swatch})")
    for jid in (a, b):  # each config's row of seeds in its first run's look
        assert [looks[jid]["colour"], looks[jid]["symbol"]] in seed_swatches
    report = lab.client.get(f"/api/report.html?jobs={ids}").text  # the report's table of runs: the same looks
    for jid in (a, b, d):
        assert f'title="{looks[jid]["colour"]} {looks[jid]["symbol"]}"' in report

    assert page.get_attribute("#download-epochs-csv", "href") == f"/api/epochs.csv?jobs={ids}"
    assert page.get_attribute("#download-csv", "href") == f"/api/compare.csv?jobs={ids}"
    return looks


def test_a_clone_draws_apart_and_loss_sits_beside_accuracy_at_1400(seeded, wide):  # noqa: F811
    made = _lab(seeded)
    looks = _check(wide, seeded, made)
    acc = wide.eval_on_selector("#plot-compare", "e => e.getBoundingClientRect().toJSON()")
    loss = wide.eval_on_selector("#plot-compare-loss", "e => e.getBoundingClientRect().toJSON()")
    assert loss["left"] >= acc["right"] and abs(loss["top"] - acc["top"]) < 2  # side by side where there is room
    shot(wide, "compare-looks-and-loss-1400")

    wide.check("#show-train")
    wide.wait_for_function("() => document.getElementById('plot-compare-loss').data.some(t => t.meta === 'train')")
    for plot, ys in [("plot-compare", [0.80, 0.90]), ("plot-compare-loss", [0.60, 0.35])]:
        train = {t["name"]: t for t in _traces(wide, plot) if t["meta"] == "train"}
        t = train[f"original (job {made['original']}) (training)"]
        assert t["y"] == ys and t["dash"] == "dashdot" and t["colour"] == looks[made["original"]]["colour"]
    paper_train = [t for t in _traces(wide, "plot-compare") if t["name"] == "paper: DenseNet201 (training)"]
    assert paper_train and paper_train[0]["dash"] == "dashdot"  # the authors' log has training accuracy
    wide.locator("#results .curve-pair").screenshot(path=str(ARTIFACTS / "compare-training-curves-1400.png"))

    with wide.expect_download() as dl:
        wide.click("#download-epochs-csv")
    with open(dl.value.path()) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6 and rows[0]["epoch_time_s"] == "2.0" and rows[0]["dry_run"] == "false"
    assert no_horizontal_overflow(wide) and not wide.errors


def test_a_clone_draws_apart_and_loss_sits_beside_accuracy_at_800(seeded, narrow):  # noqa: F811
    made = _lab(seeded)
    _check(narrow, seeded, made)
    acc = narrow.eval_on_selector("#plot-compare", "e => e.getBoundingClientRect().toJSON()")
    loss = narrow.eval_on_selector("#plot-compare-loss", "e => e.getBoundingClientRect().toJSON()")
    assert loss["top"] >= acc["bottom"]  # one above the other where there is no room
    shot(narrow, "compare-looks-and-loss-800")
    assert no_horizontal_overflow(narrow) and not narrow.errors


def test_beyond_six_runs_each_model_has_its_charts_and_its_runs_their_shades(seeded, narrow):  # noqa: F811
    """Seven runs of two models: one small chart per model for accuracy and for loss; in each, the runs of the
    model are its colour's shades with their own markers, the paper's curve the colour itself."""
    ids = []
    for i in range(7):
        cfg = {**TINY, "lr": 1e-4 * (i + 1)} if i < 4 else {**TINY, "model": "deit_tiny_patch16_224", "seed": i}
        ids.append(post(seeded, "/api/experiments", name=f"run {i}", config=cfg)["jobs"][0]["id"])
        _run(ids[-1], [(0.5 + i / 20, 1.5 - i / 10, 0.4, 1.6), (0.6 + i / 20, 1.2 - i / 10, 0.5, 1.3)])
    narrow.goto(seeded.url + f"/#/compare?jobs={','.join(map(str, ids))}")
    stats = seeded.client.get(f"/api/compare/stats?jobs={','.join(map(str, ids))}").json()
    looks = {int(k): v for k, v in stats["looks"].items()}
    colours = {m["id"]: m["colour"] for m in seeded.client.get("/api/models").json()}
    for grid, title in [("multiples", "Validation accuracy"), ("multiples-loss", "Validation loss")]:
        narrow.wait_for_function(
            "(g) => [...document.querySelectorAll(`#${g} .plot`)].filter(p => p.data).length === 2", arg=grid)
        assert narrow.evaluate("(g) => document.getElementById(g).parentElement.querySelector('.multiples-title')"
                               ".textContent", grid) == title
        drawn = narrow.evaluate("""(g) => [...document.querySelectorAll(`#${g} .plot`)].map(p => ({
            model: p.parentElement.dataset.model,
            runs: p.data.filter(t => t.meta === 'run').map(t => [t.line.color, t.marker.symbol]),
            paper: p.data.filter(t => t.name.startsWith('paper')).map(t => t.line.color)}))""", grid)
        by = {d["model"]: d for d in drawn}
        dense = by["densenet201"]
        assert sorted(dense["runs"]) == sorted([looks[i]["colour"], looks[i]["symbol"]] for i in ids[:4])
        assert len({tuple(r) for r in dense["runs"]}) == 4 and len({c for c, _ in dense["runs"]}) == 4
        assert set(dense["paper"]) == {colours["densenet201"]}
        assert len({tuple(r) for r in by["deit_tiny_patch16_224"]["runs"]}) == 3
    shot(narrow, "compare-multiples-looks-800")
    assert no_horizontal_overflow(narrow) and not narrow.errors


def _set_status(lab, jid, status):
    from backend.app.db import session_scope
    from backend.app.models import Job
    with session_scope() as db:
        db.get(Job, jid).status = status
        db.commit()


@pytest.mark.parametrize("width", [1400, 800])
def test_both_reports_mark_an_unfinished_run_and_show_each_runs_look(seeded, browser, width):  # noqa: F811
    """The HTML report as a browser shows it, and the Markdown report as a renderer that passes raw HTML shows it:
    the failed run is marked and counted nowhere, each run's swatch is its look, a hostile name is text."""
    from markdown_it import MarkdownIt
    made = _lab(seeded)
    hostile = post(seeded, "/api/experiments", name="<img src=x onerror=alert(1)>",
                   config={**TINY, "epochs": 3})["jobs"][0]["id"]
    _run(hostile, [(0.677, 0.9, 0.5, 1.0)])
    _set_status(seeded, hostile, "failed")  # stays so: a running job without a worker would be requeued
    ids = ",".join(map(str, [*made.values(), hostile]))
    looks = {int(k): v for k, v in seeded.client.get(f"/api/compare/stats?jobs={ids}").json()["looks"].items()}
    ctx = browser.new_context(viewport={"width": width, "height": 1000})
    page = ctx.new_page()
    alerts = []
    page.on("dialog", lambda d: (alerts.append(d.message), d.dismiss()))
    page.set_content(seeded.client.get(f"/api/report.html?jobs={ids}").text, wait_until="load")
    page.wait_for_function("() => document.querySelector('#fig-curves .main-svg')")
    row = page.locator("table.runs tr.status-failed")
    assert "failed, 1 of 3 epochs: not a result" in row.text_content()
    assert "67.70% (unfinished: not a result)" in row.text_content()
    colours = page.eval_on_selector_all("table.runs .look", "els => els.map(e => getComputedStyle(e).color)")
    want = [looks[i]["colour"] for i in [*made.values(), hostile]]
    assert colours == [f"rgb({int(c[1:3], 16)}, {int(c[3:5], 16)}, {int(c[5:7], 16)})" for c in want]
    assert page.locator("img").count() == 0
    shot(page, f"report-html-unfinished-{width}")
    md = seeded.client.get(f"/api/report.md?jobs={ids}").text
    page.set_content("<!doctype html><meta charset=utf-8><body style='font:14px sans-serif'>"
                     + MarkdownIt("commonmark", {"html": True}).enable("table").render(md))
    assert page.locator("img").count() == 0 and not alerts
    assert "<img src=x onerror=alert(1)>" in page.text_content("body")  # the name, as text
    assert f"#{hostile} (failed: unfinished, not counted)" in page.text_content("body")
    shot(page, f"report-md-rendered-{width}")
    ctx.close()
