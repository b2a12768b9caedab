"""One value per (image, flip state), computed once and kept: the store that frozen features and a teacher's
predictions share.

Each image's value (the frozen part's output, a teacher's logits) depends only on the image and its flip state, so a
run computes it the first time an epoch uses that pair and reads it back afterwards. The store keeps the values,
one tensor (N, states, *shape) per output, where a placement put them (device, host memory, a memory-mapped file),
and the `filled` flags on the host: what an epoch lacks is known without asking the device (`todo`, `lacking`).
`fill_missing` runs the chunked fill both users share; `write_atomic` the keyed, torn-free file write.
"""
from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from core.memory import Placement

from .device import DevicePolicy


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

    def todo(self, state: torch.Tensor) -> torch.Tensor:
        """The images whose pair (image, state[image]) is not filled yet, in order (host tensors)."""
        return torch.nonzero(self.missing(torch.arange(self.n), state)).flatten()

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


def states_of(flips: torch.Tensor | None, n: int) -> torch.Tensor:
    """The flip state (0 or 1) of each of `n` images on the host: all 0 without flips."""
    if flips is None:
        return torch.zeros(n, dtype=torch.long)
    return (flips if flips.device.type == "cpu" else flips.cpu()).long()


def fill_missing(store: FeatureStore, state: torch.Tensor,
                 compute: Callable[[torch.Tensor, torch.Tensor, int], list],
                 chunks: Callable[[torch.Tensor], Iterable[tuple[torch.Tensor, int]]],
                 check: Callable[[], None] | None = None, report: Callable[[int, int], None] | None = None) -> int:
    """Compute and store the values of every image whose pair (image, `state[image]`) the store lacks: `chunks`
    splits the missing indices into the pieces computed at once, as (indices, rows to run: more where the piece
    is padded), and `compute(idx, state, rows)` returns the values of exactly those pairs (one tensor per stored
    output; padding never reaches the store). `check()` runs before each piece (a stop raises there),
    `report(done, total)` after it. Returns how many images were computed."""
    todo = store.todo(state)
    total = len(todo)
    if total and report:
        report(0, total)
    done = 0
    for m, rows in chunks(todo):
        if check:
            check()
        s = state[m]
        values = compute(m, s, rows)
        if any(len(v) != len(m) for v in values):
            raise RuntimeError(f"{len(m)} images computed as {[len(v) for v in values]} rows: padding kept?")
        store.put(m, s, values)
        done += len(m)
        if report:
            report(done, total)
    return total


def write_atomic(path: Path, payload: bytes | memoryview) -> None:
    """`payload` as the file `path`, all or nothing: written under a name of this process, then renamed over it (a
    reader never sees a torn file, and two writers never write into the same temporary file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(payload)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
