"""POST /api/plan against worker reports fed through the real ingestion path: estimates, preflight states and
their fixes, dry-run totals, validation errors naming the field."""
import time

import pytest

from backend.app import ingest, workers
from core import estimate
from core.config import DRY_RUN, preset

from .conftest import TINY


def _report(**over):
    weights = {m: {"hub": False, "hub_mb": None, "local": None, "local_mb": None} for m in estimate.flops_table()}
    rep = {"name": "w1@lab", "pid": 1, "device": "cpu (cpu)", "gflops": 100.0, "calibration": {"gflops": 100.0},
           "measured": {}, "weights_dir": "/lab/weights", "weights": weights, "hub_offline": True,
           "hub_reachable": False, "data_dir": "/lab/data", "data_present": True, "allow_download": False,
           "data_host_reachable": False, "interval_s": 30.0}
    rep.update(over)
    return rep


def _send(rep, ts=None):
    ingest.handle_event({"type": "worker", "job_id": 0, "attempt": 0, "ts": ts or time.time(), "worker": rep})


@pytest.fixture
def plan_api(api):
    workers.clear()
    yield api
    workers.clear()


def test_without_a_report_the_plan_says_so_and_still_gives_the_reference(plan_api):
    r = plan_api.post("/api/plan", json={"configs": [{"model": "deit_tiny_patch16_224", "weights": "none"}]})
    assert r.status_code == 200, r.text
    p = r.json()
    assert p["worker"] is None and p["total_this_device_s"] is None
    item = p["items"][0]
    assert item["estimate"]["this_device_s"] is None and item["estimate"]["reference_s"] > 0
    assert item["preflight"]["data"]["state"] == "unknown"
    assert "no worker has reported" in item["preflight"]["data"]["message"]
    assert not item["blocked"]
    assert p["reference"]["name"].startswith("NVIDIA A100") and p["reference"]["gflops"] > 0


def test_estimate_uses_the_reported_throughput(plan_api):
    _send(_report(gflops=50.0))
    cfg = {"model": "deit_tiny_patch16_224", "weights": "none", "epochs": 3}
    p = plan_api.post("/api/plan", json={"configs": [cfg]}).json()
    full = {**preset("paper").to_dict(), **cfg}
    w = estimate.work(full)
    est = p["items"][0]["estimate"]
    assert est["this_device_s"] == pytest.approx((w["frozen_gflop"] + w["train_gflop"]) / 50, abs=0.5)
    assert est["reference_s"] == pytest.approx(est["this_device_s"] * 50 / estimate.REFERENCE["gflops"], rel=0.02)
    assert p["worker"]["name"] == "w1@lab" and p["worker"]["gflops"] == 50.0 and not p["worker"]["stale"]
    assert p["total_this_device_s"] == est["this_device_s"]
    assert p["long"] == (est["this_device_s"] > 600)


def test_a_jobs_measured_rate_for_the_model_and_size_wins_over_the_calibration(plan_api):
    cfg = {"model": "deit_tiny_patch16_224", "weights": "none", "image_size": 112}
    _send(_report(gflops=100.0))
    before = plan_api.post("/api/plan", json={"configs": [cfg]}).json()["items"][0]["estimate"]
    _send(_report(gflops=100.0, measured={"deit_tiny_patch16_224@112": 25.0}))
    after = plan_api.post("/api/plan", json={"configs": [cfg, dict(cfg, image_size=224)]}).json()["items"]
    assert after[0]["estimate"]["measured"] and after[0]["estimate"]["gflops"] == 25.0
    assert after[0]["estimate"]["this_device_s"] == pytest.approx(4 * before["this_device_s"], rel=0.01)
    # The same model at another size: calibrated by that job (its rate carried over), not the benchmark's.
    assert not after[1]["estimate"]["measured"] and after[1]["estimate"]["gflops"] == 25.0
    assert after[1]["estimate"]["basis"] == "scaled" and after[1]["estimate"]["calibrated"]


