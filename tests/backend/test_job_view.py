"""What a job's page shows: progress by phase (the queue position while queued), the config and the settings that
ran, every attempt with its outcome, timings; dry runs marked everywhere a paper comparison is offered; a force
stop for a worker that does not answer; HEAD on the API."""
import csv
import io
import json
from datetime import timedelta

import pytest
from sqlalchemy import update

from backend.app import queue
from backend.app.db import session_scope
from backend.app.ingest import check_heartbeats, handle_event
from backend.app.models import Job, utcnow
from core import catalogue
from core.config import DRY_RUN, OPTIONS
from core.protocol import progress

from .conftest import TINY


@pytest.fixture
def cancels(monkeypatch):
    sent = []
    monkeypatch.setattr(queue, "cancel", lambda job_id, attempt, force=False: sent.append((job_id, attempt, force)))
    return sent


def _job(api, name="j", dry_run=False, **cfg) -> int:
    r = api.post("/api/experiments", json={"name": name, "config": {**TINY, **cfg}, "dry_run": dry_run})
    assert r.status_code == 201, r.text
    return r.json()["jobs"][0]["id"]


def _ev(jid, kind, attempt=1, **data):
    handle_event({"type": kind, "job_id": jid, "attempt": attempt, "ts": 0, **data})


def _started(jid, attempt=1, worker="w1", device="cpu (cpu)"):
    _ev(jid, "started", attempt, worker=worker, device=device)


def _epoch(jid, epoch, attempt=1, seconds=2.0):
    _ev(jid, "epoch", attempt, row={"epoch": epoch, "train_loss": 1.0, "train_acc": 0.4, "val_loss": 1.1,
                                    "val_acc": 0.5, "lr": 1e-4, "seconds": seconds, "images_per_s": 100.0,
                                    "per_class_acc": [0.5] * 10, "confusion": [[0] * 10] * 10})


def _get(api, jid) -> dict:
    r = api.get(f"/api/jobs/{jid}")
    assert r.status_code == 200, r.text
    return r.json()


def test_progress_reports_every_phase_with_its_unit_and_reads_the_old_form(api):
    jid = _job(api)
    _started(jid)
    assert _get(api, jid)["progress"] == {"phase": "starting", "done": 0, "total": None, "unit": "", "epoch": None,
                                          "split": None}
    _ev(jid, "progress", **progress("downloading", 5_000, 20_000, what="weights of deit_tiny_patch16_224"))
    p = _get(api, jid)["progress"]
    assert (p["phase"], p["done"], p["total"], p["unit"], p["what"]) == (
        "downloading", 5_000, 20_000, "bytes", "weights of deit_tiny_patch16_224")
    _ev(jid, "progress", **progress("features", 300, 1000, epoch=1, split="train"))
    p = _get(api, jid)["progress"]
    assert (p["phase"], p["done"], p["total"], p["unit"], p["epoch"], p["split"]) == (
        "features", 300, 1000, "images", 1, "train")
    _ev(jid, "progress", phase="train", epoch=1, batch=3, batches=10)  # a worker from before phases had names
    assert _get(api, jid)["progress"] == {"phase": "training", "done": 3, "total": 10, "unit": "batches", "epoch": 1,
                                          "split": None}
    _ev(jid, "progress", phase="val", epoch=1, batch=1, batches=2)
    assert _get(api, jid)["progress"]["phase"] == "validating"
    _ev(jid, "progress", phase="exploding", done=1)  # not a phase: dropped, the last report stays
    _ev(jid, "progress", phase="queued", done=1)  # the backend's own phase: never a worker's
    _ev(jid, "progress", attempt=0, **progress("training", 9, 10, epoch=1))  # a stale attempt
    assert _get(api, jid)["progress"]["phase"] == "validating"
    _ev(jid, "finished", status="succeeded")
    assert _get(api, jid)["progress"] is None


def test_queued_jobs_know_their_place_in_the_queue(api, cancels):
    a, b, c = (_job(api, f"q{i}") for i in range(3))
    views = {j["id"]: j for j in api.get("/api/jobs").json()}
    assert [views[x]["queue_position"] for x in (a, b, c)] == [1, 2, 3]
    assert views[b]["progress"] == {"phase": "queued", "done": 2, "total": 3, "unit": "position in the queue", "epoch": None,
                                    "split": None}
    _started(a)
    assert (_get(api, a)["queue_position"], _get(api, b)["queue_position"], _get(api, c)["progress"]["done"]) == (
        None, 1, 2)
    api.post(f"/api/jobs/{b}/cancel")
    api.post(f"/api/jobs/{b}/resume")  # handed to the broker again: behind c now
    assert (_get(api, c)["queue_position"], _get(api, b)["queue_position"]) == (1, 2)
    assert _get(api, b)["progress"]["total"] == 2


