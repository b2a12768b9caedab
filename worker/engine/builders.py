"""The run's builders: the model (backbone, trainable block, the paper's head) with its preprocessing, the optimizer
and the gradient scaler. Apart from the training loop (train.py) so that distill.py builds a teacher with the same
builder without importing the loop that imports it.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import torch
from timm.data import resolve_model_data_config

from core import catalogue
from core.config import TrainConfig

from .device import DevicePolicy
from .model import SingleBlockModel, plan_for
from .preprocess import Preprocess
from .stop import Stop
from .weights import create_backbone

log = logging.getLogger("blocklab.engine")

FP16_INIT_SCALE = 2.0 ** 16  # the gradient scaler's first scale (PyTorch's default); it halves at every overflow


def build_model(cfg: TrainConfig, policy: DevicePolicy, weights_dir: Path | None = None, stop: Stop | None = None,
                on_progress: Callable[[dict], None] | None = None,
                data_dir: Path | None = None) -> tuple[SingleBlockModel, Preprocess]:
    """The backbone with its last block unfrozen and the paper's head, and the preprocessing its weights expect.

    The paper upsamples every model to 224 (the preset's `image_size`), whatever size its weights were trained at
    (NFNet-F6 448, EfficientNetV2-L 384): transformers are built for that size (timm resamples their position
    embeddings), CNNs take it as it is. Works under `torch.device("meta")` with weights="none" (tests build every
    paper model that way). A hub download reports its bytes to `on_progress` and honours `stop`.
    """
    backbone = create_backbone(cfg.model, cfg.weights, weights_dir, img_size=cfg.image_size, stop=stop,
                               on_progress=on_progress)
    data_cfg = resolve_model_data_config(backbone)
    image_size = cfg.image_size or data_cfg["input_size"][-1]
    model = SingleBlockModel(backbone, plan_for(cfg.model, backbone, cfg.pooling), cfg.head_hidden,
                             cfg.head_dropout, num_classes=catalogue.num_classes(cfg.dataset, data_dir),
                             head_init=cfg.head_init, bn_momentum=cfg.bn_momentum,
                             trainable_blocks=cfg.trainable_blocks).to(policy.device)
    channels_last = policy.channels_last and model.plan.family == "cnn"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, Preprocess(image_size, data_cfg["mean"], data_cfg["std"], policy.device, channels_last)


def make_optimizer(model: SingleBlockModel, cfg: TrainConfig, fused: bool = False) -> torch.optim.Adam:
    """Adam on the trainable parameters, with the preset's epsilon (the authors' Keras CNNs: Keras' 1e-7).

    `fused` (fp16, where the device has the kernel): one kernel per step that takes the gradient scaler's scale
    and overflow flag as device tensors; unfused, GradScaler.step reads the flag back to the host every step, a
    blocking sync per batch (issue 15). Where the device lacks the kernel, plain Adam and that sync."""
    params = [p for p in model.parameters() if p.requires_grad]
    if fused:
        try:
            return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps, fused=True)
        except RuntimeError as e:  # a device type without fused Adam kernels
            log.info("fused Adam not available (%s): the gradient scaler syncs once per step", e)
    return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps)


def grad_scaler(amp: dict) -> torch.amp.GradScaler:
    """The gradient scaler of a run: on for fp16 only (bf16 has fp32's range and needs none). fp16's 5-bit exponent
    flushes small gradients to zero; the loss is multiplied by the scale before backward, the gradients divided by
    it before the step, and a step whose gradients overflowed (inf or NaN) is skipped and the scale halved
    (doubled again after 2,000 clean steps): the loss of such a batch is still a number and counts as one."""
    fp16 = bool(amp["enabled"]) and amp["dtype"] is torch.float16
    return torch.amp.GradScaler(amp["device_type"], init_scale=FP16_INIT_SCALE, enabled=fp16)
