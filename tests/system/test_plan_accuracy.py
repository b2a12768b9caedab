"""How good the plan's time is on this machine (issue 24: "after one calibration job, the plan of a second job with
other settings is within +-30% of its real time"). A real lab (backend, Celery worker on the CPU): the plan of job
B before any job ran (uncalibrated: a range), one calibration job A, the plan of B again (calibrated by A), then B
itself. The real time is B's epochs' wall time (what the plan estimates: setup, model building and data loading
are not counted). The figures are printed and written to tests/artifacts/plan_accuracy.json.

Reproduce: `.venv/bin/python -m pytest tests/system/test_plan_accuracy.py -q -s` (a few minutes on two cores; the
machine it ran on is shared, so its speed varies while the jobs run)."""
import json
import time
from pathlib import Path

import pytest

from core import estimate
from tests.lab import Lab, wait_for

pytestmark = [pytest.mark.system, pytest.mark.slow]

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
FIRST_REPORT_S = 120  # torch and timm imports and the calibration, on two shared cores
JOB_S = 900  # each job: well under a minute of work, stretched for a machine shared by several developers
TOLERANCE = 0.30
REPORT_S = 1  # the worker's report interval here: a finished job's rate is in the next report
REPORTED_S = 10 * REPORT_S + 10
# A: the calibration job. B: other settings (size, images, epochs, batch, validation images), the same model.
A = {"model": "deit_tiny_patch16_224", "weights": "none", "image_size": 64, "train_per_class": 40, "val_limit": 200,
     "epochs": 2, "batch_size": 32, "precision": "fp32"}
B = {"model": "deit_tiny_patch16_224", "weights": "none", "image_size": 96, "train_per_class": 60, "val_limit": 300,
     "epochs": 3, "batch_size": 64, "precision": "fp32"}


@pytest.fixture
def data_dir(tmp_path):
    """1,000 training and 400 test images in the official layout (more than the tiny set: seconds per epoch)."""
    from worker.engine import data
    root = tmp_path / "cifar"
    train, val = data.generated(1000, 400, seed=3)
    data.write_cifar_batches(root, train, val, batches=2)
    return root


def _plan(lab, cfg) -> dict:
    return lab.client.post("/api/plan", json={"configs": [cfg]}).json()["items"][0]["estimate"]


def _epochs_s(lab, jid) -> float:
    return sum(m["seconds"] for m in lab.client.get(f"/api/jobs/{jid}/metrics").json())


def test_after_one_calibration_job_the_plan_of_another_is_within_30_percent(tmp_path, data_dir):
    lab = Lab(tmp_path / "lab", data_dir, redis=False)
    lab.env.update(BLOCKLAB_WORKER_REPORT_S=str(REPORT_S))
    try:
        lab.start_backend()
        lab.new_worker()
        wait_for(lambda: lab.client.get("/api/workers").json(), FIRST_REPORT_S, "the worker's first report")
        before = _plan(lab, B)
        assert not before["calibrated"] and before["range_s"]

        a = lab.submit("calibration", **A)
        lab.wait_status(a, "succeeded", timeout=JOB_S)
        key = f"{A['model']}@{A['image_size']}"
        wait_for(lambda: key in lab.client.get("/api/workers").json()[0]["measured"], REPORTED_S, "A's measured speed")
        after = _plan(lab, B)
        assert after["calibrated"] and after["basis"] == "scaled" and after["range_s"] is None

        b = lab.submit("second", **B)
        t0 = time.monotonic()
        job = lab.wait_status(b, "succeeded", timeout=JOB_S)
        waited = time.monotonic() - t0
        real = _epochs_s(lab, b)
        figures = {
            "machine": "2 shared CPU cores (loaded by colleagues' work)", "calibration_job": A, "second_job": B,
            "calibration_job_epochs_s": round(_epochs_s(lab, a), 1),
            "benchmark_gflops": lab.client.get("/api/workers").json()[0]["gflops"],
            "calibrated_gflops": after["gflops"],
            "uncalibrated_estimate_s": before["this_device_s"], "uncalibrated_range_s": before["range_s"],
            "calibrated_estimate_s": after["this_device_s"], "real_epochs_s": round(real, 1),
            "real_job_runtime_s": job["runtime_s"], "queued_to_done_s": round(waited, 1),
            "error": round(after["this_device_s"] / real - 1, 3),
            "uncalibrated_span": list(estimate.UNCALIBRATED_SPAN)}
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "plan_accuracy.json").write_text(json.dumps(figures, indent=1))
        print(json.dumps(figures, indent=1))
        assert abs(figures["error"]) <= TOLERANCE, figures
        low, high = before["range_s"]
        assert low <= real <= high, figures  # the uncalibrated range held the real time

        # B in bf16: where this CPU runs bf16 natively, the plan gave its time beside B's from B's fp32 rate and the
        # worker's bf16 speed-up for transformers (a range: core.estimate.BF16_SPAN); the real bf16 run lands in it.
        b_key = estimate.measured_key(B["model"], B["image_size"])
        wait_for(lambda: b_key in lab.client.get("/api/workers").json()[0]["measured"], REPORTED_S, "B's speed")
        rep = lab.client.get("/api/workers").json()[0]
        beside = lab.client.post("/api/plan", json={"configs": [B]}).json()["items"][0]["bf16"]
        import torch

        from worker.engine import bf16_supported
        if not bf16_supported(torch.device("cpu")):
            assert rep["bf16_speedup"] is None and beside is None, rep
            return
        assert beside["basis"] == "fp32 scaled" and beside["calibrated_by"] == [b_key]
        b16 = lab.submit("second in bf16", **{**B, "precision": "bf16"})
        lab.wait_status(b16, "succeeded", timeout=JOB_S)
        real16 = _epochs_s(lab, b16)
        figures.update(bf16_calibration_speedup=rep["bf16_speedup"]["transformer"],
                       bf16_planned_s=beside["this_device_s"], bf16_planned_range_s=beside["range_s"],
                       bf16_real_epochs_s=round(real16, 1), bf16_real_speedup=round(real / real16, 2))
        (ARTIFACTS / "plan_accuracy.json").write_text(json.dumps(figures, indent=1))
        print(json.dumps(figures, indent=1))
        low, high = beside["range_s"]
        assert low <= real16 <= high, figures
    except Exception:
        print(lab.logs())
        raise
    finally:
        lab.close()
