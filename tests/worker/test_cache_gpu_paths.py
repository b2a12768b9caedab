"""Issue 15, items 2-5: the feature cache's GPU paths, shown on the CPU (the fill's chunks: test_fill_chunks.py).

Scratch folders are per process and never outlive it; host-resident features go through a reusable (pinned)
staging buffer and the placement counts what pinning really takes; an epoch reads nothing back from the device
per batch; free memory counts PyTorch's cached blocks and cgroup limits. GPU-only branches are forced through the DevicePolicy or by standing in for torch.cuda's readers."""
import os
import subprocess
import sys
import time

import pytest
import torch

from core import memory
from core.config import TrainConfig
from worker.engine import cachedir, limits
from worker.engine import train as engine
from worker.engine.cachedir import CacheDir
from worker.engine.device import DevicePolicy
from worker.engine.store import FeatureStore, Placement
from worker.engine.train import Paths, run

from .readbacks import Readbacks
from .test_train import TINY

CPU = DevicePolicy.for_device(torch.device("cpu"))
GiB = 1 << 30


# -- item 2: scratch folders ------------------------------------------------------------------------------------
def _scratch(root):
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".")) if root.is_dir() else []


def test_two_builders_with_one_key_never_share_files(tmp_path):
    """A learning-rate sweep: two workers build the same key at once. Each has its own folder, so the second's
    w+ memory map never truncates the first's live one."""
    cdir = CacheDir(tmp_path / "cache", 1 << 40)
    a, b = cdir.scratch("k"), cdir.scratch("k")
    assert a != b and a.name.startswith(".k.building.") and str(os.getpid()) in a.name.split(".")
    first = FeatureStore(6, 2, [(4, 3)], torch.float16, Placement("disk", "t"), CPU, a / "train")
    f = torch.randn(2, 4, 3)
    first.put(torch.tensor([1, 4]), torch.tensor([0, 1]), [f])
    FeatureStore(6, 2, [(4, 3)], torch.float16, Placement("disk", "t"), CPU, b / "train")  # the second builder
    got = first.get(torch.tensor([1, 4]), torch.tensor([0, 1]), torch.float32)[0]
    torch.testing.assert_close(got, f.half().float())
    assert (a / "train" / "input0.npy").stat().st_size > 128  # not truncated


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.subprocess
def test_eviction_removes_stale_scratch_and_counts_live_scratch(tmp_path):
    root = tmp_path / "cache"
    root.mkdir()
    host = cachedir.HOST
    dead = root / f".k1.building.{host}.{_dead_pid()}.aa"  # its process is gone: a crash or a kill
    live = root / f".k2.building.{host}.{os.getppid()}.bb"  # another live process's build
    legacy = root / ".k3.building"  # a name from before scratch names carried a pid, untouched for two days
    old = time.time() - 2 * cachedir.STALE_SCRATCH_S
    for d, size in ((dead, 1000), (live, 3000), (legacy, 1000)):
        d.mkdir()
        (d / "input0.npy").write_bytes(b"x" * size)
    os.utime(legacy / "input0.npy", (old, old))
    os.utime(legacy, (old, old))
    entry = root / "k4"
    entry.mkdir()
    (entry / "input0.npy").write_bytes(b"y" * 2000)
    (entry / "meta.json").write_text("{}")
    removed = CacheDir(root, 6000).evict(keep_free=1500)  # 3000 live + 2002 kept + 1500 > 6000: k4 goes
    assert {p.name for p in removed} == {dead.name, legacy.name, "k4"}
    assert _scratch(root) == [live.name]
    assert CacheDir(root, 1 << 40).evict() == []  # the live build is never removed


