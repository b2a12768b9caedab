"""Seeds and confidence in the browser at 800 px: "Repeat…" in the job list and in the compare view queues the
missing repeats with the N the user types; the compare view shows one row per repeat group with n, mean ± sd, the
95% Student's t interval and the paper's number inside or outside it ("no paper number" for CIFAR-100), and draws
the group's mean curve with a band. The runs' metrics come through the real ingestion path, written into the lab's
database from here (no worker: nothing trains). Screenshots in tests/artifacts."""
import pytest

from tests.backend.conftest import reset_caches
from tests.backend.test_compare_stats import finish

from . import test_jobs_list
from .conftest import shot
from .test_jobs_list import no_horizontal_overflow, post

narrow = test_jobs_list.narrow  # the 800 px page fixture, shared

pytestmark = pytest.mark.browser
TINY = {"model": "densenet201", "weights": "none", "image_size": 32, "train_per_class": 5, "val_limit": 40,
        "batch_size": 32, "epochs": 2}


@pytest.fixture
def seeded(make_lab, monkeypatch):
    """A lab without a worker, and `finish(job, accs)` writing a job's epochs into its database."""
    lab = make_lab()
    monkeypatch.setenv("BLOCKLAB_HOME", lab.env["BLOCKLAB_HOME"])
    reset_caches()
    yield lab
    reset_caches()


def _repeated(lab, name, config, curves):
    e = post(lab, "/api/experiments", name=name, config=config)
    made = post(lab, f"/api/experiments/{e['id']}/repeat", seeds=len(curves))["created"] if len(curves) > 1 else []
    ids = [e["jobs"][0]["id"], *(m["jobs"][0]["id"] for m in made)]
    for jid, curve in zip(ids, curves):
        finish(jid, curve)
    return ids


