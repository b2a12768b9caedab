"""A timm backbone with everything frozen but its last block, plus the paper's MLP head(s).

Freezing follows the paper (Keras `trainable=False`): frozen parameters get no gradient, and the frozen part
always runs in inference mode, so its BatchNorm statistics and dropout never change (timm's `freeze()` turns its
BatchNorms into FrozenBatchNorm). The frozen part is also run under `torch.inference_mode()`: it records no
autograd history and keeps no activations for backward.

The authors' Keras CNNs trained their block's BatchNorms with Keras' momentum 0.99 (torch's 0.01): `bn_momentum`
sets it on the BatchNorms of the trainable part only. Their heads had he_normal kernels and an L2(0.01) penalty:
`head_init` and `head_l2_term` (heads.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from core import catalogue

from .heads import MLPHead
from .split import TAILS, Tail, capture_block_input, generic_unfreeze_point

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """How one model is split: resolved from the catalogue, or by the generic rule for other timm models."""
    model: str
    unfreeze_from: str
    arch: str  # key in split.TAILS, or "generic"
    pooling: str  # "model" | "max" | "avg"
    family: str


# timm classes whose last block (as timm's group_matcher finds it) is followed by exactly a registered tail.
_TAIL_BY_CLASS = {"VisionTransformer": "vit", "VisionTransformerDistilled": "vit_distilled",
                  "SwinTransformer": "swin", "EfficientNet": "efficientnet", "ResNet": "resnet",
                  "NormFreeNet": "nfnet"}


def plan_for(model_name: str, backbone: nn.Module | None = None, pooling: str = "auto") -> Plan:
    spec = catalogue.get(model_name)
    if spec is not None:
        return Plan(model_name, spec.unfreeze_from, spec.arch, spec.pooling if pooling == "auto" else pooling,
                    spec.family)
    if backbone is None:
        raise ValueError("a backbone is needed to plan a model outside the catalogue")
    family = "transformer" if hasattr(backbone, "patch_embed") else "cnn"  # token models embed patches
    arch = _TAIL_BY_CLASS.get(type(backbone).__name__, "generic")
    return Plan(model_name, generic_unfreeze_point(backbone), arch, "model" if pooling == "auto" else pooling, family)


class SingleBlockModel(nn.Module):
    def __init__(self, backbone: nn.Module, plan: Plan, head_hidden: int = 256, head_dropout: float = 0.5,
                 num_classes: int = catalogue.NUM_CLASSES, head_init: str = "torch",
                 bn_momentum: float | None = None):
        super().__init__()
        self.plan = plan
        self.backbone = backbone
        self.tail: Tail | None = TAILS.get(plan.arch)
        if plan.arch == "vgg":
            backbone.pre_logits = nn.Identity()  # Keras VGG19(include_top=False): no 4096-wide fc layers
        backbone.reset_classifier(0)  # the paper replaces every classifier (both heads of a distilled DeiT)
        self.block = backbone.get_submodule(plan.unfreeze_from)
        cache_at = self.tail.cache_at if self.tail and self.tail.cache_at else plan.unfreeze_from
        self.cache_point = backbone.get_submodule(cache_at)
        tokens = self.tail.tokens if self.tail else 1
        self.heads = nn.ModuleList(
            MLPHead(backbone.num_features, head_hidden, head_dropout, num_classes, head_init) for _ in range(tokens))
        self._static_kwargs: dict = {}
        self._trainable_modules = self._select_trainable()
        self._freeze_rest()
        if bn_momentum is not None:
            for bn in self.trainable_batchnorms():
                bn.momentum = bn_momentum

    # -- which parameters train ----------------------------------------------------------------------------------
    def _select_trainable(self) -> list[str]:
        """Module paths (inside the backbone) that train: the block and the layers after it the paper keeps."""
        if self.tail is not None:  # kept layers that exist and hold weights (not an Identity fc_norm)
            post = self.tail.post_modules(self.backbone, self.plan.unfreeze_from)
            return [self.plan.unfreeze_from, *[p for p in post if _has_module(self.backbone, p)
                                               and any(True for _ in self.backbone.get_submodule(p).parameters())]]
        # Generic rule: the block and every module registered after it ("from the last block to the end").
        block = self.plan.unfreeze_from
        names: list[str] = []
        for name, mod in self.backbone.named_modules():
            if name == block:
                names.append(name)
            elif (names and name and not any(name.startswith(n + ".") for n in names)
                  and not block.startswith(name + ".") and any(True for _ in mod.parameters())):
                names.append(name)
        return names

    def _freeze_rest(self) -> None:
        from timm.utils import freeze

        # By identity, not name: a module shared by several blocks (CoaT's cpe4) has one name but many users.
        trainable = {id(p) for m in self._trainable_modules for p in self.backbone.get_submodule(m).parameters()}
        frozen = _maximal_frozen_modules(self.backbone, trainable)
        if frozen:
            freeze(self.backbone, submodules=frozen)  # FrozenBatchNorm: running stats can never move
        for p in self.backbone.parameters():
            p.requires_grad_(id(p) in trainable)

    def trainable_batchnorms(self) -> list[nn.Module]:
        """The BatchNorm layers of the trainable part (the frozen ones are FrozenBatchNorm and never update)."""
        return [m for name in self._trainable_modules for m in self.backbone.get_submodule(name).modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def head_l2_term(self) -> torch.Tensor:
        """Sum of squared kernel weights of every head's Linear layers: Keras' l2 penalty is its factor times this."""
        return sum(h.kernel_sq_sum() for h in self.heads)

    def frozen_state(self) -> dict[str, torch.Tensor]:
        """The frozen part's parameters and buffers: what the cached features depend on, and all they depend on
        (the trainable block's weights change in training; a resumed run's features are still the same)."""
        trainable = tuple(f"{m}." for m in self._trainable_modules)
        return {k: v for k, v in self.backbone.state_dict().items() if not k.startswith(trainable)}

    def trainable_parameter_names(self, prefix: str = "backbone.") -> list[str]:
        return [prefix + name for name, p in self.backbone.named_parameters() if p.requires_grad]

    def trainable_module_names(self) -> list[str]:
        return [*self._trainable_modules, *(f"heads.{i}" for i in range(len(self.heads)))]

    def train(self, mode: bool = True):
        # The frozen part always runs in inference mode; only the block, its kept layers and the heads train.
        super().train(False)
        if mode:
            for m in self._trainable_modules:
                self.backbone.get_submodule(m).train(True)
            self.heads.train(True)
        self.training = mode
        return self

    # -- forward -------------------------------------------------------------------------------------------------
    @property
    def cacheable(self) -> bool:
        return self.tail is not None

    def frozen_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The frozen part's output for a batch: the trainable block's tensor inputs."""
        if self.tail is None:
            return [x]
        with torch.inference_mode():
            args, kwargs = capture_block_input(self.backbone, self.cache_point, x)
        self._static_kwargs = {k: v for k, v in kwargs.items() if not torch.is_tensor(v)}
        if any(torch.is_tensor(v) for v in kwargs.values()) or not all(torch.is_tensor(a) for a in args):
            raise RuntimeError(f"{self.plan.arch}: unexpected block inputs; cannot cache them")
        return [a.clone() for a in args]  # leave inference mode: the tail needs ordinary tensors

    def forward_from_features(self, feats: list[torch.Tensor]) -> torch.Tensor:
        if self.tail is None:
            x = self.backbone.forward_features(feats[0])
        else:
            x = self.tail.run(self.backbone, self.cache_point, tuple(feats), self._static_kwargs)
        pooled = self._pool(x)
        logits = [head(p) for head, p in zip(self.heads, pooled)]
        # Distilled DeiT: class and distillation heads averaged, as timm does at evaluation.
        return logits[0] if len(logits) == 1 else torch.stack(logits).mean(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from_features(self.frozen_features(x))

    def _pool(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.tail is not None and self.tail.tokens == 2:
            return [x[:, 0], x[:, 1]]
        if self.plan.pooling == "model":
            return [self.backbone.forward_head(x, pre_logits=True)]
        dims = (2, 3) if x.ndim == 4 else (1,)
        return [x.amax(dims) if self.plan.pooling == "max" else x.mean(dims)]

    # -- bookkeeping -------------------------------------------------------------------------------------------
    def count_params(self) -> dict[str, int]:
        head = sum(p.numel() for p in self.heads.parameters())
        backbone_trainable = sum(p.numel() for p in self.backbone.parameters() if p.requires_grad)
        return {
            "total_params": sum(p.numel() for p in self.backbone.parameters()) + head,
            "trainable_params": backbone_trainable + head,
            "trainable_backbone_params": backbone_trainable,
            "head_params": head,
        }

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything that can change in training: trainable parameters, the block's buffers, the heads."""
        sd = self.state_dict()
        keep = tuple(f"backbone.{m}." for m in self._trainable_modules) + ("heads.",)
        return {k: v for k, v in sd.items() if k.startswith(keep)}


def _has_module(root: nn.Module, path: str) -> bool:
    try:
        root.get_submodule(path)
        return True
    except AttributeError:
        return False


def _maximal_frozen_modules(root: nn.Module, trainable: set[int]) -> list[str]:
    """The largest submodules holding no trainable parameter (what timm's freeze() is given)."""
    out: list[str] = []

    def visit(mod: nn.Module, prefix: str) -> None:
        for name, child in mod.named_children():
            path = f"{prefix}{name}"
            if not any(id(p) in trainable for p in child.parameters()):
                out.append(path)
            else:
                visit(child, path + ".")
    visit(root, "")
    return out