def test_an_uncalibrated_estimate_says_so_and_gives_a_range_until_a_job_calibrates_it(plan_api):
    """Before any job finished on the worker, only its start-up benchmark (the best case) is known: the estimate
    is marked uncalibrated with a range from it to UNCALIBRATED_SPAN times it. A finished job of the same model
    (at its nearest size) calibrates it: a point estimate."""
    cfg = {"model": "deit_small_patch16_224", "weights": "none", "image_size": 112, "epochs": 3}
    _send(_report(gflops=100.0))
    p = plan_api.post("/api/plan", json={"configs": [cfg]}).json()
    est = p["items"][0]["estimate"]
    low, high = estimate.UNCALIBRATED_SPAN
    assert not est["calibrated"] and est["basis"] == "benchmark" and not p["calibrated"]
    assert est["range_s"] == [pytest.approx(est["this_device_s"] * low, abs=0.1),
                              pytest.approx(est["this_device_s"] * high, abs=0.1)]
    assert p["total_range_s"] == est["range_s"]
    # Another model's job does not calibrate this one (models reach very different shares of a device's speed).
    _send(_report(gflops=100.0, measured={"deit_tiny_patch16_224@224": 20.0, "vgg19@112": 80.0}))
    est = plan_api.post("/api/plan", json={"configs": [cfg]}).json()["items"][0]["estimate"]
    assert not est["calibrated"] and est["basis"] == "benchmark" and est["range_s"]
    # A job of this model, at another size, does: its rate, a point estimate.
    _send(_report(gflops=100.0, measured={"deit_small_patch16_224@224": 30.0, "deit_small_patch16_224@64": 10.0}))
    p = plan_api.post("/api/plan", json={"configs": [cfg]}).json()
    est = p["items"][0]["estimate"]
    assert est["calibrated"] and p["calibrated"] and est["range_s"] is None and p["total_range_s"] is None
    assert est["basis"] == "scaled" and est["gflops"] == 10.0 and est["calibrated_by"] == ["deit_small_patch16_224@64"]


def test_the_plan_says_whether_a_run_is_the_papers_preset(plan_api):
    """A 3-epoch, 112 px, 1,000-image job is not the paper's run; the preset itself (Swin-B's batch 256) is."""
    p = plan_api.post("/api/plan", json={"configs": [
        {"model": "deit_tiny_patch16_224", "epochs": 3, "image_size": 112, "train_per_class": 100},
        {"model": "swin_base_patch4_window7_224"}, {"model": "deit_tiny_patch16_224", "epochs": 3}]}).json()
    assert [i["paper_preset"] for i in p["items"]] == [False, True, False] and not p["paper_preset"]
    assert plan_api.post("/api/plan", json={"reproduce": True}).json()["paper_preset"]


def test_a_batch_larger_than_the_training_set_is_flagged_naming_the_field(plan_api):
    cfg = {"model": "deit_tiny_patch16_224", "batch_size": 4096, "train_per_class": 100}
    [item] = plan_api.post("/api/plan", json={"configs": [cfg]}).json()["items"]
    [w] = item["warnings"]
    assert w["loc"] == ["config", "batch_size"] and "4,096 is larger than the 1,000 training images" in w["msg"]
    assert "(100 per class x 10 classes)" in w["msg"] and not item["blocked"]
    r = plan_api.post("/api/experiments", json={"name": "big batch", "config": cfg, "start": False})
    assert r.status_code == 201 and r.json()["warnings"] == [w]  # queued as asked, and said
    ok = plan_api.post("/api/plan", json={"configs": [dict(cfg, batch_size=1000)]}).json()["items"][0]
    assert ok["warnings"] == []


def test_reproduce_offline_without_weights_blocks_every_model_saying_how_to_fix_it(plan_api):
    _send(_report())
    p = plan_api.post("/api/plan", json={"reproduce": True}).json()
    assert len(p["items"]) == 10 and p["blocked"]
    for item in p["items"]:
        w = item["preflight"]["weights"]
        assert w["state"] == "missing" and item["blocked"]
        assert f"weights: local, put {item['model']}.safetensors in /lab/weights" in w["message"]
        assert item["block_reason"] and ".." not in item["block_reason"]
        assert item["config"]["epochs"] == 20 and item["card"]["model"] == item["model"]
    assert p["long"]  # ten 20-epoch 224 px runs at 100 GFLOP/s
    assert p["dry_run"]["changes"] == DRY_RUN
    assert p["dry_run"]["total_this_device_s"] < p["total_this_device_s"] / 20


