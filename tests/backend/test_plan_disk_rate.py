"""The plan's T4 time uses the disk read rate a worker measured, where that worker is itself a T4 (the lab of a
Colab or Kaggle notebook); another worker's disk says nothing about a T4's, and the rate stays an assumption."""
from core import estimate

from .test_plan import _report, _send, plan_api  # noqa: F401 - the fixture

DEIT_B = {"configs": [{"model": "deit_base_distilled_patch16_224"}]}


def test_a_t4_workers_measured_disk_rate_replaces_the_assumed_one(plan_api):  # noqa: F811
    _send(_report(device="cuda:0 (Tesla T4)", disk_read_bytes_per_s=80e6))
    t4 = plan_api.post("/api/plan", json=DEIT_B).json()["items"][0]["estimate"]["t4"]
    assert t4["disk_read"] == "measured" and t4["disk_bytes_per_s"] == 80e6 and t4["seconds_range"] is None
    assert t4["disk_read_s"] == estimate.disk_read_s(DEIT_B["configs"][0], 80e6)

    _send(_report(device="cuda:0 (NVIDIA H100 80GB HBM3)", disk_read_bytes_per_s=2e9))
    t4 = plan_api.post("/api/plan", json=DEIT_B).json()["items"][0]["estimate"]["t4"]
    assert t4["disk_read"] == "assumed" and t4["disk_bytes_per_s"] == estimate.T4["disk_bytes_per_s"]
    assert t4["seconds_range"][0] < t4["seconds"] < t4["seconds_range"][1]