def test_no_scratch_folder_outlives_a_run_that_ends_or_fails(tiny_cifar_dir, tmp_path, monkeypatch):
    """Disk placement (no host memory): the building folder goes on success (its cache kept as an entry) and on
    a failure (here an error in the first epoch's training); the CUDA cache is emptied either way."""
    monkeypatch.setattr(limits, "host_available_bytes", lambda: 0)
    released = []
    monkeypatch.setattr(engine, "release_memory", lambda device: released.append(device))
    cache = tmp_path / "cache"
    s = run(TrainConfig(**TINY, epochs=1), Paths(tiny_cifar_dir, tmp_path / "ok", cache_dir=cache))
    assert s["feature_cache"]["placement"] == "disk" and s["feature_cache"]["kept"]
    assert _scratch(cache) == [] and (cache / s["feature_cache"]["key"] / "meta.json").is_file()

    def boom(*a, **k):
        assert _scratch(cache) and "building" in _scratch(cache)[0]  # the store was being built on disk
        raise RuntimeError("CUDA out of memory (a stand-in)")
    monkeypatch.setattr(engine, "_train_epoch", boom)
    with pytest.raises(RuntimeError, match="stand-in"):
        run(TrainConfig(**{**TINY, "val_limit": 50}, epochs=1), Paths(tiny_cifar_dir, tmp_path / "bad",
                                                                        cache_dir=cache))
    assert _scratch(cache) == []
    assert released == [torch.device("cpu")] * 2


# -- item 3: pinned staging and the allocator's rounding -----------------------------------------------------------
def test_host_features_go_through_one_reused_pinned_staging_buffer(monkeypatch):
    """A store in host memory read by another device (the meta device stands in for the GPU): each lookup gathers
    into a pinned buffer allocated once (index_select into out=), and that buffer is what the non-blocking copy
    reads, so the copy can run asynchronously."""
    pinned = []

    def fake_pinned(shape, dtype):
        t = torch.empty(shape, dtype=dtype)
        pinned.append(t)
        return t
    policy = DevicePolicy(torch.device("meta"), pin_memory=True, pinned_empty=fake_pinned)
    store = FeatureStore(20, 2, [(3, 4)], torch.float16, Placement("memory", "t"), policy)
    assert len(pinned) == 1  # the store itself
    data = torch.randn(20, 2, 3, 4)
    store.tensors[0].copy_(data.half())
    copies = []
    orig_to = torch.Tensor.to

    def to(t, *a, **k):
        if a and isinstance(a[0], torch.device) and a[0].type == "meta":
            copies.append((t.data_ptr(), k.get("non_blocking", False), t.clone()))
        return orig_to(t, *a, **k)
    monkeypatch.setattr(torch.Tensor, "to", to)
    for _ in range(3):
        idx, state = torch.randperm(20)[:8], torch.randint(0, 2, (8,))
        out = store.get(idx, state, torch.float32)[0]
        assert out.device.type == "meta" and out.shape == (8, 3, 4) and out.dtype == torch.float32
        torch.testing.assert_close(copies[-1][2].float(), data[idx, state].half().float())
    staging = {t.data_ptr() for t in pinned[1:]}
    assert len(pinned) == 3 and all(p in staging for p, _, _ in copies)  # two buffers, in turn, never new ones
    assert all(nb for _, nb, _ in copies) and len({p for p, _, _ in copies}) == 2


def test_the_placement_check_counts_the_pinned_allocators_rounding(monkeypatch):
    monkeypatch.setattr(limits, "host_available_bytes", lambda: 12 * GiB)  # 0.6 x 12 = 7.2 GiB to use
    pinned, plain = CPU.replace(pin_memory=True), CPU
    need = 5 * GiB + 1  # pins 8 GiB
    assert limits.choose_placement(need, plain, None).where == "memory"
    assert limits.choose_placement(need, pinned, None) is None
    blocks = [3 * GiB + 1, GiB + 1]  # 4 + 2 GiB pinned: fits
    p = limits.choose_placement(sum(blocks), pinned, None, blocks)
    assert p.where == "memory" and "6.00 GiB as the allocator rounds" in p.reason
    assert memory.pinned_bytes(GiB) == GiB and memory.pinned_bytes(GiB + 1) == 2 * GiB


# -- item 5: free memory -------------------------------------------------------------------------------------------
def test_device_free_memory_counts_pytorchs_cached_blocks(monkeypatch):
    """A previous job's blocks stay reserved in PyTorch's allocator: mem_get_info calls them used."""
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d=None: 30 * GiB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: 2 * GiB)
    gpu = DevicePolicy(torch.device("cuda"), device_free_bytes=lambda: 10 * GiB)
    assert limits.device_free_bytes(gpu) == 38 * GiB
    p = limits.choose_placement(20 * GiB, gpu, None)
    assert p.where == "device"  # 20 < 0.6 x 38 - 2; with mem_get_info alone it went to the host
    assert limits.device_free_bytes(CPU.replace(device_free_bytes=lambda: 5)) == 5  # no cuda calls on a CPU