def test_weights_states(plan_api):
    rep = _report(hub_offline=False, hub_reachable=True)
    rep["weights"]["vgg19"] = {"hub": True, "hub_mb": 548.1, "local": None, "local_mb": None}
    rep["weights"]["resnet152"] = {"hub": False, "hub_mb": None, "local": "/lab/weights/resnet152.pth",
                                   "local_mb": 230.0}
    _send(rep)
    cfgs = [{"model": "vgg19"}, {"model": "densenet201"}, {"model": "resnet152", "weights": "local"},
            {"model": "cait_s24_224", "weights": "local"}, {"model": "deit_tiny_patch16_224", "weights": "none"}]
    items = plan_api.post("/api/plan", json={"configs": cfgs}).json()["items"]
    states = [(i["preflight"]["weights"]["state"], i["preflight"]["weights"]["mb"]) for i in items]
    assert states == [("cached", 548.1), ("download", estimate.weights_mb("densenet201")), ("cached", 230.0),
                      ("missing", None), ("none", 0)]
    assert "will download about" in items[1]["preflight"]["weights"]["message"]
    assert items[3]["blocked"] and "put cait_s24_224.safetensors in /lab/weights" in items[3]["block_reason"]
    assert [i["blocked"] for i in items] == [False, False, False, True, False]


def test_data_states(plan_api):
    cfg = {"configs": [{"model": "deit_tiny_patch16_224", "weights": "none"}]}
    _send(_report(data_present=False, allow_download=True, data_host_reachable=True))
    d = plan_api.post("/api/plan", json=cfg).json()["items"][0]["preflight"]["data"]
    assert (d["state"], d["mb"]) == ("download", 163)
    _send(_report(data_present=False, allow_download=False))
    item = plan_api.post("/api/plan", json=cfg).json()["items"][0]
    assert item["preflight"]["data"]["state"] == "missing" and item["blocked"]
    assert "cifar-10-python.tar.gz into /lab/data" in item["block_reason"]
    assert "BLOCKLAB_ALLOW_DOWNLOAD=true" in item["block_reason"]


def test_the_data_preflight_is_per_dataset(plan_api):
    """A worker that holds CIFAR-10 but not CIFAR-100: a CIFAR-100 job's plan is blocked and names CIFAR-100's own
    folder and archive; the CIFAR-10 job beside it is not."""
    _send(_report(data_present=True, datasets_present={"cifar10": True, "cifar100": False}))
    items = plan_api.post("/api/plan", json={"configs": [
        {"model": "deit_tiny_patch16_224", "weights": "none"},
        {"model": "deit_tiny_patch16_224", "weights": "none", "dataset": "cifar100"}]}).json()["items"]
    assert [i["preflight"]["data"]["state"] for i in items] == ["present", "missing"]
    assert "CIFAR-100 is not in /lab/data" in items[1]["block_reason"]
    assert "cifar-100-python/ folder or cifar-100-python.tar.gz" in items[1]["block_reason"]
    _send(_report(data_present=True, datasets_present={"cifar10": True, "cifar100": False}, allow_download=True,
                  data_host_reachable=True))
    d = plan_api.post("/api/plan", json={"configs": [
        {"model": "deit_tiny_patch16_224", "weights": "none", "dataset": "cifar100"}]}).json()["items"][0]
    assert (d["preflight"]["data"]["state"], d["preflight"]["data"]["mb"]) == ("download", 161)


def test_dry_run_plans_the_labelled_values(plan_api):
    _send(_report())
    p = plan_api.post("/api/plan", json={"configs": [{"model": "vgg19", "weights": "none"}], "dry_run": True}).json()
    cfg = p["items"][0]["config"]
    assert {k: cfg[k] for k in DRY_RUN} == DRY_RUN and p["dry_run_applied"]
    assert p["total_this_device_s"] == p["dry_run"]["total_this_device_s"]


def test_a_stale_report_is_used_but_said_stale(plan_api):
    _send(_report(interval_s=1.0), ts=time.time() - 60)
    p = plan_api.post("/api/plan", json={"configs": [{"model": "vgg19", "weights": "none"}]}).json()
    assert p["worker"]["stale"] is True and p["items"][0]["estimate"]["this_device_s"] > 0
    listed = plan_api.get("/api/workers").json()
    assert [w["name"] for w in listed] == ["w1@lab"] and listed[0]["stale"]


