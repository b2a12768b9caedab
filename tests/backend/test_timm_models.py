"""Any timm model, not only the catalogue's: the API takes it (validated against core/timm_models.json, torch-
free), its method card says it is not in the paper and shows where the generic rule cut once its worker reported
it, and the plan says it has no FLOP figure to estimate from (instead of a 500)."""
from __future__ import annotations

import time

from backend.app import ingest, workers
from tests.backend.conftest import TINY

MODEL = "tf_efficientnet_lite2"  # not in the catalogue; in timm's registry


def test_a_timm_model_outside_the_catalogue_is_accepted_and_a_made_up_one_is_refused(api):
    r = api.post("/api/experiments", json={"name": "lite2", "config": {**TINY, "model": MODEL}})
    assert r.status_code == 201, r.text
    bad = api.post("/api/experiments", json={"name": "x", "config": {**TINY, "model": "tf_efficientnet_lite9"}})
    assert bad.status_code == 422 and "timm's registry" in bad.text and "model" in bad.text


def test_its_card_says_not_in_the_paper_then_where_the_rule_cut_once_the_worker_built_it(api):
    card = api.get(f"/api/models/{MODEL}").json()
    rows = {r["label"]: r["value"] for r in card["rows"]}
    assert card["in_paper"] is False and card["paper_val_acc"] is None and "not in the paper" in rows["Model"]
    assert "once a worker has built the model" in rows["Trainable depth"]
    job = api.post("/api/experiments", json={"name": "lite2", "config": {**TINY, "model": MODEL}}).json()["jobs"][0]
    before = api.get(f"/api/jobs/{job['id']}/card").json()
    assert before["trainable_params"] is None
    info = {"unfreeze_from": "blocks.6.0", "trainable_modules": ["blocks.6.0", "conv_head", "bn2"],
            "trainable_params": 1_234_567, "total_params": 4_567_890, "blocks": 20, "heads": 1}
    for kind, data in (("started", {"worker": "w", "device": "cpu"}), ("info", {"info": info})):
        ingest.handle_event({"type": kind, "job_id": job["id"], "attempt": job["attempt"], "ts": time.time(),
                             **data})
    after = api.get(f"/api/jobs/{job['id']}/card").json()
    rows = {r["label"]: r["value"] for r in after["rows"]}
    assert "cut at blocks.6.0" in rows["Trainable depth"] and after["trainable_params"] == 1_234_567
    assert rows["Trainable modules"] == "blocks.6.0, conv_head, bn2" and after["blocks"] == 20


def test_the_plan_says_it_has_no_flop_figure_and_blocks_a_missing_local_file(api):
    workers.clear()
    try:
        ingest.handle_event({"type": "worker", "job_id": 0, "attempt": 0, "ts": time.time(), "worker": {
            "name": "w1@lab", "pid": 1, "device": "cpu (cpu)", "gflops": 100.0, "measured": {},
            "weights_dir": "/lab/weights", "weights": {}, "hub_offline": True, "hub_reachable": False,
            "data_dir": "/lab/data", "data_present": True, "allow_download": False, "interval_s": 30.0}})
        r = api.post("/api/plan", json={"configs": [{**TINY, "model": MODEL, "weights": "local"},
                                                    {**TINY, "model": "deit_tiny_patch16_224"}]})
        assert r.status_code == 200, r.text
        item = r.json()["items"][0]
        assert "no FLOP figure" in item["estimate"]["no_flop_figure"] and item["estimate"]["this_device_s"] is None
        assert item["blocked"] and f"put {MODEL}.safetensors in /lab/weights" in item["block_reason"]
        assert item["card"]["in_paper"] is False and r.json()["total_this_device_s"] is None
        assert r.json()["items"][1]["estimate"]["this_device_s"] is not None  # the catalogue's still estimate
    finally:
        workers.clear()
