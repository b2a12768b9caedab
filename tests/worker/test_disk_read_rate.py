"""The feature cache's disk read rate, measured where the run happens: a run whose features sit in a memory-mapped
file records how fast it read them back (bytes/s), and the worker's self-report carries it to the plan, which uses
it instead of an assumed rate."""
import pytest
import torch

from core.config import TrainConfig
from core.memory import Placement
from core.settings import Settings
from worker.engine import limits
from worker.engine.device import DevicePolicy
from worker.engine.store import FeatureStore
from worker.engine.train import Paths, run
from worker.queue import self_report

from .test_train import TINY

CPU = DevicePolicy.for_device(torch.device("cpu"))


def test_reads_from_a_memory_mapped_store_are_counted_and_timed(tmp_path):
    store = FeatureStore(8, 2, [(4, 3), (5,)], torch.float16, Placement("disk", "test"), CPU, tmp_path / "s")
    idx, state = torch.tensor([0, 3, 5]), torch.tensor([1, 0, 1])
    store.put(idx, state, [torch.randn(3, 4, 3), torch.randn(3, 5)])
    store.get(idx, state, torch.float32)
    store.get(idx[:2], state[:2], torch.float32)
    assert store.read[0] == 5 * (4 * 3 + 5) * 2 and store.read[1] > 0  # 5 rows of 17 fp16 values
    in_memory = FeatureStore(8, 2, [(4, 3)], torch.float16, Placement("memory", "test"), CPU)
    in_memory.get(idx, state, torch.float32)
    assert in_memory.read == [0, 0.0]  # only a disk placement says anything about the disk


def test_a_disk_cached_run_reports_its_read_rate_and_the_worker_passes_it_on(tiny_cifar_dir, tmp_path,
                                                                             monkeypatch):
    s = Settings(home=tmp_path / "home", data_dir=tiny_cifar_dir, allow_download=False)
    cfg = TrainConfig(**TINY, epochs=1)
    memory_run = run(cfg, Paths(tiny_cifar_dir, tmp_path / "mem"))
    assert "disk_read_bytes_per_s" not in memory_run["feature_cache"]
    monkeypatch.setattr(limits, "host_available_bytes", lambda: 0)  # no RAM to spare: a memory-mapped file
    summary = run(cfg, Paths(tiny_cifar_dir, s.runs_path / "job-3", cache_dir=tmp_path / "cache"))
    cache = summary["feature_cache"]
    assert cache["placement"] == "disk" and cache["disk_read_bytes_per_s"] > 0

    r = self_report.Reporter(s, "w3@test")
    assert r.report()["disk_read_bytes_per_s"] is None  # nothing measured yet: the plan assumes
    r.job_finished(3, cfg.to_dict())
    assert r.disk_read_bytes_per_s == pytest.approx(cache["disk_read_bytes_per_s"])
    assert r.report()["disk_read_bytes_per_s"] == pytest.approx(cache["disk_read_bytes_per_s"])
