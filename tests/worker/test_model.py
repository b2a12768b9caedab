"""Single-block freezing and the per-architecture split, on real timm architectures (random init)."""
import pytest
import timm
import torch

from worker.engine.model import Plan, SingleBlockModel, plan_for
from worker.engine.split import generic_unfreeze_point


def _reference_logits(m: SingleBlockModel, x):
    """What the whole backbone computes, through timm's own forward_features: the split must agree."""
    feats = m.backbone.forward_features(x)
    pooled = m._pool(feats)
    logits = [h(p) for h, p in zip(m.heads, pooled)]
    return torch.stack(logits).mean(0)


# A small sibling of each paper architecture, split exactly as its catalogue entry.
SIBLINGS = [
    ("deit_tiny_patch16_224", "vit", "blocks.11", 64),
    ("deit_tiny_distilled_patch16_224", "vit_distilled", "blocks.11", 64),
    ("cait_xxs24_224", "cait", "blocks_token_only.1", 64),
    ("coat_lite_tiny", "coat", "serial_blocks4.1", 64),
    ("swin_tiny_patch4_window7_224", "swin", "layers.3.blocks.1", 224),
    ("dm_nfnet_f0", "nfnet", "stages.3.2", 64),
    ("tf_efficientnet_lite0", "efficientnet", "blocks.6.0", 64),
    ("vgg11", "vgg", "features.16", 64),
    ("densenet121", "densenet", "features.denseblock4", 64),
    ("resnet18", "resnet", "layer4", 64),
]


@pytest.mark.slow
@pytest.mark.parametrize("name,arch,block,size", SIBLINGS)
def test_split_forward_equals_full_forward(name, arch, block, size):
    torch.manual_seed(0)
    kw = {"img_size": size} if arch in ("vit", "vit_distilled", "cait", "coat") else {}
    bb = timm.create_model(name, pretrained=False, **kw)
    family = "cnn" if arch in ("nfnet", "efficientnet", "vgg", "densenet", "resnet") else "transformer"
    m = SingleBlockModel(bb, Plan(name, block, arch, "max" if arch in ("vgg", "densenet", "resnet") else "model",
                                  family)).eval()
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        split = m(x)
        full = _reference_logits(m, x)
    torch.testing.assert_close(split, full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name,arch", [("vit_small_patch16_224", "vit"), ("efficientnet_b0", "efficientnet"),
                                       ("resnet18", "resnet"), ("convnext_atto", "generic")])
def test_models_outside_the_catalogue_get_a_tail_when_timm_class_has_one(name, arch):
    torch.manual_seed(0)
    bb = timm.create_model(name, pretrained=False, **({"img_size": 64} if name.startswith("vit") else {}))
    m = SingleBlockModel(bb, plan_for(name, bb)).eval()
    assert m.plan.arch == arch and m.cacheable == (arch != "generic")
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(m(x), _reference_logits(m, x), rtol=1e-4, atol=1e-5)


def test_generic_rule_finds_the_last_block():
    bb = timm.create_model("resnet18", pretrained=False)
    assert generic_unfreeze_point(bb) == "layer4.1"
    bb = timm.create_model("convnext_atto", pretrained=False)
    plan = plan_for("convnext_atto", bb)
    assert plan.arch == "generic" and plan.unfreeze_from == "stages.3.blocks.1"
    m = SingleBlockModel(bb, plan)
    names = m.trainable_parameter_names()
    assert names and all(n.startswith(("backbone.stages.3.blocks.1.", "backbone.head.norm")) for n in names)


def _train_steps(m, x, y, steps=3):
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    m.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.train
@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "deit_tiny_patch16_224", "densenet121"])
def test_frozen_part_is_bit_identical_after_training(name):
    torch.manual_seed(0)
    kw = {"img_size": 64} if name.startswith("deit") else {}
    bb = timm.create_model(name, pretrained=False, **kw)
    plan = plan_for(name, bb) if name != "densenet121" else Plan(name, "features.denseblock4", "densenet", "max", "cnn")
    m = SingleBlockModel(bb, plan)
    trainable = set(m.trainable_parameter_names(prefix=""))
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    heads_before = {k: v.clone() for k, v in m.heads.state_dict().items()}
    _train_steps(m, torch.randn(8, 3, 64, 64), torch.randint(0, 10, (8,)))
    after = m.backbone.state_dict()
    kept = set(m.trainable_state_dict())
    for k, v in after.items():
        if f"backbone.{k}" in kept:
            continue  # the block and its kept layers
        assert torch.equal(v, before[k]), f"frozen {k} changed"
    changed = [k for k in trainable if not torch.equal(after[k], before[k])]
    assert len(changed) == len(trainable), "every trainable parameter should move"
    assert any(not torch.equal(v, heads_before[k]) for k, v in m.heads.state_dict().items())


def test_frozen_part_runs_in_inference_mode():
    bb = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    m = SingleBlockModel(bb, plan_for("tf_efficientnet_lite0", bb)).train()
    assert not m.backbone.blocks[0].training and m.backbone.blocks[6][0].training and m.heads.training
    feats = m.frozen_features(torch.randn(2, 3, 64, 64))
    assert all(f.grad_fn is None and not f.requires_grad for f in feats)  # no autograd history kept


def test_mlp_head_is_the_papers():
    bb = timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False)
    m = SingleBlockModel(bb, plan_for("deit_tiny_distilled_patch16_224", bb))
    assert len(m.heads) == 2  # class and distillation token
    layers = [type(layer).__name__ for layer in m.heads[0]]
    assert layers == ["Flatten", "Linear", "ELU", "Dropout", "Linear"]
    assert m.heads[0][1].out_features == 256 and m.heads[0][3].p == 0.5 and m.heads[0][4].out_features == 10