@pytest.mark.parametrize("body, field", [
    ({"configs": [{"model": "deit_tiny_patch16_224", "lr": -1}]}, ["body", "configs", 0, "lr"]),
    ({"configs": [{"model": "nope"}]}, ["body", "configs", 0, "model"]),
    ({"reproduce": True, "overrides": {"epochs": 0}}, ["body", "overrides", "epochs"]),
    ({"configs": [], "unknown": 1}, ["body", "unknown"]),
])
def test_validation_errors_name_the_field(plan_api, body, field):
    r = plan_api.post("/api/plan", json=body)
    assert r.status_code == 422, r.text
    assert field in [d["loc"] for d in r.json()["detail"]], r.json()


def test_an_empty_plan_is_refused(plan_api):
    r = plan_api.post("/api/plan", json={})
    assert r.status_code == 422 and "reproduce" in r.text


def test_reproduce_must_be_a_real_boolean(api):
    r = api.post("/api/plan", json={"reproduce": "yes"})
    assert r.status_code == 422 and "reproduce" in r.text


GiB = 2**30
COLAB = {"host_available": 12 * GiB, "device_free": 15 * GiB, "disk_free": 70 * GiB, "pinned": True,
         "cache_dir": "/content/blocklab-home/cache/features", "device_total": 16 * GiB}


def test_a_worker_with_a_free_t4s_limits_gets_deit_b_on_disk_and_the_plan_says_so(plan_api):
    """Issue 16: the plan places each run's features with core.memory on the limits the worker reported (Colab:
    12 GB RAM, a 16 GB T4): DeiT-B's 31 GiB go to a memory-mapped file, a small model's to the GPU; every item has
    a free T4's time, with the disk reads a memory-mapped cache adds there."""
    _send(_report(device="cuda:0 (Tesla T4)", limits=COLAB))
    body = {"configs": [{"model": "deit_base_distilled_patch16_224"},
                        {"model": "deit_tiny_patch16_224", "image_size": 112, "train_per_class": 100,
                         "val_limit": 1000}]}
    p = plan_api.post("/api/plan", json=body).json()
    big, small = p["items"]
    assert big["memory"]["this_worker"]["where"] == "disk"
    assert "memory-mapped file under /content/blocklab-home" in big["memory"]["this_worker"]["reason"]
    assert big["memory"]["bytes"] / GiB == pytest.approx(31.16, abs=0.01)
    assert small["memory"]["this_worker"]["where"] == "device"
    t4 = big["estimate"]["t4"]
    assert t4["precision"] == "fp32" and t4["placement"]["where"] == "disk" and t4["disk_read_s"] > 0
    assert big["estimate"]["t4_s"] == pytest.approx(t4["seconds"]) and t4["uncached_s"] > 0
    assert p["total_t4_s"] == pytest.approx(big["estimate"]["t4_s"] + small["estimate"]["t4_s"], abs=0.2)
    fp16 = plan_api.post("/api/plan", json={"configs": [{"model": "deit_base_distilled_patch16_224",
                                                         "precision": "fp16"}]}).json()["items"][0]
    assert fp16["estimate"]["t4"]["precision"] == "fp16" and fp16["estimate"]["t4_s"] < t4["seconds"]
    # A small disk: the cache is off on this worker, and the reason names the limits.
    _send(_report(device="cuda:0 (Tesla T4)", limits={**COLAB, "disk_free": 20 * GiB}))
    off = plan_api.post("/api/plan", json=body).json()["items"][0]["memory"]["this_worker"]
    assert off["where"] == "off" and "20.0 GiB free disk" in off["reason"]


def test_without_reported_limits_the_placement_is_unknown_and_no_cache_says_so(plan_api):
    _send(_report())
    p = plan_api.post("/api/plan", json={"configs": [{"model": "deit_tiny_patch16_224"},
                                                     {"model": "deit_tiny_patch16_224", "feature_cache": False}]})
    a, b = p.json()["items"]
    assert a["memory"]["this_worker"] is None and a["memory"]["bytes"] > 0
    assert b["memory"]["bytes"] is None and "no frozen-feature cache" in b["memory"]["message"]


@pytest.mark.parametrize("limits", [{"host_available": 10, "device_free": "x"}, {"host_available": 10, "disk_free": "x"},
                                    {"host_available": True}, {"host_available": -5}, {"host_available": 1.5},
                                    {"host_available": 10, "cache_dir": 7, "pinned": "yes"}, "x", [1]])
