"""The paper's preprocessing, batched on the training device: no per-image Python work in an epoch.

Bilinear upscale 32 -> the model's input size (as tf.image.resize in the authors' code), the model's own
pretrained mean/std (timm's data config), and the paper's one augmentation: random horizontal flip.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class Preprocess:
    def __init__(self, image_size: int, mean, std, device: torch.device, channels_last: bool = False):
        self.image_size = image_size
        self.mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
        self.std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1) * 255.0
        self.channels_last = channels_last

    def __call__(self, images_u8: torch.Tensor, flip: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (B, 3, 32, 32) and an optional bool (B,) flip mask -> normalized float (B, 3, S, S)."""
        x = images_u8.to(self.mean.device, non_blocking=True).float()
        if flip is not None and bool(flip.any()):
            flip = flip.to(x.device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        x = (x - self.mean) / self.std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x
