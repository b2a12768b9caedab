"""The machine's limits, as the feature store's placement needs them: free device memory (PyTorch's cached blocks
counted as free), host memory this process may use (MemAvailable, or less under a cgroup's limit: a container's
worker sees the host's MemAvailable, not its own limit) and the free disk at the cache folder.

Probed here, decided in core.memory (torch-free, shared with the plan): the worker's self-report reads the same
numbers (worker/queue/self_report.py), so the plan and the engine place features with one rule on one set of limits.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from core import memory
from core.memory import Placement

from .device import DevicePolicy

MEMINFO = Path("/proc/meminfo")
CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().split()[0]
    except (OSError, IndexError):
        return None
    return int(text) if text.isdigit() else None  # "max" (cgroup v2: no limit) reads as None


def _meminfo_available() -> int | None:
    try:
        for line in MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _inactive_file(folder: Path, key: str) -> int:
    """Page cache the kernel reclaims before it kills anything: counted as available, as MemAvailable does."""
    try:
        for line in (folder / "memory.stat").read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_folders() -> list[tuple[str, Path]]:
    """This process's memory cgroup folders, innermost first, up to the mount root: a limit anywhere above
    applies too. ("v2", folder) for the unified hierarchy, ("v1", folder) for the memory controller."""
    out = []
    try:
        lines = SELF_CGROUP.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        hid, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if hid == "0" and controllers == "":
            kind, base = "v2", CGROUP_ROOT
        elif "memory" in controllers.split(","):
            kind, base = "v1", CGROUP_ROOT / "memory"
        else:
            continue
        rel = Path(path.lstrip("/"))
        for part in [rel, *rel.parents]:  # in a container the path often is not visible: the root is
            folder = base / part
            if folder.is_dir():
                out.append((kind, folder))
    return out


def _cgroup_available() -> int | None:
    """Memory left under this process's cgroup limits (the tightest one), None where no limit is set. A worker in
    a container sees the host's MemAvailable, not its own limit: filling past it gets the worker killed."""
    best = None
    for kind, folder in _cgroup_folders():
        if kind == "v2":
            limit, used = _read_int(folder / "memory.max"), _read_int(folder / "memory.current")
            cache = _inactive_file(folder, "inactive_file")
        else:
            limit, used = _read_int(folder / "memory.limit_in_bytes"), _read_int(folder / "memory.usage_in_bytes")
            cache = _inactive_file(folder, "total_inactive_file")
            if limit is not None and limit >= 1 << 60:  # v1's "no limit" is a huge number
                limit = None
        if limit is None or used is None:
            continue
        left = max(limit - used + cache, 0)
        best = left if best is None else min(best, left)
    return best


def host_available_bytes() -> int:
    """Host memory this process may still use: MemAvailable, or less where a cgroup (a container) limits it."""
    found = [v for v in (_meminfo_available(), _cgroup_available()) if v is not None]
    return min(found) if found else 0


def _cuda_cached_unused(device: torch.device) -> int:
    """Memory PyTorch's caching allocator holds but no tensor uses (a previous job's, in a long-lived worker):
    mem_get_info counts it as used, yet the cache is free to hand it out again."""
    if device.type != "cuda":
        return 0
    return max(torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device), 0)


def device_free_bytes(policy: DevicePolicy) -> int:
    """The device's free memory as the feature store can use it: the driver's free memory and the blocks PyTorch
    caches unused. A policy that already counts the cache says so (`free_counts_cached`, device.py)."""
    free = policy.device_free_bytes()
    if getattr(policy, "free_counts_cached", False):
        return free
    return free + _cuda_cached_unused(policy.device)


def machine_limits(policy: DevicePolicy, cache_dir: Path | None) -> memory.Limits:
    """The limits this process runs under, as core.memory decides with them: the device's free memory (PyTorch's
    cached blocks included), the host memory it may use (cgroup-aware), the free disk at the cache folder."""
    disk = None
    if cache_dir is not None:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            disk = shutil.disk_usage(cache_dir).free
        except OSError:
            disk = None  # an unusable cache folder: no disk placement
    return memory.Limits(host_available=host_available_bytes(),
                         device_free=device_free_bytes(policy) if policy.device_free_bytes is not None else None,
                         disk_free=disk, pinned=policy.pin_memory, cache_dir=str(cache_dir) if cache_dir else None)


def choose_placement(nbytes: int, policy: DevicePolicy, cache_dir: Path | None,
                     blocks: list[int] | None = None) -> Placement | None:
    """Where `nbytes` of features fit, leaving room for training; None when nowhere (core.memory.place's rules,
    on this machine's limits). `blocks`: the sizes of the separate allocations (one per split)."""
    return memory.place(nbytes, machine_limits(policy, cache_dir), blocks)