def test_odd_reported_limits_mean_unknown_never_a_500(plan_api, limits):
    _send(_report(limits=limits))
    r = plan_api.post("/api/plan", json={"configs": [{"model": "deit_tiny_patch16_224"}]})
    assert r.status_code == 200, r.text
    mem = r.json()["items"][0]["memory"]
    assert mem["this_worker"] is None or isinstance(limits, dict) and "cache_dir" in limits


def test_other_depths_say_their_cache_size_is_not_estimated(plan_api):
    p = plan_api.post("/api/plan", json={"configs": [{"model": "deit_tiny_patch16_224", "trainable_blocks": 2}]})
    assert "not estimated at this depth" in p.json()["items"][0]["memory"]["message"]


def test_an_empty_image_size_plans_at_the_weights_own_size(plan_api):
    """Found by the fuzz test: image_size null (the weights' own size) gave the new memory plan a 500."""
    p = plan_api.post("/api/plan", json={"configs": [{"model": "deit_tiny_patch16_224", "image_size": None}]})
    assert p.status_code == 200, p.text
    sized = plan_api.post("/api/plan", json={"configs": [{"model": "deit_tiny_patch16_224", "image_size": 224}]})
    assert p.json()["items"][0]["memory"]["bytes"] == sized.json()["items"][0]["memory"]["bytes"] > 0


def test_the_dry_run_lists_only_what_it_really_changes(plan_api):
    """A run smaller than DRY_RUN's caps keeps its own values in its dry run: the plan must not offer 50 images per
    class at 112 px to a 20-image, 64 px run (its dry run runs 20 images at 64 px)."""
    _send(_report())
    small = {"model": "deit_tiny_patch16_224", "weights": "none", "epochs": 3, "train_per_class": 20,
             "val_limit": 200, "image_size": 64}
    p = plan_api.post("/api/plan", json={"configs": [small]}).json()
    assert p["dry_run"]["changes"] == {"epochs": DRY_RUN["epochs"]}
    tiny = plan_api.post("/api/plan", json={"configs": [{**small, "epochs": 1}]}).json()
    assert tiny["dry_run"]["changes"] == {}  # nothing to cap: the dry run is this run, labelled
    mixed = plan_api.post("/api/plan", json={"configs": [small, {**small, "image_size": 96, "epochs": 1}]}).json()
    assert mixed["dry_run"]["changes"] == {"epochs": DRY_RUN["epochs"]}
    both = plan_api.post("/api/plan", json={"configs": [small, {**small, "train_per_class": None}]}).json()
    assert both["dry_run"]["changes"] == {"epochs": DRY_RUN["epochs"], "train_per_class": DRY_RUN["train_per_class"]}


# -- bf16 beside fp32, where the worker runs it natively -------------------------------------------------------------
GAINS = {"transformer": 3.0, "cnn": 1.5}  # a worker's bf16 speed-up per model family
NATIVE = {"bf16_native": True, "bf16_speedup": GAINS}  # a worker that runs bf16 natively


def _finished(api, accs: dict[int, float], precision: str, **cfg) -> list[int]:
    """Succeeded jobs of RUN + cfg, one per seed: {seed: best accuracy}, as the worker said they computed."""
    from backend.app.db import session_scope
    from backend.app.models import EpochMetric, Job
    from core.protocol import JobStatus
    ids = []
    for seed, acc in accs.items():
        r = api.post("/api/experiments", json={"name": f"{precision} {seed}", "config": {**RUN, **cfg, "seed": seed,
                                                                                          "precision": precision}})
        assert r.status_code == 201, r.text
        jid = r.json()["jobs"][0]["id"]
        with session_scope() as db:
            job = db.get(Job, jid)
            job.status, job.info = JobStatus.SUCCEEDED, {"precision": "bf16" if precision == "auto" else precision}
            db.add(EpochMetric(job_id=jid, epoch=1, val_acc=acc - 0.1, val_loss=1.0, train_loss=1.0, train_acc=0.5,
                               seconds=1.0))
            db.add(EpochMetric(job_id=jid, epoch=2, val_acc=acc, val_loss=1.0, train_loss=1.0, train_acc=0.5,
                               seconds=1.0))
            db.commit()
        ids.append(jid)
    return ids


# Long enough that its seconds, rounded to a tenth, keep the ratios the tests check.
RUN = {**TINY, "image_size": 224, "train_per_class": 100}


def _bf16(api, cfg=None) -> dict:
    return api.post("/api/plan", json={"configs": [cfg or RUN]}).json()["items"][0]


