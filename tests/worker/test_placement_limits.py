"""The engine places its frozen features by core.memory's rules on the limits it reads (issue 16): simulated here
by standing in for the readers (host memory, the device's free memory, free disk). A cache that would fill the disk
is not kept (issue 15), and fp16 and bf16 runs never share a cache."""
from collections import namedtuple

import torch

from core import estimate, memory
from core.config import TrainConfig
from core.memory import GiB
from worker.engine import limits, store
from worker.engine.cachedir import CacheDir
from worker.engine.device import DevicePolicy
from worker.engine.train import Paths, run

TINY = dict(model="deit_tiny_patch16_224", weights="none", batch_size=32, image_size=32, val_limit=60,
            precision="fp32", seed=0)
Usage = namedtuple("Usage", "total used free")


def _disk(monkeypatch, free: int):
    monkeypatch.setattr(limits.shutil, "disk_usage", lambda path: Usage(free * 4, free * 3, free))


def test_a_free_t4s_limits_put_deit_b_on_disk_as_the_planner_says(monkeypatch, tmp_path):
    monkeypatch.setattr(limits, "host_available_bytes", lambda: 12 * GiB)
    _disk(monkeypatch, 80 * GiB)
    t4 = DevicePolicy(torch.device("cpu"), device_free_bytes=lambda: 16 * GiB, pin_memory=True)
    elems = estimate.flops_table()["deit_base_distilled_patch16_224"][224]["cached_elements"]
    blocks = memory.blocks(elems, 50_000, 10_000, 2, "float16")
    p = limits.choose_placement(sum(blocks), t4, tmp_path / "cache", blocks)
    assert p.where == "disk" and "memory-mapped file under " + str(tmp_path / "cache") in p.reason
    found = limits.machine_limits(t4, tmp_path / "cache")
    assert (found.host_available, found.device_free, found.disk_free) == (12 * GiB, 16 * GiB, 80 * GiB)
    assert memory.place(sum(blocks), found, blocks) == p  # one rule for the engine and the plan


def test_a_run_without_room_anywhere_trains_uncached_and_names_the_limits(tiny_cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "host_available_bytes", lambda: 0)
    _disk(monkeypatch, 1000)  # bytes: less than the tiny run's features
    s = run(TrainConfig(**TINY, epochs=1), Paths(tiny_cifar_dir, tmp_path / "o", cache_dir=tmp_path / "cache"))
    assert s["status"] == "succeeded" and not s["feature_cache"]["enabled"]
    assert "free disk" in s["feature_cache"]["reason"] and "host memory" in s["feature_cache"]["reason"]


def test_a_cache_that_would_fill_the_disk_is_not_kept(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    again = CacheDir(cache, 1 << 40)
    stores = {"x": store.FeatureStore(4, 1, [(3,)], torch.float16, memory.Placement("memory", "t"),
                                      DevicePolicy.for_device(torch.device("cpu")))}
    assert again.store("k" * 24, {}, stores) is not None  # room: kept
    _disk(monkeypatch, stores["x"].nbytes)  # the copy would take all of it
    assert again.store("j" * 24, {}, stores) is None and not (cache / ("j" * 24)).exists()
    assert not any(p.name.startswith(".") for p in cache.iterdir())  # no scratch left behind


def test_fp16_and_bf16_runs_never_share_a_cache(tiny_cifar_dir, tmp_path):
    cache = tmp_path / "cache"
    keys = {p: run(TrainConfig(**{**TINY, "precision": p}, epochs=1),
                   Paths(tiny_cifar_dir, tmp_path / p, cache_dir=cache))["feature_cache"]["key"]
            for p in ("bf16", "fp16", "fp32")}
    assert len(set(keys.values())) == 3, keys