def test_a_repeat_group_shows_its_interval_and_its_band(seeded, narrow):
    inside = _repeated(seeded, "dense", TINY, [[0.90, 0.95], [0.93, 0.94], [0.96, 0.92]])  # Table 1: 94.757%
    outside = _repeated(seeded, "dense lr", {**TINY, "lr": 1e-3}, [[0.80, 0.800], [0.79, 0.801]])
    c100 = _repeated(seeded, "dense c100", {**TINY, "dataset": "cifar100"}, [[0.60, 0.70], [0.62, 0.72]])
    alone = _repeated(seeded, "alone", {**TINY, "lr": 3e-4}, [[0.5, 0.6]])
    ids = [*inside, *outside, *c100, *alone]
    narrow.goto(seeded.url + f"/#/compare?jobs={','.join(map(str, ids))}")
    narrow.wait_for_selector("#seeds-table tbody tr[data-group-key] >> nth=3")
    rows = narrow.eval_on_selector_all("#seeds-table tbody tr[data-group-key]", """els => els.map(e => ({
        name: e.querySelector('.name').textContent, n: e.querySelector('.n').textContent,
        mean: e.querySelector('.mean-sd').textContent, ci: e.querySelector('.ci').textContent,
        verdict: e.querySelector('.verdict').textContent}))""")
    by = {r["name"]: r for r in rows}
    assert list(by) == ["dense", "dense lr", "dense c100", "alone"]
    # bests 95, 94, 96: mean 95.00%, sd 1 point, t(2) = 4.3027: 95 ± 2.48
    assert by["dense"] == {"name": "dense", "n": "3", "mean": "95.00% ± 1.00 pts", "ci": "92.52% – 97.48%",
                           "verdict": "inside"}
    assert by["dense lr"]["n"] == "2" and by["dense lr"]["verdict"] == "outside"
    assert by["dense c100"]["verdict"] == "no paper number"
    assert by["alone"]["n"] == "1" and by["alone"]["ci"] == "–" and "no interval" in by["alone"]["verdict"]
    key = narrow.get_attribute("#seeds-table tbody tr[data-group-key] >> nth=0", "data-group-key")
    note = narrow.text_content(f"#seeds-table tr[data-group-note='{key}']")  # not the paper's method: said how
    assert "Leaves the paper preset" in note and "Weights none (paper hub)" in note and "Seed" not in note
    assert "min–max" in narrow.text_content("#seeds-hint")
    assert narrow.text_content(f"#seeds-table tr[data-group-key='{key}'] td.runs").startswith(
        f"#{inside[0]}, #{inside[1]}, #{inside[2]}seeds 0, 1, 2")
    assert narrow.text_content(f"#compare-table tr[data-job='{c100[0]}'] td.paper") == "no paper number"
    assert "no paper number" in narrow.text_content("#seeds-table tbody tr[data-group-key] >> nth=2")
    assert narrow.text_content(f"#compare-table tr[data-job='{c100[0]}'] td.diff").startswith("–")

    narrow.wait_for_function("() => { const g = document.getElementById('plot-compare'); return g && g.data && "
                             "g.data.some(t => t.meta === 'band') }")
    traces = narrow.evaluate("document.getElementById('plot-compare').data.map(t => ({name: t.name, meta: t.meta || "
                             "null, fill: t.fill || null, y: t.y, visible: t.visible, colour: t.line.color}))")
    bands = [t for t in traces if t["meta"] == "band"]
    means = {t["name"]: t for t in traces if t["meta"] == "mean"}
    assert len(bands) == 3 and all(t["fill"] == "tonexty" for t in bands)  # one per group of repeats
    dense = means["dense · mean of 3 seeds (band: min–max over the seeds)"]
    assert dense["y"] == pytest.approx([0.93, 0.9366667], abs=1e-6)
    band = next(t for t in bands if t["name"].startswith("dense · "))
    assert band["y"] == [0.96, 0.95] and band["colour"] == dense["colour"]
    runs = {t["name"]: t for t in traces if "(job " in t["name"]}
    assert runs[f"dense (job {inside[0]})"]["visible"] == "legendonly"  # a repeat is drawn as its group's mean
    assert runs[f"alone (job {alone[0]})"]["visible"] is True
    jobs = ",".join(map(str, ids))
    assert narrow.get_attribute("#report-html", "href") == f"/api/report.html?jobs={jobs}"
    assert narrow.get_attribute("#report-md", "href") == f"/api/report.md?jobs={jobs}"
    assert narrow.get_attribute("#report-html", "download") is not None
    shot(narrow, "compare-seeds-and-band")
    assert no_horizontal_overflow(narrow) and not narrow.errors

    # Four seeds for the outside group, from its row: one more run queued, joining the comparison.
    narrow.click("#seeds-table tr[data-group-key] >> nth=1 >> button.repeat")
    narrow.fill("#repeat-n", "4")
    narrow.click("#repeat-go")
    narrow.wait_for_selector("#message.info")
    assert "Queued 2 repeat(s)" in narrow.text_content("#message")
    group = seeded.client.get(f"/api/jobs/{outside[0]}").json()
    exps = [e for e in seeded.client.get("/api/experiments").json() if e["name"].startswith("dense lr")]
    assert len(exps) == 4 and len({e["config"]["seed"] for e in exps}) == 4 and group["status"] == "succeeded"
    newest = max(e["jobs"][0]["id"] for e in exps)
    narrow.wait_for_selector(f"#compare-table tr[data-job='{newest}']")
    assert str(newest) in narrow.evaluate("location.hash")
    assert not narrow.errors


def test_the_job_list_repeats_with_the_n_typed(seeded, narrow):
    e = post(seeded, "/api/experiments", name="list run", config=TINY)
    narrow.goto(seeded.url + "/#/jobs")
    narrow.click(f"tr[data-job='{e['jobs'][0]['id']}'] button.repeat")
    narrow.fill("#repeat-n", "3")
    narrow.wait_for_timeout(1200)  # the list redraws every second: the panel and what was typed must survive it
    assert narrow.input_value("#repeat-n") == "3"
    narrow.click("#repeat-go")
    narrow.wait_for_selector("tr[data-job] .run-name:text('list run · seed 2')")
    names = narrow.eval_on_selector_all("tr[data-job] .run-name", "els => els.map(e => e.textContent)")
    assert names == ["list run · seed 2", "list run · seed 1", "list run"]
    assert "Queued 2 repeat(s)" in narrow.text_content("#message")
    group = seeded.client.get(f"/api/experiments/{e['id']}").json()["group"]
    assert narrow.text_content(f"tr[data-job='{e['jobs'][0]['id']}'] .group-of") == f"group {group}"

    narrow.click(f"tr[data-job='{e['jobs'][0]['id']}'] button.repeat")
    narrow.fill("#repeat-n", "1")
    narrow.click("#repeat-go")
    narrow.wait_for_selector("#message:not(.info)")
    assert "seeds" in narrow.text_content("#message") and "2" in narrow.text_content("#message")  # the 422, by field
    shot(narrow, "jobs-repeat-panel")
    assert no_horizontal_overflow(narrow) and not narrow.errors
