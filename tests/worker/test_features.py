"""Where the frozen-feature cache lives, decided by a size check before training."""
import json

import pytest
import torch

from core.config import TrainConfig
from worker.engine import limits
from worker.engine.device import DevicePolicy
from worker.engine.store import FeatureStore, Placement
from worker.engine.train import Paths, run

from .test_train import KEYS, TINY


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_memory_mapped_store_round_trips(tmp_path, dtype):
    store = FeatureStore(6, 2, [(4, 3)], dtype, Placement("disk", "test"), DevicePolicy.for_device(torch.device("cpu")), tmp_path / "s")
    assert (tmp_path / "s" / "input0.npy").is_file()
    idx, state = torch.tensor([1, 4]), torch.tensor([0, 1])
    f = torch.randn(2, 4, 3)
    store.put(idx, state, [f])
    assert store.missing(idx, state).tolist() == [False, False] and int(store.filled.sum()) == 2
    torch.testing.assert_close(store.get(idx, state, torch.float32)[0], f.to(dtype).float())
    store.save(tmp_path / "saved")
    again = FeatureStore(6, 2, [(4, 3)], dtype, Placement("memory", "test"), DevicePolicy.for_device(torch.device("cpu")))
    assert again.load(tmp_path / "saved")
    torch.testing.assert_close(again.get(idx, state, torch.float32)[0], f.to(dtype).float())


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_without_host_memory_the_cache_goes_to_disk_and_gives_the_same_metrics(tiny_cifar_dir, tmp_path, monkeypatch):
    cfg = TrainConfig(**TINY, epochs=2)
    mem = run(cfg, Paths(tiny_cifar_dir, tmp_path / "mem"))
    monkeypatch.setattr(limits, "host_available_bytes", lambda: 0)
    disk = run(cfg, Paths(tiny_cifar_dir, tmp_path / "disk", cache_dir=tmp_path / "cache"))
    assert mem["feature_cache"]["placement"] == "memory" and disk["feature_cache"]["placement"] == "disk"
    for a, b in zip(_rows(tmp_path / "mem"), _rows(tmp_path / "disk"), strict=True):
        assert all(a[k] == pytest.approx(b[k], abs=1e-6) for k in KEYS)


def test_when_nothing_fits_the_run_goes_on_uncached_and_says_why(tiny_cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "host_available_bytes", lambda: 0)
    s = run(TrainConfig(**TINY, epochs=1), Paths(tiny_cifar_dir, tmp_path / "o"))  # no cache dir for a file
    assert not s["feature_cache"]["enabled"] and "fit neither" in s["feature_cache"]["reason"]
    assert s["status"] == "succeeded"


def test_switching_the_cache_off_is_a_named_option(tiny_cifar_dir, tmp_path):
    s = run(TrainConfig(**TINY, epochs=1, feature_cache=False), Paths(tiny_cifar_dir, tmp_path / "o"))
    assert s["feature_cache"] == {"enabled": False, "reason": "turned off (feature_cache=false)"}
