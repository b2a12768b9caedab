"""The plan before anything heavy is queued (POST /api/plan), in the browser: Reproduce Table 1 always asks, Start job
asks when the run is long or its preflight blocks it; per model what runs, the time here and on the reference GPU,
weights and data; full paper run or a labelled dry run; nothing queued before the confirmation.
Screenshots in tests/artifacts."""
import json

import pytest

from tests.lab import wait_for

from .conftest import shot

pytestmark = pytest.mark.browser


def _rows(page) -> list[dict]:
    return page.eval_on_selector_all("#plan-items tbody tr", """rows => rows.map(r => ({
        model: r.dataset.model, blocked: r.classList.contains('blocked'), here: r.querySelector('.est-this').textContent,
        ref: r.querySelector('.est-ref').textContent, weights: r.querySelector("[data-what='pretrained-weights'] .state").textContent,
        data: r.querySelector("[data-what='training-data'] .state").textContent }))""")


def test_reproduce_shows_the_plan_and_queues_nothing_until_confirmed(make_lab, page):
    lab = make_lab()  # no worker has reported: reference times only, preflight unknown
    page.goto(lab.url + "/#/new")
    page.click("#reproduce")
    page.wait_for_selector("#plan-dialog[open] #plan-items tbody tr >> nth=9")
    rows = _rows(page)
    assert len(rows) == 10 and {r["model"] for r in rows} >= {"deit_base_distilled_patch16_224", "resnet152"}
    assert all(r["here"] == "unknown" and r["ref"] != "unknown" for r in rows)
    assert all(r["weights"] == "unknown" and r["data"] == "unknown" and not r["blocked"] for r in rows)
    assert "No worker has reported yet" in page.text_content("#plan-worker")
    assert "Total, full paper run" in page.text_content("#plan-total")  # Table 1 is the paper's preset
    shot(page, "plan-reproduce")
    page.click("#plan-items tbody tr >> nth=0 >> summary")  # the whole method card, one click away
    page.wait_for_selector("#plan-items tbody tr >> nth=0 >> .method-card-body")
    assert "Trainable parameters" in page.text_content("#plan-items tbody tr >> nth=0")
    shot(page, "plan-reproduce-method-card")
    dry_text = page.text_content("label.plan-choice:has(#plan-mode-dry)")
    assert "epochs 2" in dry_text and "train per class 50" in dry_text and "image size 112" in dry_text

    page.click("#plan-cancel")
    assert page.locator("#plan-dialog").count() == 0
    assert lab.client.get("/api/experiments").json() == []  # dismissed: nothing queued
    assert page.url.endswith("#/new")

    page.click("#reproduce")
    page.wait_for_selector("#plan-dialog[open]")
    page.check("#plan-mode-dry")
    page.click("#plan-confirm")
    page.wait_for_url("**/#/compare?group=*")
    exps = lab.client.get("/api/experiments").json()
    assert len(exps) == 10 and all(e["dry_run"] for e in exps)
    assert all(e["config"]["epochs"] == 2 and e["config"]["image_size"] == 112 for e in exps)
    job = exps[0]["jobs"][0]["id"]
    page.goto(f"{lab.url}/#/job/{job}")
    page.wait_for_selector("#job-head .badge.dry")
    assert page.text_content("#job-head .badge.dry") == "dry run"
    shot(page, "job-dry-run-badge")
    assert not page.errors