def test_release_memory_empties_the_cuda_cache(monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(1))
    engine.release_memory(torch.device("cpu"))
    assert emptied == []
    engine.release_memory(torch.device("cuda:0"))
    assert emptied == [1]


def _fake_proc(tmp_path, monkeypatch, cgroup_line, mem_available=100 * GiB):
    (tmp_path / "meminfo").write_text(f"MemTotal: 999 kB\nMemAvailable: {mem_available // 1024} kB\n")
    (tmp_path / "cgroup").write_text(cgroup_line + "\n")
    monkeypatch.setattr(limits, "MEMINFO", tmp_path / "meminfo")
    monkeypatch.setattr(limits, "SELF_CGROUP", tmp_path / "cgroup")
    monkeypatch.setattr(limits, "CGROUP_ROOT", tmp_path / "fs")


def test_host_memory_is_limited_by_cgroup_v2(tmp_path, monkeypatch):
    _fake_proc(tmp_path, monkeypatch, "0::/worker")
    assert limits.host_available_bytes() == 100 * GiB  # no cgroup folder: MemAvailable
    job = tmp_path / "fs" / "worker"
    job.mkdir(parents=True)
    (job / "memory.max").write_text(f"{8 * GiB}\n")
    (job / "memory.current").write_text(f"{6 * GiB}\n")
    (job / "memory.stat").write_text(f"anon 1\ninactive_file {GiB}\nactive_file 5\n")
    assert limits.host_available_bytes() == 3 * GiB  # 8 - 6 + the reclaimable page cache
    (job / "memory.max").write_text("max\n")
    (tmp_path / "fs" / "memory.max").write_text(f"{7 * GiB}\n")  # a limit further up applies too
    (tmp_path / "fs" / "memory.current").write_text(f"{5 * GiB}\n")
    assert limits.host_available_bytes() == 2 * GiB


def test_host_memory_is_limited_by_cgroup_v1(tmp_path, monkeypatch):
    _fake_proc(tmp_path, monkeypatch, "4:memory:/docker/abc", mem_available=3 * GiB)
    mem = tmp_path / "fs" / "memory"  # in the container only the root of the hierarchy is visible
    mem.mkdir(parents=True)
    (mem / "memory.limit_in_bytes").write_text(f"{9223372036854771712}\n")  # v1's "no limit"
    (mem / "memory.usage_in_bytes").write_text(f"{GiB}\n")
    assert limits.host_available_bytes() == 3 * GiB
    (mem / "memory.limit_in_bytes").write_text(f"{4 * GiB}\n")
    (mem / "memory.usage_in_bytes").write_text(f"{3 * GiB}\n")
    assert limits.host_available_bytes() == GiB  # the container's limit, not the host's MemAvailable


# -- item 4: no device-to-host readback per batch --------------------------------------------------------------------
def test_an_epoch_reads_nothing_back_from_the_device_per_batch(tiny_cifar_dir, tmp_path, monkeypatch):
    """Every readback the engine's code makes during an epoch's training (.item, .cpu, .tolist, .numpy, float(),
    int(), bool() of a tensor) is counted: 25 batches, and only the epoch-end accumulation reads
    back (the loss and the accuracy). Host bookkeeping on host tensors (FeatureStore.lacking) is not a readback;
    calls from inside PyTorch (Adam's step counter lives on the host) are not the engine's. The clock is read after
    a synchronize."""
    counting = Readbacks(monkeypatch)
    counting.host_only(FeatureStore, "lacking")
    events = []
    monkeypatch.setattr(engine, "synchronize", lambda device: events.append("sync"))
    orig_clock = engine.time.perf_counter
    monkeypatch.setattr(engine.time, "perf_counter", lambda: events.append("clock") or orig_clock())
    s = run(TrainConfig(**{**TINY, "batch_size": 8}, epochs=1), Paths(tiny_cifar_dir, tmp_path / "o"))
    assert s["status"] == "succeeded" and s["feature_cache"]["enabled"]
    assert counting.calls == ["__float__", "__float__"]  # float(loss_sum), float(correct): at the end only
    clock_reads = [i for i, e in enumerate(events) if e == "clock"]
    assert len(clock_reads) >= 3 and all(events[i - 1] == "sync" for i in clock_reads)
