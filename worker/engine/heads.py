"""The paper's classifier head, put on the pooled features of the pretrained backbone."""
from __future__ import annotations

from torch import nn


class MLPHead(nn.Sequential):
    """Linear(features, 256) -> ELU -> Dropout(0.5) -> Linear(256, 10) (paper Sec. 3; dropout per the authors'
    notebooks, where the text's "0.5%" reads as a rate of 0.5). Softmax lives in the cross-entropy loss."""

    def __init__(self, in_features: int, hidden: int = 256, dropout: float = 0.5, num_classes: int = 10):
        super().__init__(
            nn.Flatten(1),
            nn.Linear(in_features, hidden),
            nn.ELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
