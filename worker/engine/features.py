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

This module decides and orchestrates; the parts live in their own rooms: the machine's limits (limits.py), the
per-image store (store.py, shared with the teacher's predictions) and the finished caches on disk (cachedir.py).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from core import memory

from .cachedir import CacheDir
from .device import DevicePolicy
from .limits import choose_placement, machine_limits
from .store import FeatureStore, fill_missing, states_of
from .weights import fingerprint

log = logging.getLogger(__name__)

CACHE_VERSION = 3  # bump when what is cached or its key changes meaning (3: the key names the cache point)
# The uncached path runs the frozen part at most this many images at a time (a batch of 512 at 224 px in pieces):
# its output per image does not depend on the others, and a stop is checked between pieces and inside each
# (stop.py), so even the longest layer of one piece is short. The fill measures its own size (ChunkPlan).
FROZEN_CHUNK = 128
# The chunk sizes the fill measures, per device type: a CPU's fastest batch is often mid-sized (DeiT-Ti's fp32
# forward on 2 cores: 41 img/s at 64, 39 at 128; 16 measured a third slower than 64), a GPU's larger. Each is
# capped at the split's size.
CHUNK_CANDIDATES = {"cuda": (64, 128, 256), "cpu": (32, 64, 128)}
CACHE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def cache_key(**parts) -> str:
    blob = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


class ChunkPlan:
    """How the fill cuts the images it lacks into the batches the frozen part runs: sizes by measurement, padding
    only where fixed shapes buy faster kernels.

    Measuring: the first chunks run each candidate size in turn (real work: their outputs are stored); every chunk
    after runs the fastest. A plan lives as long as the process (`plan_for`): a worker's later jobs on the same model
    and a run's later epochs reuse what it measured.

    `fixed_shapes` (CUDA with cuDNN's benchmark mode, which picks kernels by timing once per input shape): each
    candidate runs twice (its first call pays the kernel selection, the second is its speed), and a last chunk of k
    images runs padded to the chunk size, its padding discarded, unless computing the padding costs more than the
    selection a new shape pays ((size - k) x the time per image > the measured selection); a shape already selected
    runs as it is. Elsewhere (the CPU) no image is ever padded: a chunk is the images it has."""

    def __init__(self, candidates, fixed_shapes: bool = False, sync=lambda: None, clock=time.perf_counter):
        self.candidates = tuple(sorted(set(candidates)))
        self.fixed_shapes = fixed_shapes
        self.sync, self.clock = sync, clock
        self.per_image: dict[int, float] = {}  # chunk size -> measured seconds per image
        self.first_call: dict[int, float] = {}  # chunk size -> seconds of its first call (selection included)
        self.shapes: set[int] = set()  # shapes the frozen part has run (cuDNN keeps its selection per shape)
        self.flags = {"warm": False}  # the process's first frozen call ran (shared with the capped plans)

    @property
    def measuring(self) -> bool:
        return any(c not in self.per_image for c in self.candidates)

    @property
    def size(self) -> int:
        """The fastest measured size (the largest candidate while nothing is measured)."""
        if not self.per_image:
            return self.candidates[-1]
        return min(self.per_image, key=lambda c: (self.per_image[c], -c))

    @property
    def selection_s(self) -> float | None:
        """What a new shape's first call costs beyond its run (the kernel selection), as measured; None before."""
        found = [self.first_call[c] - c * self.per_image[c] for c in self.first_call if c in self.per_image]
        return max(0.0, sorted(found)[len(found) // 2]) if found else None

    def capped(self, n: int) -> ChunkPlan:
        """This plan with its candidates capped at a split of `n` images (a candidate larger than the split is the
        split); the measurements are shared."""
        capped = {min(c, max(n, 1)) for c in self.candidates}
        if capped == set(self.candidates):
            return self
        out = ChunkPlan(capped, self.fixed_shapes, self.sync, self.clock)
        out.per_image, out.first_call, out.shapes, out.flags = self.per_image, self.first_call, self.shapes, self.flags
        return out

    def next(self, left: int) -> tuple[int, int]:
        """(images, run size) of the next chunk when `left` images are missing: run size > images means padding."""
        if self.measuring:
            c = next(c for c in self.candidates if c not in self.per_image)
            if not self.flags["warm"] and not self.fixed_shapes:
                c = self.candidates[0]  # the process's first frozen call warms up; measured after
            return min(c, left), (c if self.fixed_shapes else min(c, left))
        size = self.size
        k = min(size, left)
        if not self.fixed_shapes or k == size or k in self.shapes:
            return k, k
        sel = self.selection_s
        if sel is not None and (size - k) * self.per_image[size] > sel:
            return k, k  # computing the padding would cost more than selecting kernels for this shape once
        return k, size

    def record(self, run_size: int, seconds: float) -> None:
        """A chunk of `run_size` rows (padding included) took `seconds`."""
        first = run_size not in self.shapes
        self.shapes.add(run_size)
        if not self.measuring or run_size not in self.candidates:
            return
        if not self.flags["warm"] and not self.fixed_shapes:
            self.flags["warm"] = True  # the warm-up call: not a speed
            return
        if self.fixed_shapes and first:
            self.first_call[run_size] = seconds
            return
        self.per_image.setdefault(run_size, seconds / run_size)

    def chunks(self, todo: torch.Tensor) -> Iterator[tuple[torch.Tensor, int]]:
        """(indices, rows to run) per chunk of `todo`, in order: rows > indices where the chunk is padded. Each chunk
        is computed between two steps of the iteration: timed there while measuring, or at a new shape."""
        i = 0
        while i < len(todo):
            k, size = self.next(len(todo) - i)
            timed = self.measuring or size not in self.shapes
            if timed:
                self.sync()
                t0 = self.clock()
            yield todo[i:i + k], size
            if timed:
                self.sync()
                self.record(size, self.clock() - t0)
            i += k


_PLANS: dict[tuple, ChunkPlan] = {}  # per process: what the fill measured, per model, size, numerics and device


def plan_for(key: tuple, device: torch.device, fixed_shapes: bool) -> ChunkPlan:
    """The process's chunk plan for `key` (model, split point, image size, numerics, device), made on first use."""
    full = (*key, str(device), fixed_shapes)
    if full not in _PLANS:
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
        _PLANS[full] = ChunkPlan(CHUNK_CANDIDATES.get(device.type, CHUNK_CANDIDATES["cpu"]), fixed_shapes, sync)
    return _PLANS[full]


def measured_chunks() -> list[dict]:
    """What this process's fills measured, per plan: the model and device, the size chosen, the seconds per image of
    each size tried, whether shapes are fixed (padding) and the kernel selection a new shape costs (benchmark's
    report; the GPU check's JSON)."""
    return [{"plan": [str(k) for k in key], "size": p.size, "fixed_shapes": p.fixed_shapes,
             "per_image_s": {str(c): round(t, 6) for c, t in sorted(p.per_image.items())},
             "selection_s": None if p.selection_s is None else round(p.selection_s, 4)}
            for key, p in _PLANS.items()]


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
                 info: dict, cache_dir: CacheDir | None, scratch: Path | None = None,
                 chunking: ChunkPlan | None = None):
        self.model, self.prep, self.amp, self.images = model, prep, amp, images
        self.stores, self.info, self.cache_dir = stores, info, cache_dir
        self.scratch = scratch  # this run's building folder (a disk-placed store): removed by `close`
        self.chunking = chunking or ChunkPlan(CHUNK_CANDIDATES["cpu"])  # the fill's chunk sizes and padding

    @classmethod
    def setup(cls, cfg, paths, model, prep, policy: DevicePolicy, amp: dict, train, val,
              images: dict[str, torch.Tensor], data_keys: dict[str, str]) -> FrozenFeatures:
        """Decide whether and where features are cached; reuse a finished cache of an earlier job (or of this job's
        earlier attempt: the key hashes the frozen part only, which training never changes)."""
        def off(reason: str) -> FrozenFeatures:
            return cls(model, prep, amp, images, {}, {"enabled": False, "reason": reason}, None)

        if not cfg.feature_cache:
            return off("turned off (feature_cache=false)")
        if not model.cacheable:
            reason = model.cache_reason
            log.info("feature cache off: %s", reason)
            return off(reason)
        device = policy.device
        dtype = CACHE_DTYPES[cfg.cache_dtype]
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
        chunking = plan_for((cfg.model, model.plan.unfreeze_from, model.cache_at, model.trainable_blocks,
                             prep.image_size, info["dtype"], str(amp["dtype"]) if amp["enabled"] else "off", cfg.tf32),
                            device, policy.fixed_shapes)
        return cls(model, prep, amp, images, stores, info, cdir, scratch, chunking)

    @property
    def cached(self) -> bool:
        return bool(self.stores)

    def fill(self, split: str, flips: torch.Tensor | None, check=None, report=None) -> int:
        """The frozen pass for the images of `split` in the state an epoch uses (`flips`: its flip mask; None =
        unflipped) that the cache lacks, in chunks the chunk plan sizes by measurement (ChunkPlan: padded only on a
        device whose fixed shapes buy faster kernels, the padding's output discarded). `check()` runs before each
        chunk (a stop raises there), `report(done, total)` after it. Returns how many images went through the
        frozen part (padding not counted)."""
        store = self.stores.get(split)
        if store is None:
            return 0
        plan = self.chunking.capped(store.n)
        with cudnn_benchmark(plan.fixed_shapes):
            return fill_missing(store, states_of(flips, store.n),
                                lambda m, s, rows: self._compute(split, m, s, pad_to=rows), plan.chunks, check,
                                report)

    def train(self, idx: torch.Tensor, flip: torch.Tensor | None,
              on_device: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> list[torch.Tensor]:
        """The frozen features of a training batch. `idx`, `flip`: host tensors (the fill's bookkeeping is on the
        host); `on_device`: the same on the images' device, sliced from the epoch's order, so that no batch moves an
        index between host and device (each such move is a blocking sync)."""
        return self._get("train", idx, flip, on_device)

    def val(self, idx: torch.Tensor, on_device: torch.Tensor | None = None) -> list[torch.Tensor]:
        return self._get("val", idx, None, (on_device, None) if on_device is not None else None)

    def _compute(self, split: str, idx_cpu: torch.Tensor, state_cpu: torch.Tensor,
                 pad_to: int | None = None) -> list[torch.Tensor]:
        x = self.images[split]
        k = len(idx_cpu)
        run_idx, run_state = (_padded(idx_cpu, pad_to), _padded(state_cpu, pad_to)) if pad_to else (idx_cpu, state_cpu)
        with torch.autocast(**self.amp):
            f = self.model.frozen_features(self.prep(x[run_idx.to(x.device)], run_state.bool().to(x.device)))
        return [t[:k] for t in f]

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
            store.put(idx_cpu[miss], state[miss], self._compute(split, idx_cpu[miss], state[miss]))
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
