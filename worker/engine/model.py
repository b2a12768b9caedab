"""A timm backbone with everything frozen but its last block, plus the paper's MLP head(s).

Freezing follows the paper (Keras `trainable=False`): frozen parameters get no gradient, and the frozen part
always runs in inference mode, so its BatchNorm statistics and dropout never change (timm's `freeze()` turns its
BatchNorms into FrozenBatchNorm). The frozen part is also run under `torch.inference_mode()`: it records no
autograd history and keeps no activations for backward.

The authors' Keras CNNs trained their block's BatchNorms with Keras' momentum 0.99 (torch's 0.01): `bn_momentum`
sets it on the BatchNorms of the trainable part only. Their heads had he_normal kernels and an L2(0.01) penalty:
`head_init` and `head_l2_term` (heads.py).

`trainable_blocks` K sets the depth (split.block_list counts the blocks): K=1 is the paper (the fast tails of
split.TAILS); K>=2 trains the last K blocks and every module with parameters registered after the first of them,
caches that block's input and runs the model's own forward from it (split.run_from); K=0 trains the head(s)
alone and caches their input, the pooled features; K=None trains everything (no freezing, BatchNorms train, no
cache: a full forward every step).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from core import catalogue

from .heads import MLPHead
from .split import DEEP, DEFAULT_DEEP, TAILS, Tail, block_list, capture_block_input, generic_unfreeze_point

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
                 bn_momentum: float | None = None, trainable_blocks: int | None = 1):
        super().__init__()
        self.plan = plan
        self.num_classes = num_classes
        self.trainable_blocks = trainable_blocks  # 1 = the paper; 0 = head only; None = all (full fine-tuning)
        self.backbone = backbone
        self.tail: Tail | None = TAILS.get(plan.arch)
        if plan.arch == "vgg":
            backbone.pre_logits = nn.Identity()  # Keras VGG19(include_top=False): no 4096-wide fc layers
        backbone.reset_classifier(0)  # the paper replaces every classifier (both heads of a distilled DeiT)
        self.block = backbone.get_submodule(plan.unfreeze_from)
        self.blocks = block_list(backbone, plan)
        k = trainable_blocks
        if k is not None and not 0 <= k <= len(self.blocks):
            raise ValueError(f"trainable_blocks={k}: {plan.model} has {len(self.blocks)} blocks "
                             f"({self.blocks[0]} ... {self.blocks[-1]}); choose 0 to {len(self.blocks)}, or all")
        self.mode = "all" if k is None else "head" if k == 0 else "tail" if k == 1 else "deep"
        self.deep = DEEP.get(plan.arch, DEFAULT_DEEP)
        self.trainable_block_names = [] if k is None or k == 0 else self.blocks[-k:]
        self.cache_at = self._cache_at()
        self.cache_point = backbone.get_submodule(self.cache_at) if self.cache_at else None
        tokens = self.tail.tokens if self.tail else 1
        self.heads = nn.ModuleList(
            MLPHead(backbone.num_features, head_hidden, head_dropout, num_classes, head_init) for _ in range(tokens))
        self._static_kwargs: dict = {}
        self._front: tuple | None = None  # (shape, dtype, memory format) of one input image: run_from's dummy
        self._trainable_modules = self._select_trainable()
        self._freeze_rest()
        if bn_momentum is not None:
            for bn in self.trainable_batchnorms():
                bn.momentum = bn_momentum

    def _cache_at(self) -> str | None:
        """The module whose input the cache holds (None: the head's input, or nothing cached)."""
        if self.mode == "tail":
            return self.tail.cache_at if self.tail and self.tail.cache_at else self.plan.unfreeze_from
        if self.mode == "deep":
            return self.deep.cache_at(self.trainable_block_names[0])
        return None

    # -- which parameters train ----------------------------------------------------------------------------------
    def _select_trainable(self) -> list[str]:
        """Module paths (inside the backbone) that train: the block(s) and the layers after them the paper keeps."""
        if self.mode == "head":
            return []
        if self.mode == "all":  # every top-level part with weights, and parameters held by the model itself
            return [n for n, mod in self.backbone.named_children() if any(True for _ in mod.parameters())] + [
                n for n, _ in self.backbone.named_parameters(recurse=False)]
        if self.mode == "tail" and self.tail is not None:  # kept layers that exist and hold weights
            post = self.tail.post_modules(self.backbone, self.plan.unfreeze_from)
            return [self.plan.unfreeze_from, *[p for p in post if _has_module(self.backbone, p)
                                               and any(True for _ in self.backbone.get_submodule(p).parameters())]]
        # Generic rule: the blocks and every module registered after the first of them ("from the last block to
        # the end"); a module that holds a trainable block is entered, so the list names the blocks themselves.
        blocks = self.trainable_block_names
        names: list[str] = []
        for name, mod in self.backbone.named_modules():
            if name in blocks:
                names.append(name)
            elif (names and name and not any(name.startswith(n + ".") for n in names)
                  and not any(b.startswith(name + ".") for b in blocks) and any(True for _ in mod.parameters())):
                names.append(name)
        if self.mode == "deep":
            if self.tail is not None:  # the K=1 set (CoaT's shared encoders) trains at every depth
                names += [p for p in self.tail.post_modules(self.backbone, self.plan.unfreeze_from)
                          if p not in names and _has_module(self.backbone, p)
                          and any(True for _ in self.backbone.get_submodule(p).parameters())]
            names += [p for p in self.deep.extra(self.backbone, blocks) if p not in names]
        return names

    def _parts(self):
        """The trainable modules (a parameter the model holds itself, trained with K=all, is not one)."""
        return [self.backbone.get_submodule(m) for m in self._trainable_modules if _has_module(self.backbone, m)]

    def _freeze_rest(self) -> None:
        from timm.utils import freeze

        if self.mode == "all":
            for p in self.backbone.parameters():
                p.requires_grad_(True)
            return
        # By identity, not name: a module shared by several blocks (CoaT's cpe4) has one name but many users.
        trainable = {id(p) for m in self._parts() for p in m.parameters()}
        frozen = _maximal_frozen_modules(self.backbone, trainable)
        if frozen:
            freeze(self.backbone, submodules=frozen)  # FrozenBatchNorm: running stats can never move
        for p in self.backbone.parameters():
            p.requires_grad_(id(p) in trainable)

    def trainable_batchnorms(self) -> list[nn.Module]:
        """The BatchNorm layers of the trainable part (the frozen ones are FrozenBatchNorm and never update)."""
        return [m for part in self._parts() for m in part.modules()
                if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def head_l2_term(self) -> torch.Tensor:
        """Sum of squared kernel weights of every head's Linear layers: Keras' l2 penalty is its factor times this."""
        return sum(h.kernel_sq_sum() for h in self.heads)

    def frozen_state(self) -> dict[str, torch.Tensor]:
        """The frozen part's parameters and buffers: what the cached features depend on, and all they depend on
        (the trainable blocks' weights change in training; a resumed run's features are still the same). By
        identity, so a trainable module shared under several names (CoaT's cpe4) is left out under each."""
        trainable = tuple(f"{m}." for m in self._trainable_modules)
        moving = {id(p) for p in self.backbone.parameters() if p.requires_grad}
        return {k: v.detach() for k, v in self.backbone.state_dict(keep_vars=True).items()
                if not k.startswith(trainable) and k not in self._trainable_modules and id(v) not in moving}

    def trainable_parameter_names(self, prefix: str = "backbone.") -> list[str]:
        return [prefix + name for name, p in self.backbone.named_parameters() if p.requires_grad]

    def trainable_module_names(self) -> list[str]:
        return [*self._trainable_modules, *(f"heads.{i}" for i in range(len(self.heads)))]

    def train(self, mode: bool = True):
        # The frozen part always runs in inference mode; only the trainable part and the heads train.
        if self.mode == "all":
            return super().train(mode)
        super().train(False)
        if mode:
            for part in self._parts():
                part.train(True)
            self.heads.train(True)
        self.training = mode
        return self

    # -- forward -------------------------------------------------------------------------------------------------
    @property
    def cacheable(self) -> bool:
        return self.cache_reason is None

    @property
    def cache_reason(self) -> str | None:
        """Why the frozen part cannot be cached (None: it can, exactly)."""
        if self.mode == "all":
            return "trainable_blocks=all: every layer trains, full forward pass every step"
        if self.mode == "head":
            return None  # the head's input: exact for any model
        if self.tail is None:
            return f"no tail adapter for {type(self.backbone).__name__}: full forward pass every step"
        if self.mode == "deep" and not self.deep.supports(self.backbone):
            return (f"{type(self.backbone).__name__} cannot be run exactly from a cached block input at "
                    f"trainable_blocks={self.trainable_blocks}: full forward pass every step")
        return None

    @property
    def cached_what(self) -> str:
        """What the cache holds, in words (the feature-cache info and its key name it)."""
        if self.mode == "head":
            return "the heads' input (pooled features)"
        return f"the input of {self.cache_at}" if self.cache_at else "nothing"

    def frozen_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The frozen part's output for a batch: the first trainable block's tensor inputs (K=0: the heads'
        inputs, one per head); the images themselves where nothing is cached."""
        if not self.cacheable:
            return [x]
        if self.mode == "head":
            with torch.inference_mode():
                pooled = self._pool(self.backbone.forward_features(x))
            return [p.clone() for p in pooled]
        self._front = (tuple(x.shape[1:]), x.dtype, x.is_contiguous(memory_format=torch.channels_last)
                       and not x.is_contiguous())
        with torch.inference_mode():
            args, kwargs = capture_block_input(self.backbone, self.cache_point, x)
        self._static_kwargs = {k: v for k, v in kwargs.items() if not torch.is_tensor(v)}
        if any(torch.is_tensor(v) for v in kwargs.values()) or not all(torch.is_tensor(a) for a in args):
            raise RuntimeError(f"{self.plan.arch}: unexpected block inputs; cannot cache them")
        return [a.clone() for a in args]  # leave inference mode: the tail needs ordinary tensors

    def forward_from_features(self, feats: list[torch.Tensor]) -> torch.Tensor:
        logits = self.forward_heads(feats)
        # Distilled DeiT: class and distillation heads averaged, as timm does at evaluation.
        return logits[0] if len(logits) == 1 else torch.stack(logits).mean(0)

    def forward_heads(self, feats: list[torch.Tensor], x: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Each head's logits, in head order (a distilled DeiT: class head, then distillation head): what
        distillation trains on separately. `x` is the backbone's output before pooling when the caller has it."""
        if self.mode == "head" and self.cacheable and x is None:
            pooled = feats
        else:
            pooled = self._pool(self._backbone_out(feats) if x is None else x)
        return [head(p) for head, p in zip(self.heads, pooled)]

    def _backbone_out(self, feats: list[torch.Tensor]) -> torch.Tensor:
        """What the backbone computes from the cached point to the features before pooling."""
        if not self.cacheable:
            return self.backbone.forward_features(feats[0])
        if self.mode == "tail":
            return self.tail.run(self.backbone, self.cache_point, tuple(feats), self._static_kwargs)
        if self._front is None:
            raise RuntimeError("frozen_features must run once before forward_from_features (it learns the input "
                               "size the front of the model is replayed at)")
        shape, dtype, channels_last = self._front
        front = torch.zeros((1, *shape), dtype=dtype, device=feats[0].device)
        if channels_last:
            front = front.contiguous(memory_format=torch.channels_last)
        return self.deep.run(self.backbone, self.cache_point, tuple(feats), self._static_kwargs, front)

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
        # timm's freeze() turns a frozen BatchNorm's weight and bias into buffers: still the network's parameters,
        # so the total is the same at every depth (trainable_blocks=all trains exactly the total).
        frozen_bn = sum(m.weight.numel() + m.bias.numel() for m in self.backbone.modules()
                        if "FrozenBatchNorm" in type(m).__name__ and getattr(m, "weight", None) is not None)
        return {
            "total_params": sum(p.numel() for p in self.backbone.parameters()) + frozen_bn + head,
            "trainable_params": backbone_trainable + head,
            "trainable_backbone_params": backbone_trainable,
            "head_params": head,
        }

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Everything that can change in training: trainable parameters, the block's buffers, the heads."""
        sd = self.state_dict()
        if self.mode == "all":
            return sd
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
