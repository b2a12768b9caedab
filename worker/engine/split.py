"""Where a timm model splits into its frozen part and its single trainable block.

The paper unfreezes "from the start of the last block to the end". The frozen part is whatever the timm model
computes before that block: we run the model's own `forward_features` and stop it at the block's input (a
forward pre-hook), so no architecture's front is re-implemented here. What runs after the block (final norm,
conv_head, final_conv ...) is a short per-architecture *tail*, registered by name below. A model with a tail can
cache its frozen features (features.py); any other timm model still trains through the generic rule, with a
full forward pass every step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


class _StopForward(Exception):
    pass


def capture_block_input(backbone: nn.Module, block: nn.Module, x: torch.Tensor) -> tuple[tuple, dict]:
    """Run the backbone's own forward up to `block` and return the (args, kwargs) it would be called with."""
    captured: dict = {}

    def hook(_module, args, kwargs):
        captured["args"], captured["kwargs"] = args, kwargs
        raise _StopForward

    handle = block.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        backbone.forward_features(x)
    except _StopForward:
        pass
    finally:
        handle.remove()
    if "args" not in captured:
        raise RuntimeError(f"{type(backbone).__name__}.forward_features never reached the trainable block")
    return captured["args"], captured["kwargs"]


@dataclass(frozen=True)
class Tail:
    """What the backbone computes from the cached point to the features before pooling."""
    post: tuple[str, ...] | Callable  # trainable modules besides the block (final norm, conv_head ...)
    run: Callable  # (backbone, cache_point, args, kwargs) -> feature map or tokens, before pooling
    tokens: int = 1  # class-like tokens that get their own head (2 for distilled DeiT)
    cache_at: str | None = None  # cache this module's input instead of the block's (see CoaT below)

    def post_modules(self, backbone: nn.Module, block_path: str) -> list[str]:
        return list(self.post(backbone, block_path) if callable(self.post) else self.post)


def _post(*names):
    """Tail = block, then the named modules in order."""
    def run(m, block, args, kwargs):
        x = block(*args, **kwargs)
        for n in names:
            x = m.get_submodule(n)(x)
        return x
    return run


def _vit_pooled_tokens(tokens: int):
    """Tail for token-pooled ViTs (DeiT, ViT): the last block computed for the pooled tokens only.

    The head reads only the class (and distillation) token after the final norm, and LayerNorm and the MLP act
    per token, so of the last block only those tokens' rows matter: their queries attend to every token's keys
    and values, then projection, residuals and MLP run on `tokens` rows instead of all 197. Exact (it is the
    same arithmetic, minus rows nobody reads), and most of the block's cost is gone. Falls back to the whole
    block for any block or attention that is not timm's plain one.
    """
    def run(m, block, args, kwargs):
        from timm.layers import Attention
        from timm.models.vision_transformer import Block

        x = args[0]
        attn = getattr(block, "attn", None)
        if (kwargs or type(block) is not Block or type(attn) is not Attention or attn.gate is not None
                or getattr(m, "attn_pool", None) is not None or m.global_pool != "token"):
            return m.norm(block(x, **kwargs))
        B, N, C = x.shape
        h = block.norm1(x)
        w, b = attn.qkv.weight, attn.qkv.bias
        d = attn.num_heads * attn.head_dim
        q = F.linear(h[:, :tokens], w[:d], None if b is None else b[:d])
        kv = F.linear(h, w[d:], None if b is None else b[d:])
        q = q.reshape(B, tokens, attn.num_heads, attn.head_dim).transpose(1, 2)
        k, v = kv.reshape(B, N, 2, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = attn.q_norm(q), attn.k_norm(k)
        o = F.scaled_dot_product_attention(q, k, v, dropout_p=attn.attn_drop.p if attn.training else 0.0,
                                           scale=attn.scale)
        o = attn.proj_drop(attn.proj(attn.norm(o.transpose(1, 2).reshape(B, tokens, d))))
        y = x[:, :tokens] + block.drop_path1(block.ls1(o))
        y = y + block.drop_path2(block.ls2(block.mlp(block.norm2(y))))
        return m.norm(y)
    return run


def _cait(m, block, args, kwargs):
    x, cls_tokens = args
    cls_tokens = block(x, cls_tokens, **kwargs)  # the last class-attention block updates the class token only
    return m.norm(torch.cat((cls_tokens, x), dim=1))


def _sequential_rest(m, block, args, kwargs):
    """Tail = the block and everything after it in VGG's `features` (the rest of Keras' block5)."""
    start = next(i for i, mod in enumerate(m.features) if mod is block)
    x = args[0]
    for mod in list(m.features)[start:]:
        x = mod(x)
    return x


def _vgg_post(m, block_path):
    """Keras' block5 is four convolutions; timm's `features` lists them one module each."""
    start = int(block_path.rsplit(".", 1)[1])
    return [f"features.{i}" for i, mod in enumerate(m.features)
            if i > start and any(True for _ in mod.parameters())]


def _coat(m, first_block, args, kwargs):
    x = args[0]
    for blk in m.serial_blocks4:
        x = blk(x, **kwargs)
    return m.norm4(x)


TAILS: dict[str, Tail] = {
    "vit": Tail(("norm", "fc_norm"), _vit_pooled_tokens(1)),
    "vit_distilled": Tail(("norm",), _vit_pooled_tokens(2), tokens=2),
    "cait": Tail(("norm",), _cait),
    # CoaT's last stage shares one conv position encoder (cpe4) and one relative position encoder (crpe4)
    # among its blocks; the paper's 3,308,298 trains them with the last block. Since they also feed the
    # earlier blocks of the stage, the cache holds that stage's input, and the tail runs the whole stage.
    "coat": Tail(("norm4", "cpe4", "crpe4"), _coat, cache_at="serial_blocks4.0"),
    "swin": Tail(("norm",), _post("norm")),
    "nfnet": Tail(("final_conv",), _post("final_conv", "final_act")),
    "efficientnet": Tail(("conv_head", "bn2"), _post("conv_head", "bn2")),
    "vgg": Tail(_vgg_post, _sequential_rest),
    "densenet": Tail(("features.norm5",), _post("features.norm5")),
    "resnet": Tail((), _post()),
}


def generic_unfreeze_point(backbone: nn.Module) -> str:
    """The last block of any timm model, from timm's own `group_matcher` (the layer-decay grouping).

    The last group that holds a numbered block (a path with an integer part, or a named dense layer) is the
    paper's last block; its module path is returned.
    """
    from timm.models._manipulate import group_modules

    if not hasattr(backbone, "group_matcher"):
        raise ValueError(f"{type(backbone).__name__} has no timm group_matcher; cannot find its last block")
    classifier = _classifier_names(backbone)
    groups = group_modules(backbone, backbone.group_matcher(coarse=False))
    for _gid, names in reversed(list(groups.items())):
        for name in names:
            if any(name == c or name.startswith(c + ".") for c in classifier):
                continue
            parts = name.split(".")
            idx = [i for i, p in enumerate(parts) if p.isdigit()]
            if idx:
                return ".".join(parts[: idx[-1] + 1])
    raise ValueError(f"no numbered block found in {type(backbone).__name__}'s group_matcher")


def _classifier_names(backbone: nn.Module) -> list[str]:
    cls = getattr(backbone, "pretrained_cfg", {}).get("classifier") or []
    return [cls] if isinstance(cls, str) else list(cls)
