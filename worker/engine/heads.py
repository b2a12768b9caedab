"""The paper's classifier head, put on the pooled features of the pretrained backbone."""
from __future__ import annotations

import math

import torch
from torch import nn

# Keras' truncated normal is cut at two standard deviations; VarianceScaling divides the wanted std by this (the std
# of a unit normal truncated to [-2, 2]) so the kept values have std sqrt(scale / fan_in).
_TRUNCATED_STD = 0.87962566103423978


class MLPHead(nn.Sequential):
    """Linear(features, 256) -> ELU -> Dropout(0.5) -> Linear(256, 10) (paper Sec. 3; dropout per the authors'
    notebooks, where the text's "0.5%" reads as a rate of 0.5). Softmax lives in the cross-entropy loss.

    `init="he_normal"` initializes as the authors' Keras CNN heads, `Dense(..., kernel_initializer=he_normal())`:
    kernels from a normal truncated at two standard deviations with std sqrt(2 / fan_in), biases zero (Keras'
    default). "torch" keeps PyTorch's Linear init.
    """

    def __init__(self, in_features: int, hidden: int = 256, dropout: float = 0.5, num_classes: int = 10,
                 init: str = "torch"):
        super().__init__(
            nn.Flatten(1),
            nn.Linear(in_features, hidden),
            nn.ELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        if init == "he_normal":
            for layer in self.linears():
                he_normal_(layer.weight)
                nn.init.zeros_(layer.bias)
        elif init != "torch":
            raise ValueError(f"unknown head init {init!r}")

    def linears(self) -> list[nn.Linear]:
        return [m for m in self if isinstance(m, nn.Linear)]

    def kernel_sq_sum(self) -> torch.Tensor:
        """Sum of squared kernel weights of both Linear layers (biases excluded): what Keras' `l2()` regularizer
        penalizes, times its factor."""
        return sum(layer.weight.float().square().sum() for layer in self.linears())


def he_normal_(weight: torch.Tensor) -> torch.Tensor:
    """Keras' he_normal: VarianceScaling(scale=2, mode="fan_in", distribution="truncated_normal")."""
    fan_in = weight.shape[1]  # torch's Linear weight is (out, in); Keras' kernel is (in, out)
    std = math.sqrt(2.0 / fan_in) / _TRUNCATED_STD
    return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-2 * std, b=2 * std)
