"""Frozen-feature cache: run the frozen part once per image and flip state, not once per image per epoch.

In a single-block fine-tune everything before the block is frozen and deterministic (inference mode), so its
output for an image depends only on the image and on the paper's one augmentation, the horizontal flip. The
cache stores that output for both flip states of every training image and for every validation image; every
epoch then runs only the block, its kept layers and the head. The result is exact up to the storage dtype.

Storage, chosen by a size check before training (the run's DevicePolicy, device.py, says what the device offers):
the device when it fits, else host memory (pinned when a GPU reads it), else a memory-mapped file under the cache
directory. A finished cache is kept under `<cache_dir>/<key>/`, keyed by model, split point, the frozen part's
weights (never the trainable block's: a resumed run, whose block has trained, finds the cache its first attempt
kept), data fingerprints, image size, preprocessing and numerics, so a second job on the same model and data (a
learning-rate sweep) skips the frozen part entirely. Old entries are evicted (least recently used) to keep the
directory under its size cap.

What is cached depends on the depth (`trainable_blocks`): the input of the first trainable block (K >= 1; CoaT:
of its stage's first block), the heads' input (K = 0: pooled features, so training runs the heads alone), or
nothing (K = all). The key names that point, so two depths never share an entry.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

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


@dataclass
class Placement:
    where: str  # "device" | "memory" | "disk"
    reason: str


def _host_available_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def choose_placement(nbytes: int, policy: DevicePolicy, cache_dir: Path | None) -> Placement | None:
    """Where `nbytes` of features fit, leaving room for training; None when nowhere."""
    if policy.device_free_bytes is not None:
        free = policy.device_free_bytes()
        if nbytes < 0.6 * free - (2 << 30):
            return Placement("device", f"{nbytes / 2**30:.2f} GiB fit in {free / 2**30:.1f} GiB free memory on "
                             f"{policy.device}")
    host = _host_available_bytes()
    if nbytes < 0.6 * host:
        pinned = ", pinned" if policy.pin_memory else ""
        return Placement("memory", f"{nbytes / 2**30:.2f} GiB fit in {host / 2**30:.1f} GiB available host "
                         f"memory{pinned}")
    if cache_dir is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        disk = shutil.disk_usage(cache_dir).free
        if nbytes < 0.9 * disk:
            return Placement("disk", f"{nbytes / 2**30:.2f} GiB memory-mapped under {cache_dir}")
    return None


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

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors)

    @staticmethod
    def bytes_needed(n: int, states: int, shapes, dtype: torch.dtype) -> int:
        item = torch.empty((), dtype=dtype).element_size()
        return sum(n * states * int(np.prod(s)) * item for s in shapes)

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

    def put(self, idx: torch.Tensor, state: torch.Tensor, feats: list[torch.Tensor]) -> None:
        for store, f in zip(self.tensors, feats):
            store[idx.to(store.device), state.to(store.device)] = f.to(store.device, self.dtype)
        self.filled[idx, state] = True

    def get(self, idx: torch.Tensor, state: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
        out = []
        for store in self.tensors:
            f = store[idx.to(store.device), state.to(store.device)]
            out.append(f.to(self.device, non_blocking=True).to(dtype))
        return out

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


class CacheDir:
    """Finished caches on disk, one folder per key, evicted least-recently-used beyond `cap_bytes`."""

    def __init__(self, root: Path, cap_bytes: int):
        self.root = Path(root)
        self.cap = cap_bytes

    def entry(self, key: str) -> Path:
        return self.root / key

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
        tmp = self.root / f".{key}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        for name, s in stores.items():
            s.save(tmp / name)
        (tmp / "meta.json").write_text(json.dumps({**meta, "saved_at": time.time(), "bytes": need}))
        final = self.entry(key)
        if final.exists():  # an older, less complete copy: swap it out
            old = self.root / f".{key}.{os.getpid()}.old"
            os.replace(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
        return final

    def entries(self) -> list[tuple[float, int, Path]]:
        out = []
        if not self.root.is_dir():
            return out
        for p in self.root.iterdir():
            meta = p / "meta.json"
            if p.is_dir() and meta.is_file():
                size = sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
                out.append((meta.stat().st_mtime, size, p))
        return sorted(out)

    def evict(self, keep_free: int = 0) -> list[Path]:
        entries = self.entries()
        total = sum(e[1] for e in entries)
        removed = []
        for _mtime, size, path in entries:  # oldest use first
            if total + keep_free <= self.cap:
                break
            shutil.rmtree(path, ignore_errors=True)
            total -= size
            removed.append(path)
        return removed


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
                 info: dict, cache_dir: CacheDir | None):
        self.model, self.prep, self.amp, self.images = model, prep, amp, images
        self.stores, self.info, self.cache_dir = stores, info, cache_dir

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
        need = (FeatureStore.bytes_needed(len(train), states, shapes, dtype)
                + FeatureStore.bytes_needed(len(val), 1, shapes, dtype))
        root = Path(paths.cache_dir) if paths.cache_dir else None
        placement = choose_placement(need, policy, root)
        if placement is None:
            reason = f"{need / 2**30:.1f} GiB of features fit neither in memory nor on disk"
            log.warning("feature cache off: %s", reason)
            return off(reason)
        key = cache_key(model=cfg.model, split=model.plan.unfreeze_from, cache_at=model.cache_at or "heads",
                        trainable_blocks=model.trainable_blocks,
                        frozen=fingerprint(model.frozen_state()), train=data_keys["train"], val=data_keys["val"],
                        states=states, size=prep.image_size, dtype=cfg.cache_dtype, bf16=amp["enabled"],
                        tf32=cfg.tf32, mean=prep.mean.flatten().tolist(), std=prep.std.flatten().tolist())
        scratch = (root / f".{key}.building") if root else None
        stores = {name: FeatureStore(n, s, shapes, dtype, placement, policy, scratch / name if scratch else None)
                  for name, n, s in (("train", len(train), states), ("val", len(val), 1))}
        info = {"enabled": True, "key": key, "holds": model.cached_what, "placement": placement.where,
                "reason": placement.reason,
                "bytes": need, "dtype": cfg.cache_dtype, "reused": False, "kept": False}
        cdir = CacheDir(root, paths.cache_cap_bytes) if root else None
        hit = cdir.lookup(key) if cdir else None
        if hit and all(s.load(hit / name) for name, s in stores.items()):
            info["reused"] = True
            log.info("feature cache: reusing %s", hit)
        info["loaded"] = {name: int(s.filled.sum()) for name, s in stores.items()}
        return cls(model, prep, amp, images, stores, info, cdir)

    @property
    def cached(self) -> bool:
        return bool(self.stores)

    def fill(self, split: str, flips: torch.Tensor | None, chunk: int, check=None, report=None) -> int:
        """The frozen pass for the images of `split` in the state an epoch uses (`flips`: its flip mask; None =
        unflipped) that the cache lacks, `chunk` images at a time (at most FROZEN_CHUNK). `check()` runs before each chunk (a stop raises
        there), `report(done, total)` after it. Returns how many images went through the frozen part."""
        store = self.stores.get(split)
        if store is None:
            return 0
        state = flips.long().cpu() if flips is not None else torch.zeros(store.n, dtype=torch.long)
        todo = torch.nonzero(store.missing(torch.arange(store.n), state)).flatten()
        total = len(todo)
        if total and report:
            report(0, total)
        chunk = max(min(chunk, FROZEN_CHUNK), 1)
        for start in range(0, total, chunk):
            if check:
                check()
            m = todo[start:start + chunk]
            self._compute(split, store, m, state[m])
            if report:
                report(min(start + chunk, total), total)
        return total

    def train(self, idx: torch.Tensor, flip: torch.Tensor | None) -> list[torch.Tensor]:
        return self._get("train", idx, flip)

    def val(self, idx: torch.Tensor) -> list[torch.Tensor]:
        return self._get("val", idx, None)

    def _compute(self, split: str, store: FeatureStore, idx_cpu: torch.Tensor, state_cpu: torch.Tensor) -> None:
        x = self.images[split]
        dev_idx = idx_cpu.to(x.device)
        with torch.autocast(**self.amp):
            f = self.model.frozen_features(self.prep(x[dev_idx], state_cpu.bool().to(x.device)))
        store.put(idx_cpu, state_cpu, f)

    def _get(self, split, idx, flip) -> list[torch.Tensor]:
        x = self.images[split]
        store = self.stores.get(split)
        if store is None:  # uncached: the frozen part every batch, FROZEN_CHUNK images at a time
            parts = []
            for i in range(0, len(idx), FROZEN_CHUNK):
                f = None if flip is None else flip[i:i + FROZEN_CHUNK]
                with torch.autocast(**self.amp):
                    parts.append(self.model.frozen_features(self.prep(x[idx[i:i + FROZEN_CHUNK]], f)))
            return parts[0] if len(parts) == 1 else [torch.cat(t) for t in zip(*parts)]
        idx_cpu = idx.cpu()  # the fill bookkeeping lives on the CPU: one transfer per batch, not one per lookup
        state = flip.long().cpu() if flip is not None else torch.zeros_like(idx_cpu)
        miss = store.missing(idx_cpu, state)  # none after `fill`; computed here, at first use, otherwise
        if miss.any():
            self._compute(split, store, idx_cpu[miss], state[miss])
        return store.get(idx_cpu, state, torch.float32)

    def persist(self) -> None:
        """Keep the cache for later jobs when this run added to it (a later job computes only what is missing)."""
        if self.cache_dir is None or not self.stores:
            return
        if all(int(s.filled.sum()) == self.info["loaded"].get(name, 0) for name, s in self.stores.items()):
            return
        self.info["kept"] = self.cache_dir.store(self.info["key"], {"placement": self.info["placement"]},
                                                 self.stores) is not None
