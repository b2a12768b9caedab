"""Where a timm model splits into its frozen part and its single trainable block.

The paper unfreezes "from the start of the last block to the end". The frozen part is whatever the timm model
computes before that block: we run the model's own `forward_features` and stop it at the block's input (a
forward pre-hook), so no architecture's front is re-implemented here. What runs after the block (final norm,
conv_head, final_conv ...) is a short per-architecture *tail*, registered by name below. A model with a tail can
cache its frozen features (features.py); any other timm model still trains through the generic rule, with a
full forward pass every step.

Deeper splits (`trainable_blocks` K >= 2) count blocks on `block_list`: the modules of the same kind as the
paper's last block. From a cached point they run the model's own `forward_features` (`run_from`), so glue between
blocks (Swin's patch merging, CaiT's class-token concat, DenseNet's transitions) is timm's code, not ours; only
CoaT, whose forward reads the batch size from its input image, has its own runner (`DEEP`).
"""
from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

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
        if (kwargs or type(block) is not Block or type(attn) is not Attention
                or getattr(attn, "gate", None) is not None  # newer timm may gate the output; older has no gate
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


# -- trainable depth: the block list and deeper cache points ---------------------------------------------------------
def block_list(backbone: nn.Module, plan) -> list[str]:
    """The blocks the paper's last-block rule takes the last of, in forward order: `trainable_blocks` counts on it.

    By default the modules whose path is the last block's with other numbers (`blocks.11` -> every `blocks.N`,
    `blocks.6.0` -> every `blocks.S.B`, `features.denseblock4` -> every dense block, `layer4` -> every ResNet
    stage). CaiT's list is its self-attention blocks then its class-attention blocks; VGG's is Keras' five blocks
    (the first convolution of each).
    """
    names = _BLOCK_LISTS.get(plan.arch, _same_kind)(backbone, plan.unfreeze_from)
    if not names or names[-1] != plan.unfreeze_from:
        raise ValueError(f"{type(backbone).__name__}: the block list does not end at {plan.unfreeze_from}")
    return names


def _same_kind(backbone: nn.Module, path: str) -> list[str]:
    pattern = re.compile(re.sub(r"\d+", r"\\d+", re.escape(path)))
    return [n for n, _ in backbone.named_modules() if pattern.fullmatch(n)]


def _cait_blocks(backbone: nn.Module, path: str) -> list[str]:
    return _same_kind(backbone, "blocks.0") + _same_kind(backbone, path)


def _vgg_blocks(backbone: nn.Module, path: str) -> list[str]:
    """Keras' VGG blocks start after each max pool: timm's `features` is one flat list, so name each block by
    its first convolution (vgg19: features.0, 5, 10, 19, 28)."""
    f = list(backbone.features)
    return [f"features.{i}" for i, mod in enumerate(f)
            if isinstance(mod, nn.Conv2d) and (i == 0 or isinstance(f[i - 1], nn.MaxPool2d))]


_BLOCK_LISTS: dict[str, Callable] = {"cait": _cait_blocks, "vgg": _vgg_blocks}


def run_from(backbone: nn.Module, point: nn.Module, args: tuple, kwargs: dict, front: torch.Tensor) -> torch.Tensor:
    """The backbone's own `forward_features` from a cached point: run on `front` (one dummy image, so the front
    costs 1/B of a batch), with `point`'s inputs replaced by the cached batch (`args`) as it is called. Everything
    after the point is the model's own code. Exact wherever nothing computed before the point, other than its
    inputs, flows past it (tests/worker/test_depth.py proves it per family)."""
    called = []

    def hook(_module, _args, kw):
        called.append(True)
        return args, {**kw, **kwargs}

    handle = point.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        out = backbone.forward_features(front)
    finally:
        handle.remove()
    if len(called) != 1:
        raise RuntimeError(f"{type(backbone).__name__}.forward_features called the cache point {len(called)} times")
    return out


@dataclass(frozen=True)
class Deep:
    """A family's rules for K >= 2 blocks, where the default (cache the first trainable block's input, run the
    model's own forward from there, train what is registered after it) needs help."""
    cache_at: Callable[[str], str]  # first trainable block -> module whose input is cached
    extra: Callable[[nn.Module, list[str]], list[str]]  # (backbone, trainable blocks) -> more modules that train
    run: Callable  # (backbone, cache point module, args, kwargs, front) -> output of forward_features
    supports: Callable[[nn.Module], bool] = lambda m: True  # else: no cache (exactness not proven)


def _coat_stage(block: str) -> int:
    return int(re.fullmatch(r"serial_blocks(\d+)\.\d+", block).group(1))


def _coat_extra(m: nn.Module, blocks: list[str]) -> list[str]:
    """CoaT's stage-shared encoders (cpeS, crpeS) train with any trainable block of their stage; the patch
    embeddings of the later stages run after the first trainable block, so they train as Swin's patch merging does
    (they are registered before every block, so the registration rule alone would miss them)."""
    stages = sorted({_coat_stage(b) for b in blocks})
    names = [f"{kind}{s}" for s in stages for kind in ("cpe", "crpe")]
    return names + [f"patch_embed{s}" for s in stages[1:]]


def _coat_from(m: nn.Module, point: nn.Module, args: tuple, kwargs: dict, front) -> torch.Tensor:
    """CoaT-Lite's serial stages from the input of a stage's first block, as timm's forward_features runs them.
    timm reads the batch size from the input image (B = x0.shape[0]), so its own forward cannot run from a cache."""
    from timm.models.coat import insert_cls, remove_cls

    name = next(n for n, mod in m.named_modules() if mod is point)
    start = _coat_stage(name)
    x = args[0]
    B = x.shape[0]
    for s in range(start, 5):
        embed = m.get_submodule(f"patch_embed{s}")
        if s > start:
            x = insert_cls(embed(x), getattr(m, f"cls_token{s}"))
        H, W = embed.grid_size
        for blk in m.get_submodule(f"serial_blocks{s}"):
            x = blk(x, size=(H, W))
        if s < 4:
            x = remove_cls(x).reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()
    return m.norm4(x)


def _cait_from(m: nn.Module, point: nn.Module, args: tuple, kwargs: dict, front) -> torch.Tensor:
    """CaiT from a cached point. Its class-attention blocks all read the patch tokens the self-attention blocks
    left, beside the class token: from inside that stage the cache holds both and the stage's rest runs here (as
    the K=1 tail does); from a self-attention block, the model's own forward."""
    token_only = list(m.blocks_token_only)
    if not any(point is blk for blk in token_only):
        return run_from(m, point, args, kwargs, front)
    x, cls_tokens = args
    for blk in token_only[next(i for i, blk in enumerate(token_only) if blk is point):]:
        cls_tokens = blk(x, cls_tokens, **kwargs)
    return m.norm(torch.cat((cls_tokens, x), dim=1))


DEFAULT_DEEP = Deep(cache_at=lambda block: block, extra=lambda m, blocks: [], run=run_from)
DEEP: dict[str, Deep] = {
    "cait": Deep(cache_at=lambda block: block, extra=lambda m, blocks: [], run=_cait_from),
    # A stage's shared encoders feed all its blocks: cache at the first block of the first trainable stage.
    "coat": Deep(cache_at=lambda block: f"serial_blocks{_coat_stage(block)}.0", extra=_coat_extra, run=_coat_from,
                 supports=lambda m: getattr(m, "parallel_blocks", None) is None
                 and not getattr(m, "return_interm_layers", False)),
}