def test_a_worker_with_native_bf16_gets_the_bf16_time_beside_fp32_named_as_a_deviation(plan_api):
    _send(_report(gflops=100.0, **NATIVE))
    item = _bf16(plan_api)
    est, bf16 = item["estimate"], item["bf16"]
    assert est["precision"] == "fp32" and est["basis"] == "benchmark" and est["gflops"] == 100.0
    # Uncalibrated both: the fp32 calibration times the family's speed-up (DeiT-Tiny: a transformer), as ranges;
    # bf16's from a run gaining half again its block's speed-up to one 10% slower than fp32's slowest.
    assert bf16["this_device_s"] == pytest.approx(est["this_device_s"] / 3, rel=0.02) and bf16["speedup"] == 3.0
    assert bf16["basis"] == "benchmark" and not bf16["calibrated"] and not bf16["speedup_measured"]
    low, high = estimate.BF16_SPAN
    assert bf16["range_s"] == [pytest.approx(bf16["this_device_s"] * low, abs=0.1),
                               pytest.approx(est["range_s"][1] * high, rel=0.02)]
    assert bf16["deviation"]["option"] == "precision" and bf16["deviation"]["paper"] == "fp32"
    assert "the paper trained in fp32" in bf16["deviation"]["text"]
    # Nothing measured in this lab yet: no effect claimed; the engine's own measurement quoted for what it is.
    acc = bf16["accuracy"]
    assert acc["basis"] is None and acc["effect"] is None and acc["pairs"] == 0
    assert acc["reference"]["model"] == "tf_efficientnet_lite0" and acc["reference"]["effect"] == pytest.approx(0.004)
    # A CNN gets its own family's speed-up (a transformer block's would promise it twice what it gains).
    dense = _bf16(plan_api, {**RUN, "model": "densenet201"})
    assert dense["bf16"]["speedup"] == 1.5 and dense["bf16"]["family"] == "cnn"
    assert plan_api.post("/api/plan", json={"configs": [RUN]}).json()["worker"]["bf16_speedup"] == GAINS


def test_without_native_bf16_or_for_a_run_already_in_bf16_nothing_is_shown_beside(plan_api):
    _send(_report(gflops=100.0))  # no bf16 speed-ups: emulated bf16 would be slower than fp32
    assert _bf16(plan_api)["bf16"] is None
    _send(_report(gflops=100.0, **NATIVE))
    items = plan_api.post("/api/plan", json={"configs": [{**RUN, "precision": "bf16"},
                                                         {**RUN, "precision": "auto"}]}).json()["items"]
    for item in items:  # its own time is the bf16 one; its card names the deviation
        assert item["bf16"] is None and item["estimate"]["precision"] == "bf16"
        assert item["estimate"]["gflops"] == 300.0


def test_a_bf16_run_of_a_model_only_fp32_jobs_timed_is_their_rate_scaled_as_a_range(plan_api):
    _send(_report(gflops=100.0, **NATIVE, measured={"deit_tiny_patch16_224@224": 20.0}))
    item = _bf16(plan_api)
    fp32, bf16 = item["estimate"], item["bf16"]
    assert fp32["calibrated"] and fp32["gflops"] == 20.0
    assert bf16["basis"] == "fp32 scaled" and bf16["calibrated_by"] == ["deit_tiny_patch16_224@224"]
    # From a run gaining half again the family's speed-up to one 10% slower than the fp32 job's time.
    assert bf16["this_device_s"] == pytest.approx(fp32["this_device_s"] / 3, rel=0.02)
    assert bf16["range_s"][0] == pytest.approx(fp32["this_device_s"] / 3 * estimate.BF16_SPAN[0], rel=0.02)
    assert bf16["range_s"][1] == pytest.approx(fp32["this_device_s"] * estimate.BF16_SPAN[1], rel=0.02)
    # A bf16 job of the model times it (and never the fp32 run: its key says bf16); both measured, the speed-up is
    # theirs.
    _send(_report(gflops=100.0, **NATIVE,
                  measured={"deit_tiny_patch16_224@224": 20.0, "deit_tiny_patch16_224@224@bf16": 50.0}))
    item = _bf16(plan_api)
    assert item["estimate"]["gflops"] == 20.0 and item["bf16"]["basis"] == "measured"
    assert item["bf16"]["calibrated"] and item["bf16"]["range_s"] is None
    assert item["bf16"]["speedup"] == 2.5 and item["bf16"]["speedup_measured"]


