"""Frozen-feature cache: run the frozen part once per image and flip state, not once per image per epoch.

In a single-block fine-tune everything before the block is frozen and deterministic (inference mode), so its
output for an image depends only on the image and on the paper's one augmentation, the horizontal flip. The
cache stores that output for both flip states of every training image and for every validation image; every
epoch then runs only the block, its kept layers and the head. The result is exact up to the storage dtype.

Storage, chosen by a size check before training (the run's DevicePolicy, device.py, says what the device offers):
the device when it fits, else host memory (pinned when a GPU reads it, counted as the pinned allocator rounds, and
read through a reusable staging buffer so the copies stay asynchronous), else a memory-mapped file under the cache
directory (a building folder of its own, `.<key>.building.<host>.<pid>.<random>`, removed however the run ends).
A finished cache is kept under `<cache_dir>/<key>/`, keyed by model, split point, the frozen part's
weights (never the trainable block's: a resumed run, whose block has trained, finds the cache its first attempt
kept), data fingerprints, image size, preprocessing and numerics, so a second job on the same model and data (a
learning-rate sweep) skips the frozen part entirely. Old entries are evicted (least recently used) to keep the
directory under its size cap.

What is cached depends on the depth (`trainable_blocks`): the input of the first trainable block (K >= 1; CoaT:
of its stage's first block), the heads' input (K = 0: pooled features, so training runs the heads alone), or
nothing (K = all). The key names that point, so two depths never share an entry.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import socket
import time
from pathlib import Path

import numpy as np
import torch

from core import memory
from core.memory import Placement, pinned_bytes  # noqa: F401 - the stores' placement; pinned sizes (tests, bench)

from .device import DevicePolicy
from .weights import fingerprint

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # bump when what is cached or its key changes meaning (3: the key names the cache point)
# The frozen part runs at most this many images at a time (a batch of 512 at 224 px in pieces): its output per
# image does not depend on the others, and a stop is checked between pieces and inside each (stop.py), so even
# the longest layer of one piece is short. Large enough to keep a GPU busy.
FROZEN_CHUNK = 128
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def cache_key(**parts) -> str:
    blob = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


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


def _host_available_bytes() -> int:
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
    return memory.Limits(host_available=_host_available_bytes(),
                         device_free=device_free_bytes(policy) if policy.device_free_bytes is not None else None,
                         disk_free=disk, pinned=policy.pin_memory, cache_dir=str(cache_dir) if cache_dir else None)


def choose_placement(nbytes: int, policy: DevicePolicy, cache_dir: Path | None,
                     blocks: list[int] | None = None) -> Placement | None:
    """Where `nbytes` of features fit, leaving room for training; None when nowhere (core.memory.place's rules,
    on this machine's limits). `blocks`: the sizes of the separate allocations (one per split)."""
    return memory.place(nbytes, machine_limits(policy, cache_dir), blocks)


def _same_device(a: torch.device, b: torch.device) -> bool:
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


class FeatureStore:
    """Cached frozen features of one split: for each block input, a tensor (N, states, *shape)."""

    def __init__(self, n: int, states: int, shapes: list[tuple[int, ...]], dtype: torch.dtype,
                 placement: Placement, policy: DevicePolicy, path: Path | None = None):
        self.n, self.states, self.shapes, self.dtype = n, states, shapes, dtype
        self.placement = placement
        self.policy = policy
        self.device = policy.device
        self.filled = torch.zeros(n, states, dtype=torch.bool)
        self.tensors = [self._alloc(i, (n, states, *s), path) for i, s in enumerate(shapes)]
        self._staging: list[list[torch.Tensor]] = [[] for _ in shapes]  # per tensor: two host buffers, in turn
        self._copied: list[list] = [[None, None] for _ in shapes]  # per buffer: the event of its last copy
        self._turn = 0
        self.read = [0, 0.0]  # bytes and seconds of this run's reads from a memory-mapped (disk) placement

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    @staticmethod
    def bytes_needed(n: int, states: int, shapes, dtype: torch.dtype) -> int:
        return sum(FeatureStore.blocks(n, states, shapes, dtype))

    @staticmethod
    def blocks(n: int, states: int, shapes, dtype: torch.dtype) -> list[int]:
        """The size of each allocation the store makes (one per cached tensor)."""
        item = torch.empty((), dtype=dtype).element_size()
        return [n * states * int(np.prod(s)) * item for s in shapes]

    def _alloc(self, i: int, shape, path: Path | None) -> torch.Tensor:
        where = self.placement.where
        if where == "device":
            return torch.empty(shape, dtype=self.dtype, device=self.device)
        if where == "memory":
            return self.policy.host_empty(shape, self.dtype)
        assert path is not None
        path.mkdir(parents=True, exist_ok=True)
        # numpy has no bfloat16: store raw 16-bit words and view them back.
        np_dtype = np.float32 if self.dtype == torch.float32 else np.int16
        mm = np.lib.format.open_memmap(path / f"input{i}.npy", mode="w+", dtype=np_dtype, shape=shape)
        t = torch.from_numpy(mm)
        return t if self.dtype == torch.float32 else t.view(self.dtype)

    def missing(self, idx: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        return ~self.filled[idx, state]

    def lacking(self, idx: torch.Tensor, state: torch.Tensor) -> torch.Tensor | None:
        """The mask of (idx, state) not filled yet, None when all are: host tensors and the host mask, so the
        answer never waits for the device."""
        miss = self.missing(idx, state)
        return miss if bool(miss.any()) else None

    def put(self, idx: torch.Tensor, state: torch.Tensor, feats: list[torch.Tensor]) -> None:
        for store, f in zip(self.tensors, feats):
            store[idx.to(store.device), state.to(store.device)] = f.to(store.device, self.dtype)
        self.filled[idx, state] = True

    def get(self, idx: torch.Tensor, state: torch.Tensor, dtype: torch.dtype,
            on_device: tuple[torch.Tensor, torch.Tensor] | None = None) -> list[torch.Tensor]:
        """The features of (idx, state) on the run's device. `idx`, `state`: host tensors; `on_device`: the same on
        the run's device, when the caller has them (a slice of the epoch's order): a store on the device is indexed
        with those, so a batch moves no index across. A store in host memory (or on disk) is gathered into a
        reusable staging buffer, pinned where the device copies from it, and copied without blocking."""
        t0 = time.perf_counter() if self.placement.where == "disk" else 0.0
        out = []
        for i, store in enumerate(self.tensors):
            if _same_device(store.device, self.device):
                ix, st = on_device if on_device is not None else (idx, state)
                f = store[ix.to(store.device), st.to(store.device)]
            else:
                f = self._staged(i, store, idx, state)
                f = f.to(self.device, non_blocking=True)
                self._record_copy(i)
            out.append(f.to(dtype))
        self._turn ^= 1
        if self.placement.where == "disk":  # what this machine's disk (and page cache) really delivers to a run
            self.read[0] += len(idx) * (self.nbytes // (self.n * self.states))
            self.read[1] += time.perf_counter() - t0
        return out

    def _staged(self, i: int, store: torch.Tensor, idx: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """store[idx, state] gathered into this turn's staging buffer (index_select into `out=`: the pinned buffer
        itself, never a new pageable tensor, which would make the copy synchronous)."""
        k = len(idx)
        buf = self._staging_buffer(i, k)
        flat = store.view(self.n * self.states, *store.shape[2:])
        torch.index_select(flat, 0, idx * self.states + state, out=buf[:k])
        return buf[:k]

    def _staging_buffer(self, i: int, rows: int) -> torch.Tensor:
        """Two buffers per tensor, used in turn: a buffer is written again only after its copy of two lookups ago
        has finished (its event), so a non-blocking copy never reads a buffer being overwritten."""
        bufs = self._staging[i]
        if not bufs or len(bufs[0]) < rows:
            shape = (rows, *self.tensors[i].shape[2:])
            bufs[:] = [self.policy.host_empty(shape, self.tensors[i].dtype) for _ in range(2)]
            self._copied[i] = [None, None]
        event = self._copied[i][self._turn]
        if event is not None:
            event.synchronize()
        return bufs[self._turn]

    def _record_copy(self, i: int) -> None:
        if self.device.type == "cuda":  # elsewhere a host-to-device copy is synchronous: nothing to wait for
            event = torch.cuda.Event()
            event.record()
            self._copied[i][self._turn] = event

    # -- persistence ---------------------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for i, t in enumerate(self.tensors):
            raw = t.cpu() if t.dtype == torch.float32 else t.cpu().view(torch.int16)
            np.save(folder / f"input{i}.npy", raw.numpy())
        np.save(folder / "filled.npy", self.filled.numpy())

    def load(self, folder: Path) -> bool:
        try:
            filled = torch.from_numpy(np.load(folder / "filled.npy"))
            arrays = [np.load(folder / f"input{i}.npy", mmap_mode="r") for i in range(len(self.tensors))]
        except (OSError, ValueError):
            return False
        if filled.shape != self.filled.shape or any(a.shape != tuple(t.shape) for a, t in zip(arrays, self.tensors)):
            return False
        for t, a in zip(self.tensors, arrays):
            src = torch.from_numpy(np.array(a))  # a private copy: the file is opened read-only
            t.copy_(src if t.dtype == torch.float32 else src.view(t.dtype))
        self.filled.copy_(filled)
        return True


STALE_SCRATCH_S = 24 * 3600  # a scratch folder whose owner cannot be asked (another host) is stale after this
_HOST = socket.gethostname().replace(".", "-")


def scratch_name(key: str, kind: str) -> str:
    """A scratch folder's name, unique to this process: `.<key>.<kind>.<host>.<pid>.<random>`. Two workers with
    the same key (a learning-rate sweep) so never open the same files, and eviction can tell whose it is."""
    return f".{key}.{kind}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _scratch_stale(p: Path, now: float) -> bool:
    """A scratch folder is stale when its process is gone (same host), or when nothing in it changed for
    STALE_SCRATCH_S: what covers another host's folders, names from before scratch names carried a pid, and a pid
    reused by an unrelated process. (Removing a live run's folder is harmless on Linux: its memory map stays valid
    and `persist` saves from it.)"""
    parts = p.name[1:].split(".")
    if len(parts) == 5 and parts[2] == _HOST and parts[3].isdigit() and not _pid_alive(int(parts[3])):
        return True
    try:
        newest = max([p.stat().st_mtime] + [f.stat().st_mtime for f in p.rglob("*")])
    except OSError:
        return False
    return now - newest > STALE_SCRATCH_S


def _own(p: Path) -> bool:
    parts = p.name[1:].split(".")
    return len(parts) == 5 and parts[2] == _HOST and parts[3] == str(os.getpid())


def _size(p: Path) -> int:
    total = 0
    for f in p.rglob("*"):
        try:
            if f.is_file():
                total += f.stat().st_size
        except OSError:  # removed meanwhile by its owner
            pass
    return total


class CacheDir:
    """Finished caches on disk, one folder per key, evicted least-recently-used beyond `cap_bytes`. Scratch
    folders (a cache being built, or being saved) start with a dot and name their process; the live ones count
    towards the cap, stale ones (their process gone) are removed."""

    def __init__(self, root: Path, cap_bytes: int):
        self.root = Path(root)
        self.cap = cap_bytes

    def entry(self, key: str) -> Path:
        return self.root / key

    def scratch(self, key: str, kind: str = "building") -> Path:
        """A new scratch folder of this process (never one another process has open)."""
        self.root.mkdir(parents=True, exist_ok=True)
        p = self.root / scratch_name(key, kind)
        p.mkdir()
        return p

    def lookup(self, key: str) -> Path | None:
        p = self.entry(key)
        if (p / "meta.json").is_file():
            os.utime(p / "meta.json")  # mark as recently used
            return p
        return None

    def store(self, key: str, meta: dict, stores: dict[str, FeatureStore]) -> Path | None:
        need = sum(s.nbytes for s in stores.values())
        self.root.mkdir(parents=True, exist_ok=True)
        if need > self.cap:
            log.info("feature cache: %.2f GiB exceeds the cache cap; not kept for later jobs", need / 2**30)
            return None
        self.evict(keep_free=need)
        free = shutil.disk_usage(self.root).free
        if need > 0.9 * free:  # a copy that would fill the disk: the run keeps going, its features are not kept
            log.warning("feature cache: %.2f GiB not kept for later jobs: %.1f GiB free disk under %s", need / 2**30,
                        free / 2**30, self.root)
            return None
        tmp = self.scratch(key, "saving")
        try:
            for name, s in stores.items():
                s.save(tmp / name)
            (tmp / "meta.json").write_text(json.dumps({**meta, "saved_at": time.time(), "bytes": need}))
            final = self.entry(key)
            if final.exists():  # an older, less complete copy: swap it out
                old = self.root / scratch_name(key, "old")
                os.replace(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # gone already after the rename
        return final

    def entries(self) -> list[tuple[float, int, Path]]:
        out = []
        if not self.root.is_dir():
            return out
        for p in self.root.iterdir():
            meta = p / "meta.json"
            if p.is_dir() and not p.name.startswith(".") and meta.is_file():
                out.append((meta.stat().st_mtime, _size(p), p))
        return sorted(out)

    def scratch_folders(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(".")]

    def remove_stale(self) -> list[Path]:
        """Remove the scratch folders of processes that are gone (a crash, a kill): nothing else ever would."""
        now, removed = time.time(), []
        for p in self.scratch_folders():
            if _scratch_stale(p, now):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        return removed

    def evict(self, keep_free: int = 0) -> list[Path]:
        """Stale scratch first, then finished entries, oldest use first, until entries, other live processes'
        scratch folders and `keep_free` fit the cap (this process's own scratch is about to go)."""
        removed = self.remove_stale()
        entries = self.entries()
        total = sum(e[1] for e in entries) + sum(_size(p) for p in self.scratch_folders() if not _own(p))
        for _mtime, size, path in entries:  # oldest use first
            if total + keep_free <= self.cap:
                break
            shutil.rmtree(path, ignore_errors=True)
            total -= size
            removed.append(path)
        return removed


def chunk_size(n: int) -> int:
    """The one batch size the fill runs the frozen part at for a split of `n` images."""
    return max(min(FROZEN_CHUNK, n), 1)


def _padded(t: torch.Tensor, size: int) -> torch.Tensor:
    """`t` filled up to `size` rows by repeating its last one (the padding's output is discarded)."""
    if len(t) >= size:
        return t
    return torch.cat([t, t[-1:].expand(size - len(t), *t.shape[1:])])


@contextlib.contextmanager
def cudnn_benchmark(on: bool):
    """cuDNN's benchmark mode (kernels chosen by timing, once per input shape) where the shapes are fixed,
    restored afterwards: the flag is process-wide and a worker runs many jobs."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = on or saved
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


class FrozenFeatures:
    """The frozen part's output for a run's batches: what the training loop asks for instead of images.

    With the cache on, each image and flip state goes through the frozen part once, in the first epoch that uses
    it: `fill` runs, before an epoch trains, the frozen pass for exactly the (image, flip state) pairs that epoch
    uses and the cache lacks. Epoch 1 so costs one frozen pass per image (its curve point comes as early as it
    can), later epochs add the states they draw that no earlier epoch did; the total is the number of distinct
    pairs the run uses, as before, and every value is the same. With the cache off (or no tail adapter, or no
    room), every batch runs the frozen part afresh.
    """

    def __init__(self, model, prep, amp: dict, images: dict[str, torch.Tensor], stores: dict[str, FeatureStore],
                 info: dict, cache_dir: CacheDir | None, scratch: Path | None = None, benchmark: bool = False):
        self.model, self.prep, self.amp, self.images = model, prep, amp, images
        self.stores, self.info, self.cache_dir = stores, info, cache_dir
        self.scratch = scratch  # this run's building folder (a disk-placed store): removed by `close`
        self.benchmark = benchmark  # cuDNN picks kernels by timing, once per shape: the fill's shapes are fixed

    @classmethod
    def setup(cls, cfg, paths, model, prep, policy: DevicePolicy, amp: dict, train, val,
              images: dict[str, torch.Tensor], data_keys: dict[str, str]) -> "FrozenFeatures":
        """Decide whether and where features are cached; reuse a finished cache of an earlier job (or of this job's
        earlier attempt: the key hashes the frozen part only, which training never changes)."""
        def off(reason: str) -> "FrozenFeatures":
            return cls(model, prep, amp, images, {}, {"enabled": False, "reason": reason}, None)

        if not cfg.feature_cache:
            return off("turned off (feature_cache=false)")
        if not model.cacheable:
            reason = model.cache_reason
            log.info("feature cache off: %s", reason)
            return off(reason)
        device = policy.device
        dtype = _DTYPES[cfg.cache_dtype]
        with torch.no_grad():
            probe = model.frozen_features(prep(torch.zeros(1, 3, 32, 32, dtype=torch.uint8, device=device)))
        shapes = [tuple(t.shape[1:]) for t in probe]
        states = 2 if cfg.hflip else 1
        blocks = (FeatureStore.blocks(len(train), states, shapes, dtype)
                  + FeatureStore.blocks(len(val), 1, shapes, dtype))
        need = sum(blocks)
        root = Path(paths.cache_dir) if paths.cache_dir else None
        placement = choose_placement(need, policy, root, blocks)
        if placement is None:
            reason = memory.refusal(need, machine_limits(policy, root))
            log.warning("feature cache off: %s", reason)
            return off(reason)
        key = cache_key(model=cfg.model, split=model.plan.unfreeze_from, cache_at=model.cache_at or "heads",
                        trainable_blocks=model.trainable_blocks,
                        frozen=fingerprint(model.frozen_state()), train=data_keys["train"], val=data_keys["val"],
                        states=states, size=prep.image_size, dtype=cfg.cache_dtype,
                        autocast=str(amp["dtype"]).removeprefix("torch.") if amp["enabled"] else "off",
                        tf32=cfg.tf32, mean=prep.mean.flatten().tolist(), std=prep.std.flatten().tolist())
        cdir = CacheDir(root, paths.cache_cap_bytes) if root else None
        if cdir:
            cdir.remove_stale()
        scratch = cdir.scratch(key) if cdir and placement.where == "disk" else None
        try:
            stores = {name: FeatureStore(n, s, shapes, dtype, placement, policy, scratch / name if scratch else None)
                      for name, n, s in (("train", len(train), states), ("val", len(val), 1))}
        except BaseException:
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
            raise
        info = {"enabled": True, "key": key, "holds": model.cached_what, "placement": placement.where,
                "reason": placement.reason,
                "bytes": need, "dtype": cfg.cache_dtype, "reused": False, "kept": False}
        hit = cdir.lookup(key) if cdir else None
        if hit and all(s.load(hit / name) for name, s in stores.items()):
            info["reused"] = True
            log.info("feature cache: reusing %s", hit)
        info["loaded"] = {name: int(s.filled.sum()) for name, s in stores.items()}
        benchmark = getattr(policy, "cudnn_benchmark", device.type == "cuda")
        return cls(model, prep, amp, images, stores, info, cdir, scratch, benchmark)

    @property
    def cached(self) -> bool:
        return bool(self.stores)

    def fill(self, split: str, flips: torch.Tensor | None, check=None, report=None) -> int:
        """The frozen pass for the images of `split` in the state an epoch uses (`flips`: its flip mask; None =
        unflipped) that the cache lacks. It always runs chunks of one size, FROZEN_CHUNK images (the whole split
        where it is smaller), the last one padded and its padding discarded: cuDNN (benchmark mode on a GPU) so
        picks kernels once, whichever images are missing. `check()` runs before each chunk (a stop raises there),
        `report(done, total)` after it. Returns how many images went through the frozen part (padding not
        counted)."""
        store = self.stores.get(split)
        if store is None:
            return 0
        state = flips.long().cpu() if flips is not None else torch.zeros(store.n, dtype=torch.long)
        todo = torch.nonzero(store.missing(torch.arange(store.n), state)).flatten()
        total = len(todo)
        if total and report:
            report(0, total)
        size = chunk_size(store.n)
        with cudnn_benchmark(self.benchmark):
            for start in range(0, total, size):
                if check:
                    check()
                m = todo[start:start + size]
                self._compute(split, store, m, state[m], pad_to=size)
                if report:
                    report(min(start + size, total), total)
        return total

    def train(self, idx: torch.Tensor, flip: torch.Tensor | None,
              on_device: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> list[torch.Tensor]:
        """The frozen features of a training batch. `idx`, `flip`: host tensors (the fill's bookkeeping is on the
        host); `on_device`: the same on the images' device, sliced from the epoch's order, so that no batch moves an
        index between host and device (each such move is a blocking sync)."""
        return self._get("train", idx, flip, on_device)

    def val(self, idx: torch.Tensor, on_device: torch.Tensor | None = None) -> list[torch.Tensor]:
        return self._get("val", idx, None, (on_device, None) if on_device is not None else None)

    def _compute(self, split: str, store: FeatureStore, idx_cpu: torch.Tensor, state_cpu: torch.Tensor,
                 pad_to: int | None = None) -> None:
        x = self.images[split]
        k = len(idx_cpu)
        run_idx, run_state = (_padded(idx_cpu, pad_to), _padded(state_cpu, pad_to)) if pad_to else (idx_cpu, state_cpu)
        with torch.autocast(**self.amp):
            f = self.model.frozen_features(self.prep(x[run_idx.to(x.device)], run_state.bool().to(x.device)))
        store.put(idx_cpu, state_cpu, [t[:k] for t in f])

    def _get(self, split, idx, flip, on_device=None) -> list[torch.Tensor]:
        x = self.images[split]
        store = self.stores.get(split)
        if store is None:  # uncached: the frozen part every batch, FROZEN_CHUNK images at a time
            dev_idx, dev_flip = on_device if on_device is not None else (idx.to(x.device), flip)
            parts = []
            for i in range(0, len(dev_idx), FROZEN_CHUNK):
                f = None if dev_flip is None else dev_flip[i:i + FROZEN_CHUNK].to(x.device)
                with torch.autocast(**self.amp):
                    parts.append(self.model.frozen_features(self.prep(x[dev_idx[i:i + FROZEN_CHUNK]], f)))
            return parts[0] if len(parts) == 1 else [torch.cat(t) for t in zip(*parts)]
        idx_cpu = idx if idx.device.type == "cpu" else idx.cpu()  # the training loop passes host tensors
        if flip is None:
            state = torch.zeros_like(idx_cpu)
        else:
            state = (flip if flip.device.type == "cpu" else flip.cpu()).long()
        miss = store.lacking(idx_cpu, state)  # none after `fill`; computed here, at first use, otherwise
        if miss is not None:
            self._compute(split, store, idx_cpu[miss], state[miss])
        dev = None
        if on_device is not None:
            dev_idx, dev_flip = on_device
            dev = (dev_idx, dev_flip.long() if dev_flip is not None else torch.zeros_like(dev_idx))
        feats = store.get(idx_cpu, state, torch.float32, dev)
        if store.read[1] > 0:  # measured, for the plan's next estimate (the worker reports it)
            read = [sum(s.read[i] for s in self.stores.values()) for i in (0, 1)]
            self.info["disk_read_bytes_per_s"] = round(read[0] / read[1])
        return feats

    def close(self) -> None:
        """Remove this run's building folder (the memory-mapped store's files), on every way a run ends: what is
        worth keeping was copied into the cache directory by `persist` first."""
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None

    def persist(self) -> None:
        """Keep the cache for later jobs when this run added to it (a later job computes only what is missing)."""
        if self.cache_dir is None or not self.stores:
            return
        if all(int(s.filled.sum()) == self.info["loaded"].get(name, 0) for name, s in self.stores.items()):
            return
        self.info["kept"] = self.cache_dir.store(self.info["key"], {"placement": self.info["placement"]},
                                                 self.stores) is not None
