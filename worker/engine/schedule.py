"""The paper's learning-rate schedule with Keras semantics (the authors trained with Keras callbacks).

Keras' ReduceLROnPlateau lowers the rate once `patience` epochs in a row fail to beat the best value by more
than `min_delta`; torch's lowers it only after `patience + 1` such epochs, so it is re-stated here.
"""
from __future__ import annotations

from torch.optim import Optimizer


class PlateauLR:
    def __init__(self, optimizer: Optimizer, factor: float = 0.6, patience: int = 2, min_lr: float = 1e-7,
                 min_delta: float = 1e-4):
        self.optimizer, self.factor, self.patience, self.min_lr, self.min_delta = (
            optimizer, factor, patience, min_lr, min_delta)
        self.best: float | None = None
        self.wait = 0

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def step(self, val_acc: float) -> bool:
        """Record an epoch's validation accuracy; True when the rate was lowered."""
        if self.best is None or val_acc > self.best + self.min_delta:
            self.best, self.wait = val_acc, 0
            return False
        self.wait += 1
        if self.wait < self.patience:
            return False
        self.wait = 0
        if self.lr <= self.min_lr:
            return False
        for g in self.optimizer.param_groups:
            g["lr"] = max(g["lr"] * self.factor, self.min_lr)
        return True

    def state_dict(self) -> dict:
        return {"best": self.best, "wait": self.wait}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.wait = state["best"], state["wait"]