def test_eta_counts_the_epochs_left(api):
    jid = _job(api, epochs=5, hflip=False)  # without flips, every epoch after the first has the same work
    _started(jid)
    assert _get(api, jid)["eta_s"] is None  # no epoch timed yet
    _epoch(jid, 1, seconds=2.0)
    _epoch(jid, 2, seconds=4.0)
    assert _get(api, jid)["eta_s"] == pytest.approx(4.0 * 3, abs=0.5)  # epoch 2 on, x 3 left (less its run time)


def test_the_eta_follows_the_epochs_after_the_first_which_also_ran_the_frozen_pass(api):
    """The first epoch also runs the frozen pass (validation images, a flip state of every training image): a job
    whose first epoch took 270 s and later ones 110-120 s has about 2 x 115 s left, not 2 x the mean with 270."""
    jid = _job(api, epochs=5, hflip=False)
    _started(jid)
    for ep, secs in ((1, 270.0), (2, 110.0), (3, 120.0)):
        _epoch(jid, ep, seconds=secs)
    assert _get(api, jid)["eta_s"] == pytest.approx(2 * 115, abs=1.0)


def test_after_the_first_epoch_alone_the_eta_is_the_work_left_at_that_epochs_rate(api):
    """The issue's job: DeiT-B, 3 epochs at 112 px on 1,000 images. Its first epoch carried the frozen pass of
    11,000 images; the two after it carry the block's work and the remaining flip states: far less than 2 x 270 s.
    The time the current epoch has run is taken off (at most that epoch's own share)."""
    from datetime import timedelta

    from backend.app import job_view
    from backend.app.db import session_scope
    from backend.app.models import Job
    from core import estimate
    cfg = dict(model="deit_base_distilled_patch16_224", epochs=3, image_size=112, train_per_class=100, val_limit=None,
               batch_size=64)
    jid = _job(api, **cfg)
    _started(jid)
    _epoch(jid, 1, seconds=270.0)
    full = {**_get(api, jid)["config"]}
    work = {k: sum(v for n, v in estimate.work({**full, "epochs": k}).items() if n.endswith("_gflop")) for k in (1, 2, 3)}
    per_s = work[1] / 270.0
    eta = _get(api, jid)["eta_s"]
    assert eta == pytest.approx((work[3] - work[1]) / per_s, abs=1.0) and eta < 2 * 270.0 / 3
    with session_scope() as db:
        job = db.get(Job, jid)
        st = job_view._stats(db, [jid])[jid]
        later = st.last_epoch_at + timedelta(seconds=5)
        nxt = (work[2] - work[1]) / per_s
        assert job_view.eta_seconds(job, st, full, now=later) == pytest.approx(
            (work[3] - work[1]) / per_s - min(5.0, nxt), abs=0.2)


def _model_times(cfg: dict, epochs: int, s_per_gflop: float) -> list[float]:
    """Each epoch's time if it took its work as core.estimate counts it (the frozen pass of the flip states first
    met in it, the block's training and validation) at one rate."""
    from core import estimate

    def gflop(k):
        return sum(v for n, v in estimate.work({**cfg, "epochs": k}).items() if n.endswith("_gflop")) if k else 0.0
    return [(gflop(e) - gflop(e - 1)) * s_per_gflop for e in range(1, epochs + 1)]


def test_with_random_flips_the_eta_follows_the_work_each_epoch_has_left(api):
    """With flips, epoch 2 runs the frozen part again for about half the images, epoch 3 for a quarter: a job whose
    epochs take just that has, after epoch 1 and after epoch 2, an ETA within 3 % of what is really left. The old
    rule (the last epoch after the first, times the epochs left) said 87 s with 43 s left: here it is far over."""
    from datetime import timedelta

    from backend.app import job_view
    from backend.app.db import session_scope
    from backend.app.models import Job
    cfg = {"model": "deit_base_distilled_patch16_224", "epochs": 6, "image_size": 112, "train_per_class": 100,
           "val_limit": None, "batch_size": 64, "hflip": True}
    jid = _job(api, **cfg)
    _started(jid)
    full = _get(api, jid)["config"]
    times = _model_times(full, 6, 270.0 / _model_times(full, 1, 1.0)[0])  # epoch 1: 270 s
    assert times[1] > 1.2 * times[2] > 1.2 * times[5]  # the flip states met later: fewer each epoch
    for done in (1, 2):
        _epoch(jid, done, seconds=times[done - 1])
        with session_scope() as db:
            job = db.get(Job, jid)
            st = job_view._stats(db, [jid])[jid]
            eta = job_view.eta_seconds(job, st, full, now=st.last_epoch_at)  # the moment the epoch's row landed
        truth = sum(times[done:])
        assert eta == pytest.approx(truth, rel=0.03), (done, eta, truth)
    old_rule = times[1] * (6 - 2)  # what the job page said after epoch 2
    assert abs(old_rule - truth) > 0.1 * truth
    assert _get(api, jid)["eta_s"] == pytest.approx(truth, rel=0.03)  # the API's, a moment later
    with session_scope() as db:  # a timm model without a FLOP figure: the recent epochs' mean per epoch left
        job = db.get(Job, jid)
        st = job_view._stats(db, [jid])[jid]
        later = st.last_epoch_at + timedelta(seconds=1)
        assert job_view.eta_seconds(job, st, {**full, "model": "resnet18"}, now=later) == pytest.approx(
            times[1] * 4 - 1.0, abs=0.2)


