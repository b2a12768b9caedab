"""The worker's self-report: what it finds (hub cache, local weights file, CIFAR-10), its calibration, the
refinement from a finished job, and the event it sends on the events queue."""
import json
from pathlib import Path

import pytest
from kombu import Connection

from core.config import preset
from core.protocol import EVENTS_QUEUE
from core.settings import Settings
from worker.queue import self_report


def _fake_hub_entry(hub: Path, repo: str, name: str = "model.safetensors", size: int = 3 * 2**20):
    """A file in Hugging Face's cache layout, as hf_hub_download leaves it."""
    folder = hub / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snap = folder / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / name).write_bytes(b"\0" * size)


def test_weights_are_found_in_the_hub_cache_for_the_pinned_tag_and_as_local_files(tmp_path):
    _fake_hub_entry(tmp_path / "hub", "timm/deit_tiny_patch16_224.fb_in1k")
    _fake_hub_entry(tmp_path / "hub", "timm/vgg19.some_other_tag")  # not the catalogue's tag: not these weights
    (tmp_path / "resnet152.pth").write_bytes(b"\0" * 2**20)
    found = self_report.weights_present(tmp_path)
    assert found["deit_tiny_patch16_224"]["hub"] and found["deit_tiny_patch16_224"]["hub_mb"] == 3.0
    assert not found["vgg19"]["hub"]
    assert found["resnet152"]["local"] == str(tmp_path / "resnet152.pth") and found["resnet152"]["local_mb"] == 1.0
    assert not found["resnet152"]["hub"] and found["deit_tiny_patch16_224"]["local"] is None


def test_data_is_present_as_the_batches_folder_or_the_archive(tmp_path, tiny_cifar_dir):
    assert self_report.data_present(tiny_cifar_dir)
    assert not self_report.data_present(tiny_cifar_dir, "cifar100")  # per dataset: CIFAR-10's folder is not CIFAR-100
    assert not self_report.data_present(tmp_path)
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    assert self_report.data_present(tmp_path)


@pytest.mark.slow  # three blocks built, their FLOPs counted and timed: seconds of CPU
def test_calibration_measures_a_positive_throughput_in_about_the_time_asked():
    cal = self_report.calibrate("cpu", seconds=0.3)
    assert cal["gflops"] > 0.1 and 0.3 <= cal["seconds"] < 5 and cal["steps"] >= 4
    for family, block in (("transformer", "ViT-S block"), ("cnn", "ResNet bottleneck")):
        bf16 = self_report.calibrate("cpu", seconds=0.1, precision="bf16", family=family)  # autocast, as the engine
        assert bf16["gflops"] > 0.1 and block in bf16["what"] and "bf16 forward+backward" in bf16["what"]


@pytest.mark.slow  # the start-up calibration three times over
def test_bf16_speed_ups_are_measured_only_where_the_device_runs_it_natively(monkeypatch):
    """Emulated bf16 runs slower than fp32: the plan shows a bf16 time only where the worker measured speed-ups."""
    for native in (False, True):
        monkeypatch.setattr(self_report, "bf16_native", lambda _d, native=native: native)
        cal = self_report.calibrate_all("cpu", seconds=0.05)
        assert cal["gflops"] > 0 and cal["bf16_native"] is native
        assert (set(cal["bf16_speedup"]) == {"transformer", "cnn"} and min(cal["bf16_speedup"].values()) > 0
                if native else cal["bf16_speedup"] is None)
    # A family whose bf16 measurement fails is left out, the other kept; all failing, the speed-ups are unknown,
    # never the worker without a report.
    real = self_report.bf16_speedup
    for broken in ({"cnn"}, {"cnn", "transformer"}):
        def failing(device, family, seconds=1.0, broken=broken):
            if family in broken:
                raise RuntimeError("no bf16 kernel for this op")
            return real(device, family, seconds)
        monkeypatch.setattr(self_report, "bf16_speedup", failing)
        cal = self_report.calibrate_all("cpu", seconds=0.05)
        assert cal["gflops"] > 0 and cal["bf16_native"]  # auto still runs bf16 there
        assert (cal["bf16_speedup"] is None if len(broken) == 2 else set(cal["bf16_speedup"]) == {"transformer"})


def test_a_finished_job_refines_the_rate_and_the_report_goes_out(tmp_path, tiny_cifar_dir, monkeypatch):
    from worker.engine.train import Paths, run
    s = Settings(home=tmp_path / "home", data_dir=tiny_cifar_dir, allow_download=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = preset("quick", weights="none", epochs=2, image_size=32, batch_size=64, val_limit=40)
    run(cfg, Paths(tiny_cifar_dir, s.runs_path / "job-7"))
    r = self_report.Reporter(s, "w9@test")
    r.calibration = {"gflops": 1.0}
    r.job_finished(7, cfg.to_dict())
    assert r.measured["deit_tiny_patch16_224@32"] > 0

    with Connection(s.broker_url) as conn:
        q = conn.SimpleQueue(EVENTS_QUEUE)
        msg = q.get(timeout=5)
        ev = msg.payload
        msg.ack()
        q.close()
    assert ev["type"] == "worker" and ev["job_id"] == 0
    rep = ev["worker"]
    assert rep["name"] == "w9@test" and rep["device"] == "cpu (cpu)" and rep["gflops"] == 1.0
    assert rep["measured"] == r.measured and rep["data_present"] and rep["hub_offline"]
    assert rep["bf16_speedup"] is None  # calibrated in fp32 only
    assert rep["allow_download"] is False and rep["data_host_reachable"] is False
    assert json.dumps(rep)  # plain JSON, as the broker carries it

    # The same job, had it computed in bf16 (what its summary says ran), times bf16 runs only: keyed so.
    bf16 = s.runs_path / "job-8"
    bf16.mkdir()
    (bf16 / "metrics.jsonl").write_text((s.runs_path / "job-7" / "metrics.jsonl").read_text())
    summary = json.loads((s.runs_path / "job-7" / "summary.json").read_text())
    (bf16 / "summary.json").write_text(json.dumps({**summary, "precision": "bf16"}))
    r.job_finished(8, cfg.to_dict())
    assert set(r.measured) == {"deit_tiny_patch16_224@32", "deit_tiny_patch16_224@32@bf16"}


def test_a_job_without_a_summary_teaches_nothing(tmp_path):
    s = Settings(home=tmp_path / "home")
    r = self_report.Reporter(s, "w@x")
    r.job_finished(99, {})
    assert r.measured == {}