def test_the_speed_up_compares_rates_on_the_same_footing(plan_api):
    """A bf16 job's rate against the fp32 start-up calibration's best case would compare a real run with a tight
    loop (0.5x 'faster'): then the family's start-up speed-up, said to be approximate."""
    _send(_report(gflops=100.0, **NATIVE, measured={"deit_tiny_patch16_224@224@bf16": 50.0}))
    bf16 = _bf16(plan_api)["bf16"]
    assert bf16["basis"] == "measured" and bf16["speedup"] == 3.0 and not bf16["speedup_measured"]
    # Measured both, bf16 slower than fp32 here: said as it is.
    _send(_report(gflops=100.0, **NATIVE,
                  measured={"deit_tiny_patch16_224@224": 60.0, "deit_tiny_patch16_224@224@bf16": 50.0}))
    bf16 = _bf16(plan_api)["bf16"]
    assert bf16["speedup"] == pytest.approx(0.83) and bf16["speedup_measured"]


def test_the_accuracy_effect_is_measured_seed_by_seed_on_this_labs_finished_pairs(plan_api):
    _send(_report(gflops=100.0, **NATIVE))
    fp32 = _finished(plan_api, {0: 0.60, 1: 0.64}, "fp32")
    bf16 = _finished(plan_api, {0: 0.61}, "bf16") + _finished(plan_api, {1: 0.66}, "auto")  # auto ran bf16
    _finished(plan_api, {0: 0.99}, "bf16")  # seed 0 again: the same draw, not another pair
    acc = _bf16(plan_api)["bf16"]["accuracy"]
    assert acc["basis"] == "these settings" and acc["effect"] == pytest.approx(0.015) and acc["pairs"] == 2
    assert acc["fp32_jobs"] == fp32 and acc["bf16_jobs"] == bf16 and acc["reference"] is None
    assert acc["ci_low"] < 0.015 < acc["ci_high"]  # two pairs: a Student's t interval
    # Other settings of the same model on the same dataset: those pairs, said to be at other settings.
    acc = _bf16(plan_api, {**RUN, "epochs": 3})["bf16"]["accuracy"]
    assert acc["basis"] == "this model" and acc["effect"] == pytest.approx(0.015) and acc["pairs"] == 2
    # Another dataset's pairs are not this one's; another model has none.
    assert _bf16(plan_api, {**RUN, "dataset": "cifar100"})["bf16"]["accuracy"]["basis"] is None
    assert _bf16(plan_api, {**RUN, "model": "deit_small_patch16_224"})["bf16"]["accuracy"]["basis"] is None


def test_an_unfinished_unpaired_or_dry_run_never_counts(plan_api):
    from backend.app.db import session_scope
    from backend.app.models import Experiment, Job
    from core.protocol import JobStatus
    _send(_report(gflops=100.0, **NATIVE))
    _finished(plan_api, {0: 0.60}, "fp32")
    (running,) = _finished(plan_api, {0: 0.99}, "bf16")
    (dry,) = _finished(plan_api, {0: 0.98}, "bf16")
    with session_scope() as db:
        db.get(Job, running).status = JobStatus.RUNNING
        db.get(Experiment, db.get(Job, dry).experiment_id).dry_run = True
        db.commit()
    _finished(plan_api, {0: 0.70}, "bf16", lr=0.01)  # another learning rate: not a side of the fp32 run
    _finished(plan_api, {7: 0.70}, "bf16")  # another seed: no pair
    acc = _bf16(plan_api)["bf16"]["accuracy"]
    assert acc["basis"] is None and acc["pairs"] == 0


@pytest.mark.parametrize("odd", ["x", -5.0, 0, True, float("nan"), None, [1], 1e-320, 10**400, 1e308])
def test_an_odd_throughput_in_a_report_is_unknown_never_a_500(plan_api, odd):
    _send(_report(gflops=odd, bf16_speedup={"transformer": odd, "cnn": odd}, measured={"deit_tiny_patch16_224@224": odd,
                                                                                        "x": "y"}))
    r = plan_api.post("/api/plan", json={"configs": [RUN, {**RUN, "precision": "bf16"}]})
    assert r.status_code == 200, r.text
    for item in r.json()["items"]:
        assert item["estimate"]["this_device_s"] is None and item["bf16"] is None
    _send(_report(gflops=100.0, bf16_speedup=odd, measured=odd))  # a good rate beside odd ones
    item = plan_api.post("/api/plan", json={"configs": [RUN]}).json()["items"][0]
    assert item["estimate"]["gflops"] == 100.0 and item["bf16"] is None
    assert plan_api.get("/api/workers").status_code == 200