def test_config_settings_and_timings(api):
    jid = _job(api, precision="auto")
    j = _get(api, jid)
    assert set(j["config"]) == {o.name for o in OPTIONS}  # every option, also those a browser cannot set
    assert j["config"]["epochs"] == 2 and j["config"]["precision"] == "auto" and j["config"]["cache_dtype"]
    assert j["settings"] is None and j["timings"]["started_at"] is None and j["timings"]["queued_s"] >= 0
    with session_scope() as db:  # as if it was created 15 s ago
        db.execute(update(Job).where(Job.id == jid).values(created_at=utcnow() - timedelta(seconds=15)))
        db.commit()
    _started(jid)
    with session_scope() as db:  # ... and started 10 s ago
        db.execute(update(Job).where(Job.id == jid).values(started_at=utcnow() - timedelta(seconds=10)))
        db.commit()
    info = {"trainable_params": 1234, "total_params": 5678, "trainable_backbone_params": 1000, "head_params": 234,
            "device": "cpu", "precision": "fp32", "tf32": False, "channels_last": False, "image_size": 32,
            "train_images": 20, "val_images": 20, "resumed_from_epoch": 0,
            "feature_cache": {"enabled": True, "placement": "memory", "reused": True}, "teacher": None,
            "torch_version": "2.14.1", "timm_version": "1.0.31", "data_fingerprint": {"train": "ab", "val": "cd"},
            "skipped_files": {"count": 1, "files": [{"path": "train/cat/x.png", "why": "not a readable image"}]}}
    _ev(jid, "info", info=info)
    _epoch(jid, 1, seconds=2.0)
    _epoch(jid, 2, seconds=3.0)
    _ev(jid, "finished", status="succeeded")
    j = _get(api, jid)
    assert j["settings"] == {k: info[k] for k in ("image_size", "precision", "tf32", "device", "channels_last",
                                                  "train_images", "val_images", "trainable_params", "total_params",
                                                  "feature_cache", "resumed_from_epoch", "teacher",
                                                  "torch_version", "timm_version", "data_fingerprint",
                                                  "skipped_files")}
    t = j["timings"]
    assert t["queued_s"] == pytest.approx(5, abs=1) and t["setup_s"] == pytest.approx(8, abs=1)
    assert t["train_s"] == 5.0 and t["total_s"] == pytest.approx(15, abs=1)
    assert t["first_epoch_at"] and t["finished_at"]
    assert t["created_at"] == j["created_at"] and t["created_at"].endswith("Z")  # UTC, said so


def test_attempts_say_each_delivery_and_how_it_ended(api, cancels):
    from core.settings import get_settings
    jid = _job(api)
    _started(jid, 1, "w1", "cpu (cpu)")
    s = get_settings().model_copy(update={"heartbeat_timeout_s": -1.0, "max_attempts": 5})
    assert check_heartbeats(s, utcnow().replace(year=2000)) == [jid]  # w1 went silent: requeued as attempt 2
    _started(jid, 2, "w2", "cuda:0 (H200)")
    api.post(f"/api/jobs/{jid}/cancel")
    _ev(jid, "finished", 2, status="cancelled")
    api.post(f"/api/jobs/{jid}/resume")
    _started(jid, 3, "w3", "cpu (cpu)")
    _ev(jid, "finished", 3, status="failed", error="out of memory")
    api.post(f"/api/jobs/{jid}/resume")
    a = _get(api, jid)["attempts"]
    assert [(x["attempt"], x["worker"], x["device"], x["outcome"]) for x in a] == [
        (1, "w1", "cpu (cpu)", "lost"), (2, "w2", "cuda:0 (H200)", "cancelled"), (3, "w3", "cpu (cpu)", "failed"),
        (4, None, None, "queued")]
    assert "worker lost" in a[0]["error"] and a[2]["error"] == "out of memory" and a[1]["error"] is None
    assert all(x["queued_at"] and x["started_at"] and x["ended_at"] for x in a[:3])
    assert a[3]["started_at"] is None and a[3]["ended_at"] is None


