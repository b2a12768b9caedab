"""The run's side of the mistakes gallery: after each validation it keeps what the model predicted for every
validation image (core/mistakes.py declares the file), as the first epoch's, the latest and, when the epoch is the
best so far, the best. A few hundred kilobytes at most (10,000 images); no image is copied."""
from __future__ import annotations

from pathlib import Path

import torch

from core import mistakes

from .checkpoint import writing
from .data import Split


class ValPredictions:
    def __init__(self, out_dir: Path, dataset: str, classes, val: Split):
        self.out_dir, self.dataset, self.classes = Path(out_dir), dataset, list(classes)
        self.ids = list(val.ids) if val.ids is not None else list(range(len(val)))
        self.labels = [int(x) for x in val.labels]

    def keep(self, epoch: int, logits_pred: torch.Tensor, confidence: torch.Tensor) -> None:
        """The epoch's predictions (class, softmax confidence) as the latest, and as the first at epoch 1."""
        pred, conf = logits_pred.cpu().tolist(), confidence.float().cpu().tolist()
        with writing(self.out_dir):
            mistakes.write(self.out_dir, "latest", epoch, self.dataset, self.classes, self.ids, self.labels, pred,
                           conf)
            if epoch == 1:
                mistakes.keep_as(self.out_dir, "latest", "first")

    def best(self) -> None:
        """The latest epoch is the best so far."""
        with writing(self.out_dir):
            mistakes.keep_as(self.out_dir, "latest", "best")
