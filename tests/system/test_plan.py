"""The plan with a real worker: it reports itself (device, measured throughput, weights and data present), the
plan blocks what it cannot run offline and says how to fix it, sees a weights file appear, and a finished job's
measured speed refines the estimate of the same run."""
import math

from tests.lab import QUICK, wait_for

# The worker imports torch and timm and calibrates (about a second) before its first report; on two shared cores
# that is well under this.
FIRST_REPORT_S = 120
REPORT_S = 1.0


def _workers(lab):
    return lab.client.get("/api/workers").json()


def test_the_worker_reports_itself_and_the_plan_follows_it(make_lab):
    lab = make_lab(BLOCKLAB_WORKER_REPORT_S=str(REPORT_S))
    none_yet = lab.client.post("/api/plan", json={"reproduce": True}).json()
    assert none_yet["worker"] is None and none_yet["items"][0]["preflight"]["weights"]["state"] == "unknown"

    lab.new_worker()
    rep = wait_for(lambda: (w := _workers(lab)) and w[0], FIRST_REPORT_S, "the worker's first report")
    assert rep["device"] == "cpu (cpu)" and rep["gflops"] > 0 and not rep["stale"]
    assert rep["data_present"] and rep["allow_download"] is False and rep["hub_offline"] is True
    assert set(rep["weights"]) >= {"vgg19", "deit_tiny_patch16_224"}
    # bf16 speed-ups exactly where this CPU runs bf16 natively (the engine's test): only there does the plan
    # show a bf16 time beside the fp32 runs.
    import torch

    from worker.engine import bf16_supported
    native = bf16_supported(torch.device("cpu"))
    assert rep["bf16_native"] is native and (rep["bf16_speedup"] is not None) == native
    assert not native or set(rep["bf16_speedup"]) == {"transformer", "cnn"}

    # Offline, no weights anywhere: Table 1 is blocked model by model, each saying how to fix it.
    p = lab.client.post("/api/plan", json={"reproduce": True}).json()
    assert p["worker"]["name"] == rep["name"] and p["blocked"] and len(p["items"]) == 10
    weights_dir = rep["weights_dir"]
    for item in p["items"]:
        assert item["preflight"]["weights"]["state"] == "missing"
        assert f"weights: local, put {item['model']}.safetensors in {weights_dir}" in item["block_reason"]
        assert item["preflight"]["data"]["state"] == "present"
        assert item["estimate"]["this_device_s"] > item["estimate"]["reference_s"] > 0
        assert (item["bf16"] is not None) == native
    assert p["long"] and p["dry_run"]["total_this_device_s"] < p["total_this_device_s"]

    # A weights file put in the weights folder is seen by the next report.
    local = {"configs": [{"model": "deit_tiny_patch16_224", "weights": "local"}]}
    assert lab.client.post("/api/plan", json=local).json()["items"][0]["blocked"]
    from pathlib import Path
    Path(weights_dir).mkdir(parents=True, exist_ok=True)
    (Path(weights_dir) / "deit_tiny_patch16_224.safetensors").write_bytes(b"\0" * 2**20)
    item = wait_for(lambda: (i := lab.client.post("/api/plan", json=local).json()["items"][0])
                    ["preflight"]["weights"]["state"] == "cached" and i, 10 * REPORT_S + 10, "the file to be seen")
    assert not item["blocked"] and item["preflight"]["weights"]["mb"] == 1.0

    # A finished job's measured speed refines the estimate of the same run: the plan then predicts its time.
    cfg = dict(QUICK, epochs=2)
    jid = lab.submit("measured", **cfg)
    lab.wait_status(jid, "succeeded", timeout=180)
    key = f"{cfg['model']}@{cfg['image_size']}"
    wait_for(lambda: key in _workers(lab)[0]["measured"], 10 * REPORT_S + 10, "the job's measured speed")
    same = dict(cfg, train_per_class=20)  # what the job really had: the tiny set's 20 images per class
    est = lab.client.post("/api/plan", json={"configs": [same]}).json()["items"][0]["estimate"]
    took = sum(r["seconds"] for r in lab.client.get(f"/api/jobs/{jid}/metrics").json())
    assert est["measured"] and math.isclose(est["this_device_s"], took, rel_tol=0.05, abs_tol=0.2), (est, took)
