"""Where a run's frozen features go, decided from the machine's limits: GPU memory, host memory, or a
memory-mapped file on disk (or nowhere: the cache is off). Torch-free, so the engine (worker/engine/features.py,
with the limits it reads from the device, /proc/meminfo and the cgroup) and the backend's plan (with the limits a
worker reported) decide with the same function.

The rules, in order (the training itself needs the rest):
    device   the features take under 60 % of the device's free memory, less 2 GiB for the block's training
    memory   they take under 60 % of the host memory this process may use (the cgroup's limit where lower);
             pinned for a GPU, which the caching host allocator rounds up to a power of two per block
    disk     they take under 90 % of the cache folder's free disk: a memory-mapped file the kernel pages in
A 31 GiB DeiT-B cache on a free Colab T4 (15 GiB GPU, 12 GiB RAM) therefore goes to disk, and the reason says so.

The size of a cache (`feature_bytes`) is the block input's values per image, measured on the real timm models by
tools/gen_flops.py (core/flops.json `cached_elements`), times the images and flip states, times the storage dtype.
"""
from __future__ import annotations

from dataclasses import dataclass

GiB = 2**30
DTYPE_BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


@dataclass(frozen=True)
class Limits:
    """What a machine offers the feature cache, in bytes (None: there is no such place)."""
    host_available: int  # host memory this process may still use (MemAvailable, or less under a cgroup limit)
    device_free: int | None = None  # the GPU's free memory (PyTorch's unused cached blocks included); None: a CPU
    disk_free: int | None = None  # free disk at the cache folder; None: no cache folder
    pinned: bool = False  # host-resident features are pinned (a GPU copies from them)
    cache_dir: str | None = None  # where the memory-mapped files would go, for the reason's words


LABELS = {"device": "GPU memory", "memory": "host memory", "disk": "memory-mapped file", "off": "not cached"}


@dataclass(frozen=True)
class Placement:
    where: str  # "device" | "memory" | "disk"
    reason: str


def pinned_bytes(nbytes: int) -> int:
    """What pinning `nbytes` takes: PyTorch's caching host allocator rounds every block up to a power of two
    (issue 15: NFNet-F6's 61.7 GiB of features would pin 72 GiB)."""
    return 1 << max(int(nbytes) - 1, 0).bit_length() if nbytes > 0 else 0


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


def _size(n: int) -> str:
    """A cache's size: GiB to two decimals, a small one in MiB (a 6.5 MB cache read "0.00 GiB of features")."""
    return f"{n / GiB:.2f} GiB" if n >= GiB / 10 else f"{n / (GiB / 1024):.1f} MiB"


def place(nbytes: int, limits: Limits, blocks: list[int] | None = None) -> Placement | None:
    """Where `nbytes` of features fit under `limits`; None when nowhere. `blocks`: the sizes of the separate
    allocations (one per split and cached tensor), which pinning rounds one by one."""
    size = f"{_size(nbytes)} of features"
    no_device = ""
    if limits.device_free is not None:
        if nbytes < 0.6 * limits.device_free - 2 * GiB:
            return Placement("device", f"{size} fit in {_gib(limits.device_free)} free GPU memory")
        no_device = f"not in {_gib(limits.device_free)} free GPU memory, "
    cost = sum(pinned_bytes(b) for b in (blocks or [nbytes])) if limits.pinned else nbytes
    if cost < 0.6 * limits.host_available:
        pinned = f", pinned ({cost / GiB:.2f} GiB as the allocator rounds)" if limits.pinned else ""
        return Placement("memory", f"{size} fit {no_device}in {_gib(limits.host_available)} available host "
                                   f"memory{pinned}")
    short = f"{no_device}not in {_gib(limits.host_available)} available host memory"
    if limits.disk_free is not None and nbytes < 0.9 * limits.disk_free:
        where = f" under {limits.cache_dir}" if limits.cache_dir else ""
        return Placement("disk", f"{size}: {short}, so a memory-mapped file{where} ({_gib(limits.disk_free)} free "
                                 "disk); every epoch reads it back from disk")
    return None


def refusal(nbytes: int, limits: Limits) -> str:
    """Why `place` found nowhere, in words (the cache is then off and the frozen part runs every epoch)."""
    disk = ("no cache folder" if limits.disk_free is None else f"{_gib(limits.disk_free)} free disk")
    device = "" if limits.device_free is None else f"{_gib(limits.device_free)} free GPU memory, "
    return (f"{nbytes / GiB:.1f} GiB of features fit neither in {device}{_gib(limits.host_available)} available "
            f"host memory nor on disk ({disk}): the frozen part runs every epoch")


def feature_bytes(cached_elements: int, train_images: int, val_images: int, flip_states: int, dtype: str) -> int:
    """Bytes of a run's cache: every training image in each flip state and every validation image once."""
    return cached_elements * (train_images * flip_states + val_images) * DTYPE_BYTES[dtype]


def blocks(cached_elements: int, train_images: int, val_images: int, flip_states: int, dtype: str) -> list[int]:
    """The allocations a cache makes (one per split), as `place` counts them for pinning."""
    per = cached_elements * DTYPE_BYTES[dtype]
    return [per * train_images * flip_states, per * val_images]


# A free Colab T4 session, for the plan's "on a free T4" line: about 12.7 GB of RAM (some 11 GiB left beside the
# runtime), the T4's 16 GB (15 GiB free to PyTorch), some 70 GiB of free disk. Assumed, not read from a session.
COLAB_T4 = Limits(host_available=11 * GiB, device_free=15 * GiB, disk_free=70 * GiB, pinned=True,
                  cache_dir="the notebook's disk")