def test_force_stop_ends_a_job_at_once_and_tells_its_worker(api, cancels):
    jid = _job(api)
    r = api.post(f"/api/jobs/{jid}/force-stop")
    assert r.status_code == 409 and "running or cancelling" in r.json()["detail"] and "cancel" in r.json()["detail"]
    _started(jid)
    _epoch(jid, 1)
    j = api.post(f"/api/jobs/{jid}/force-stop").json()
    assert j["status"] == "cancelled" and "force-stopped" in j["error"] and j["finished_at"]
    assert cancels[-1] == (jid, 1, True)
    assert j["attempts"][-1]["outcome"] == "cancelled" and "force-stopped" in j["attempts"][-1]["error"]
    assert api.post(f"/api/jobs/{jid}/force-stop").status_code == 409
    # What the stopped attempt still sends changes nothing: the job ended.
    _epoch(jid, 2)
    _ev(jid, "finished", status="succeeded")
    j = _get(api, jid)
    assert j["status"] == "cancelled" and j["epochs_done"] == 1 and "force-stopped" in j["error"]
    # Delivered again (its worker was ended before acknowledging it): told to stop, not trained.
    _started(jid)
    assert cancels[-1] == (jid, 1, False) and _get(api, jid)["status"] == "cancelled"
    # Resumable like any cancelled job; a cancelling job can be force-stopped too.
    assert api.post(f"/api/jobs/{jid}/resume").json()["status"] == "queued"
    _started(jid, 2)
    assert api.post(f"/api/jobs/{jid}/cancel").json()["status"] == "cancelling"
    j = api.post(f"/api/jobs/{jid}/force-stop").json()
    assert j["status"] == "cancelled" and "while cancelling" in j["error"] and cancels[-1] == (jid, 2, True)
    assert api.get("/api/statuses").json()["force_stoppable"] == ["cancelling", "running"]


def test_a_dry_run_is_marked_and_runs_the_dry_values(api, monkeypatch):
    sent = []
    monkeypatch.setattr(queue, "dispatch", lambda job_id, attempt, config, ahead=False, place=None: sent.append(config))
    big = {**TINY, "epochs": 20, "train_per_class": None, "val_limit": None, "image_size": 224}  # a paper-sized run
    r = api.post("/api/experiments", json={"name": "dry", "config": big, "dry_run": True})
    assert r.status_code == 201, r.text
    e = r.json()
    assert e["dry_run"] is True and e["jobs"][0]["dry_run"] is True
    assert {k: e["config"][k] for k in DRY_RUN} == DRY_RUN and e["config"]["model"] == TINY["model"]
    assert {k: sent[-1][k] for k in DRY_RUN} == DRY_RUN  # what the worker gets
    # The dry run's values cap a run's own: a dry run is never bigger than the run it stands for.
    small = api.post("/api/experiments", json={"name": "small dry", "config": TINY, "dry_run": True}).json()
    assert {k: small["config"][k] for k in DRY_RUN} == {k: TINY[k] for k in DRY_RUN} and small["dry_run"]
    paper = api.post("/api/experiments", json={"name": "paper", "config": TINY}).json()
    assert paper["dry_run"] is False and paper["jobs"][0]["dry_run"] is False
    assert {x["id"]: x["dry_run"] for x in api.get("/api/experiments").json()} == {
        e["id"]: True, small["id"]: True, paper["id"]: False}
    exps = api.post("/api/reproduce", json={"dry_run": True, "overrides": {"epochs": 7}}).json()
    assert len(exps) == 10 and all(x["dry_run"] and x["jobs"][0]["dry_run"] for x in exps)
    assert all({k: x["config"][k] for k in DRY_RUN} == DRY_RUN for x in exps) and "dry-run" in exps[0]["group"]
    one = api.post("/api/reproduce", json={"dry_run": True, "overrides": {"epochs": 1}}).json()
    assert all(x["config"]["epochs"] == 1 for x in one)  # capped, not replaced
    assert not api.post("/api/reproduce", json={"group": "real"}).json()[0]["dry_run"]


def _csv(api, url) -> list[dict]:
    r = api.get(url)
    assert r.status_code == 200, r.text
    return list(csv.DictReader(io.StringIO(r.text)))