def test_a_forged_timestamp_or_a_nan_deep_in_a_report_is_stored_as_unknown(plan_api):
    rep = _report(calibration={"gflops": float("inf"), "bf16": {"gflops": float("nan")}}, disk_read_bytes_per_s=float("nan"))
    ingest.handle_event({"type": "worker", "job_id": 0, "attempt": 0, "ts": "soon", "worker": rep})
    ingest.handle_event({"type": "worker", "job_id": 0, "attempt": 0, "ts": float("nan"), "worker": {**rep, "name": "w2"}})
    # An integer too large for a float, as a timestamp: stored at the time it came (it used to raise inside the
    # ingestion, which then never acknowledged the event and stopped at it).
    ingest.handle_event({"type": "worker", "job_id": 0, "attempt": 0, "ts": 10**400,
                         "worker": {**rep, "name": "w3", "interval_s": 10**400}})
    served = plan_api.get("/api/workers")
    assert served.status_code == 200 and len(served.json()) == 3
    assert served.json()[0]["calibration"] == {"gflops": None, "bf16": {"gflops": None}}
    assert plan_api.post("/api/plan", json={"configs": [RUN]}).status_code == 200


REPORT_FIELDS = [*_report(), "limits", "disk_read_bytes_per_s", "bf16_native", "bf16_speedup", "datasets_present"]


@pytest.mark.parametrize("field", REPORT_FIELDS)
def test_any_field_of_a_forged_report_is_answered_never_a_500(plan_api, field):
    """The events queue is local, but a forged report must not take the plan down: every field, any shape."""
    for odd in ([], "x", 10**400, float("nan"), {"a": []}, {"deit_tiny_patch16_224": []}, None, True):
        t4 = {"device": "cuda:0 (Tesla T4)"} if field == "disk_read_bytes_per_s" else {}  # where the plan reads it
        _send(_report(**{field: odd, **t4}))
        runs = [RUN, {**RUN, "weights": "local"}, {**RUN, "dataset": "cifar100"}, {**RUN, "precision": "auto"}]
        assert plan_api.post("/api/plan", json={"configs": runs}).status_code == 200, (field, odd)
        assert plan_api.get("/api/workers").status_code == 200, (field, odd)


def test_a_block_that_says_bf16_is_slower_gives_an_ordered_range_around_it(plan_api):
    _send(_report(gflops=100.0, bf16_native=True, bf16_speedup={"transformer": 0.5, "cnn": 0.05}))
    for model in ("deit_tiny_patch16_224", "densenet201"):
        item = _bf16(plan_api, {**RUN, "model": model})
        fp32, bf16 = item["estimate"], item["bf16"]
        low, high = bf16["range_s"]
        assert low <= bf16["this_device_s"] <= high and bf16["this_device_s"] > fp32["this_device_s"]
    # A measured-fp32 model: the range holds the estimate too (from twice as fast as it to twice as slow).
    _send(_report(gflops=100.0, bf16_native=True, bf16_speedup={"transformer": 0.5},
                  measured={"deit_tiny_patch16_224@224": 20.0}))
    bf16 = _bf16(plan_api)["bf16"]
    assert bf16["range_s"] == [pytest.approx(bf16["this_device_s"] / 2, rel=0.02),
                               pytest.approx(bf16["this_device_s"] * 2, rel=0.02)]


def test_auto_follows_whether_the_worker_runs_bf16_natively_even_without_its_speed_ups(plan_api):
    """A native worker whose bf16 measurement failed still runs auto in bf16 (the engine decides by the hardware):
    the plan says so, and times it from the fp32 calibration it has (no bf16 figure to scale by)."""
    _send(_report(gflops=100.0, bf16_native=True, bf16_speedup=None))
    est = _bf16(plan_api, {**RUN, "precision": "auto"})["estimate"]
    assert est["precision"] == "bf16" and est["gflops"] == 100.0 and est["basis"] == "benchmark"
    _send(_report(gflops=100.0, bf16_native=False))
    assert _bf16(plan_api, {**RUN, "precision": "auto"})["estimate"]["precision"] == "fp32"
