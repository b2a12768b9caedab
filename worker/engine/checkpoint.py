"""Checkpoints that carry their config: trainable weights, optimizer, schedule, epoch, RNG state, history.

Only what training can change is saved (the frozen part is rebuilt from its weights). Files are written to a
temporary name and renamed, so a crash mid-write never leaves a torn checkpoint; they load with
`weights_only=True`, so a checkpoint cannot run code.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

CHECKPOINT = "checkpoint.pt"


def save(out_dir: Path, state: dict) -> Path:
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


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