def test_csv_marks_dry_runs_and_says_the_precision_that_ran(api):
    dry = _job(api, "dry", dry_run=True, precision="auto")
    auto = _job(api, "auto", precision="auto")
    fp32 = _job(api, "fp32", precision="fp32")
    _started(dry)
    _ev(dry, "info", info={"precision": "bf16", "device": "cuda:0"})
    _epoch(dry, 1)
    rows = {int(r["job_id"]): r for r in _csv(api, f"/api/compare.csv?jobs={dry},{auto},{fp32}")}
    assert (rows[dry]["dry_run"], rows[auto]["dry_run"]) == ("true", "false")  # every CSV's booleans: docs/csv.md
    assert (rows[dry]["precision"], rows[auto]["precision"], rows[fp32]["precision"]) == ("bf16", "", "fp32")
    assert list(rows[dry]).count("model") == 1
    m = _csv(api, f"/api/jobs/{dry}/metrics.csv")
    assert (m[0]["precision"], m[0]["dry_run"]) == ("bf16", "true")
    _ev(dry, "epoch", row={"epoch": 2, "val_acc": 0.123456789, "lr": 7.999999797903001e-05})  # float32 noise
    m = _csv(api, f"/api/jobs/{dry}/metrics.csv")
    assert (m[1]["lr"], m[1]["val_acc"]) == ("8e-05", "0.1235")


def _stream_events(api, jid) -> list[tuple[str, dict]]:
    """One pass of a job's event stream (stream_max_s = 0: it ends after its first look)."""
    out, kind = [], None
    for line in api.get(f"/api/jobs/{jid}/events").text.splitlines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            out.append((kind, json.loads(line[6:])))
    return out


def test_the_stream_carries_the_progress_object(api, monkeypatch):
    from core.settings import get_settings
    monkeypatch.setattr(get_settings(), "stream_max_s", 0.0)
    a, b = _job(api, "a"), _job(api, "b")
    p = [d for k, d in _stream_events(api, b) if k == "progress"][-1]
    assert p["progress"] == _get(api, b)["progress"] and p["queue_position"] == 2 and p["status"] == "queued"
    _started(a)
    _ev(a, "progress", **progress("features", 10, 40, epoch=1, split="val"))
    p = [d for k, d in _stream_events(api, a) if k == "progress"][-1]
    assert p["progress"] == {"phase": "features", "done": 10, "total": 40, "unit": "images", "epoch": 1,
                             "split": "val"}
    assert p["phase"] == "features" and p["queue_position"] is None and p["epochs"] == 2 and "eta_s" in p


def test_head_works_like_get_on_the_api(api, monkeypatch):
    from core.settings import get_settings
    jid = _job(api)
    for path in ("/api/jobs", f"/api/jobs/{jid}", "/api/models", "/api/health", "/openapi.json"):
        get, head = api.get(path), api.head(path)
        assert head.status_code == 200 == get.status_code, path
        assert head.content == b"" and head.headers["content-type"] == get.headers["content-type"], path
    assert api.head("/api/jobs/999999").status_code == 404
    monkeypatch.setattr(get_settings(), "stream_keepalive_s", 0.05)  # a stream's HEAD ends, it does not stream
    r = api.head(f"/api/jobs/{jid}/events")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream") and r.content == b""
    assert api.get("/api/health").json()["event_streams"] == 0  # its place given back


def test_a_queued_job_shows_the_trainable_count_of_its_own_depth_and_dataset(api):
    """Before its worker reports, a job's trainable count is its config's, not the catalogue's paper count: the
    head alone at K=0, the whole network at all, 100 outputs on CIFAR-100, unknown (None) at K=2."""
    spec = catalogue.get("deit_tiny_patch16_224")

    jid = api.post("/api/experiments", json={"name": "k", "config": {"model": spec.id, "weights": "none",
                                                                      "trainable_blocks": 0}}).json()["jobs"][0]["id"]
    assert _get(api, jid)["trainable_params"] == spec.head_params()
    counts = {}
    for name, config in {"paper": {}, "all": {"trainable_blocks": None}, "two": {"trainable_blocks": 2},
                         "c100": {"dataset": "cifar100"}}.items():
        e = api.post("/api/experiments", json={"name": name, "config": {"model": spec.id, "weights": "none",
                                                                         **config}}).json()
        counts[name] = _get(api, e["jobs"][0]["id"])["trainable_params"]
    assert counts["paper"] == spec.trainable_params
    assert counts["all"] == spec.total_params and counts["two"] is None
    assert counts["c100"] == spec.trainable_params + spec.head_params(classes=100) - spec.head_params()