def test_a_long_job_asks_first_and_an_offline_one_says_how_to_fix_it(ui_lab, page):
    wait_for(lambda: ui_lab.client.get("/api/workers").json(), 120, "the worker's self-report")
    page.goto(ui_lab.url + "/#/new")
    page.wait_for_selector("#method-card .method-card-body")
    page.click("#submit")  # the paper preset: hub weights, which this offline worker does not have
    page.wait_for_selector("#plan-dialog[open] #plan-items tbody tr")
    [row] = _rows(page)
    assert row["blocked"] and row["weights"] == "missing" and row["here"] != "unknown"
    reason = page.text_content(".block-reason")
    assert "weights: local, put deit_base_distilled_patch16_224.safetensors in" in reason and ".." not in reason
    assert page.is_disabled("#plan-confirm") and "Nothing was queued" in page.text_content("#plan-blocked")
    assert "This lab's worker:" in page.text_content("#plan-worker")
    shot(page, "plan-blocked-offline")
    page.keyboard.press("Escape")
    page.wait_for_selector("#plan-dialog", state="detached")
    assert ui_lab.client.get("/api/experiments").json() == []

    page.click("#advanced summary")
    page.select_option("#f-weights", "none")  # random init: nothing to load; 20 epochs of 50,000 images on a CPU
    page.click("#submit")
    page.wait_for_selector("#plan-dialog[open] #plan-items tbody tr")
    [row] = _rows(page)
    assert not row["blocked"] and row["weights"] == "none needed (random init)" and row["data"] == "present"
    assert page.is_enabled("#plan-confirm") and page.is_checked("#plan-mode-full")
    shot(page, "plan-long-job")
    page.click("#plan-confirm")
    page.wait_for_url("**/#/job/*")
    jid = int(page.url.rsplit("/", 1)[1])
    ui_lab.client.post(f"/api/jobs/{jid}/cancel")  # a day of CPU: the test only needed it queued
    job = ui_lab.job(jid)
    assert not job["dry_run"] and job["config"]["epochs"] == 20 and job["config"]["weights"] == "none"
    assert page.locator("#job-head .badge.dry").count() == 0
    assert not page.errors


def test_a_download_is_announced_and_the_dialog_fits_800px(make_lab, page):
    """The one preflight state an offline test lab cannot reach (weights the worker would download) as the plan
    endpoint words it, through the real endpoint's answer with that item changed."""
    lab = make_lab()

    def downloading(route):
        plan = route.fetch().json()
        plan["long"] = True
        plan["items"][0]["preflight"]["weights"] = {"state": "download", "mb": 330.2,
                                                    "message": "weights: will download about 330 MB from the hub"}
        route.fulfill(status=200, content_type="application/json", body=json.dumps(plan))

    page.route("**/api/plan", downloading)
    page.set_viewport_size({"width": 800, "height": 900})
    page.goto(lab.url + "/#/new")
    page.wait_for_selector("#method-card .method-card-body")
    page.click("#submit")
    page.wait_for_selector("#plan-dialog[open]")
    [row] = _rows(page)
    assert row["weights"] == "will download about 330 MB" and not row["blocked"]
    box = page.locator("#plan-dialog").bounding_box()
    assert box["x"] >= 0 and box["x"] + box["width"] <= 800
    assert page.evaluate("document.documentElement.scrollWidth") <= 800
    shot(page, "plan-download-800px")
    page.click("#plan-cancel")
    assert lab.client.get("/api/experiments").json() == []
    assert not page.errors


def test_the_plan_shows_a_free_t4s_time_and_where_the_features_would_go(make_lab, page):
    """Issue 16: each row has the time on a free T4 (Colab), its detail naming the precision and, for DeiT-B's
    31 GiB of features, the memory-mapped file a 12 GB session needs and what reading it back costs; each row also
    says where its features go on this worker (not yet known: no worker has reported)."""
    lab = make_lab()
    page.goto(lab.url + "/#/new")
    page.click("#reproduce")
    page.wait_for_selector("#plan-dialog[open] #plan-items tbody tr >> nth=9")
    assert "Free T4 (Colab)" in page.text_content("#plan-items thead")
    t4 = page.eval_on_selector_all("#plan-items tbody tr", """rows => rows.map(r => ({model: r.dataset.model,
        text: r.querySelector('.est-t4').textContent, title: r.querySelector('.est-t4').title,
        memory: (r.querySelector('.plan-memory') || {}).textContent}))""")
    assert all(r["text"] not in ("", "unknown") for r in t4), t4
    deit = next(r for r in t4 if r["model"] == "deit_base_distilled_patch16_224")
    assert "fp32" in deit["title"] and "memory-mapped file" in deit["title"] and "reading them back" in deit["title"]
    assert all("has not reported" in (r["memory"] or "") for r in t4), t4
    assert "on a free T4" in page.text_content("#plan-total")
    note = page.text_content("#plan-t4-note")  # the assumptions, on the screen where the numbers are
    assert "datasheet" in note and "200 MB/s" in note and "12.7 GB RAM" in note, note
    shot(page, "plan-t4")
    assert not page.errors
