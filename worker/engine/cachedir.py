"""Finished feature caches on disk, kept for later jobs: one folder per key, evicted least-recently-used beyond a
size cap, written through scratch folders that name their process.

A cache being built (a memory-mapped store) or being saved lives in a scratch folder `.<key>.<kind>.<host>.<pid>.
<random>`: two workers with the same key never open the same files, a finished copy appears by one rename, and a
scratch folder whose process is gone (a crash, a kill) is found stale and removed, as nothing else ever would.
What is saved are the stores' own files (`save(folder)`, `nbytes`): the folder knows nothing of what they hold.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import socket
import time
from pathlib import Path
from typing import Protocol

from core.processes import alive

log = logging.getLogger(__name__)


class Saved(Protocol):
    """What the cache folder keeps of a store: its size, and its files written into a folder."""
    nbytes: int

    def save(self, folder: Path) -> None: ...


STALE_SCRATCH_S = 24 * 3600  # a scratch folder whose owner cannot be asked (another host) is stale after this
HOST = socket.gethostname().replace(".", "-")


def scratch_name(key: str, kind: str) -> str:
    """A scratch folder's name, unique to this process: `.<key>.<kind>.<host>.<pid>.<random>`. Two workers with
    the same key (a learning-rate sweep) so never open the same files, and eviction can tell whose it is."""
    return f".{key}.{kind}.{HOST}.{os.getpid()}.{secrets.token_hex(4)}"


def scratch_stale(p: Path, now: float) -> bool:
    """A scratch folder is stale when its process is gone (same host), or when nothing in it changed for
    STALE_SCRATCH_S: what covers another host's folders, names from before scratch names carried a pid, and a pid
    reused by an unrelated process. (Removing a live run's folder is harmless on Linux: its memory map stays valid
    and `persist` saves from it.)"""
    parts = p.name[1:].split(".")
    if len(parts) == 5 and parts[2] == HOST and parts[3].isdigit() and not alive(int(parts[3])):
        return True
    try:
        newest = max([p.stat().st_mtime] + [f.stat().st_mtime for f in p.rglob("*")])
    except OSError:
        return False
    return now - newest > STALE_SCRATCH_S


def own_scratch(p: Path) -> bool:
    parts = p.name[1:].split(".")
    return len(parts) == 5 and parts[2] == HOST and parts[3] == str(os.getpid())


def folder_size(p: Path) -> int:
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

    def store(self, key: str, meta: dict, stores: dict[str, Saved]) -> Path | None:
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
                out.append((meta.stat().st_mtime, folder_size(p), p))
        return sorted(out)

    def scratch_folders(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.iterdir() if p.is_dir() and p.name.startswith(".")]

    def remove_stale(self) -> list[Path]:
        """Remove the scratch folders of processes that are gone (a crash, a kill): nothing else ever would."""
        now, removed = time.time(), []
        for p in self.scratch_folders():
            if scratch_stale(p, now):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
        return removed

    def evict(self, keep_free: int = 0) -> list[Path]:
        """Stale scratch first, then finished entries, oldest use first, until entries, other live processes'
        scratch folders and `keep_free` fit the cap (this process's own scratch is about to go)."""
        removed = self.remove_stale()
        entries = self.entries()
        total = sum(e[1] for e in entries) + sum(folder_size(p) for p in self.scratch_folders() if not own_scratch(p))
        for _mtime, size, path in entries:  # oldest use first
            if total + keep_free <= self.cap:
                break
            shutil.rmtree(path, ignore_errors=True)
            total -= size
            removed.append(path)
        return removed
