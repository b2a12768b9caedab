"""Checkpoints that carry their config: trainable weights, optimizer, schedule, epoch, RNG state, history.

This module owns what a run saves and restores. Only what training can change is saved (the frozen part is
rebuilt from its weights). Files are written to a temporary name and renamed, so a crash mid-write never leaves a
torn checkpoint; they load with `weights_only=True`, so a checkpoint cannot run code.

A checkpoint resumes under a config that differs from its own only in options that do not change what a run
computes (core.config.config_differences): an option added after the checkpoint was written counts as its
default, so adding an option never strands the runs already stored.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from core.config import TrainConfig, config_differences

CHECKPOINT = "checkpoint.pt"


@dataclass
class Progress:
    """What the training loop keeps between epochs (and a resume restores)."""
    epoch: int = 0
    history: list = field(default_factory=list)
    best_acc: float = -1.0
    best_epoch: int = 0

    def record(self, row: dict) -> None:
        self.epoch = row["epoch"]
        self.history.append(row)
        if row["val_acc"] is not None and row["val_acc"] > self.best_acc:
            self.best_acc, self.best_epoch = row["val_acc"], row["epoch"]


def save(out_dir: Path, cfg: TrainConfig, progress: Progress, model, optimizer, scheduler) -> Path:
    state = {"config": cfg.to_dict(), "epoch": progress.epoch, "model": model.trainable_state_dict(),
             "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": _rng_state(),
             "history": progress.history, "best_acc": progress.best_acc, "best_epoch": progress.best_epoch}
    path = Path(out_dir) / CHECKPOINT
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)
    return path


def load(out_dir: Path) -> dict | None:
    path = Path(out_dir) / CHECKPOINT
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def restore(out_dir: Path, cfg: TrainConfig, model, optimizer, scheduler) -> Progress:
    """Load the run's checkpoint into model, optimizer and schedule; a fresh Progress when there is none."""
    ckpt = load(out_dir)
    if ckpt is None:
        return Progress()
    diff = config_differences(ckpt["config"], cfg)
    if diff:
        raise ValueError(f"{out_dir} holds a checkpoint of another config (differs in {diff}); "
                         "use another output folder")
    model.load_state_dict(ckpt["model"], strict=False)
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    _set_rng_state(ckpt["rng"])
    return Progress(ckpt["epoch"], list(ckpt["history"]), ckpt["best_acc"], ckpt["best_epoch"])


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
