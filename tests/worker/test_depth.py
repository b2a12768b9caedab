"""Trainable depth (`trainable_blocks` K): which parameters train at K = 0, 1, 2, ..., all, that the cache at the
first trainable block's input (K=0: the heads' input) gives exactly the full forward pass for every architecture
family of the catalogue, and that runs at K=0 and K=2 train end to end with their own cache entries."""
import json

import pytest
import timm
import torch
import torch.nn.functional as F

from core.config import TrainConfig
from worker.engine.device import DevicePolicy
from worker.engine.model import Plan, SingleBlockModel, plan_for
from worker.engine.split import block_list
from worker.engine.train import Paths, build_model, run

from .test_model import SIBLINGS
from .test_train import KEYS, TINY

CPU = DevicePolicy.for_device(torch.device("cpu"))


def _full_logits(m: SingleBlockModel, x):
    """timm's own forward_features over the whole backbone, then the model's pooling and heads: the reference."""
    pooled = m._pool(m.backbone.forward_features(x))
    return torch.stack([h(p) for h, p in zip(m.heads, pooled)]).mean(0)


def _stage_crossing_k(blocks: list[str]) -> int:
    """The smallest depth whose first trainable block lies in another stage than the last block (the glue between
    stages, such as Swin's patch merging or DenseNet's transitions, then runs from the cache); 2 for flat lists."""
    stage = blocks[-1].rsplit(".", 1)[0]
    return next((k for k in range(2, len(blocks) + 1) if blocks[-k].rsplit(".", 1)[0] != stage), 2)


# A small sibling of each architecture family of the catalogue (test_model's), the token models at 32 px.
FAMILIES = [(m, arch, block, 32 if arch in ("vit", "vit_distilled", "cait") else size)
            for m, arch, block, size in SIBLINGS]


def _sibling(name, arch, block, size, k):
    torch.manual_seed(0)
    bb = timm.create_model(name, pretrained=False, **({"img_size": size} if arch in ("vit", "vit_distilled", "cait",
                                                                                     "coat") else {}))
    family = "cnn" if arch in ("nfnet", "efficientnet", "vgg", "densenet", "resnet") else "transformer"
    plan = Plan(name, block, arch, "max" if arch in ("vgg", "densenet", "resnet") else "model", family)
    return SingleBlockModel(bb, plan, trainable_blocks=k)


@pytest.mark.slow
@pytest.mark.parametrize("name,arch,block,size", FAMILIES)
def test_cached_forward_equals_the_full_forward_at_every_depth(name, arch, block, size):
    """K=0 (the heads' input), the first depth that crosses a stage boundary, a depth inside the class-attention
    stage (CaiT) and all blocks: the cache point's output, run on from there, is the full forward pass."""
    m = _sibling(name, arch, block, size, 1)
    blocks = block_list(m.backbone, m.plan)
    assert blocks[-1] == block and len(set(blocks)) == len(blocks)
    depths = sorted({0, 2, _stage_crossing_k(blocks), len(blocks)})
    x = torch.randn(2, 3, size, size)
    for k in depths:
        m = _sibling(name, arch, block, size, k).eval()
        assert m.cacheable, (k, m.cache_reason)
        with torch.no_grad():
            feats = m.frozen_features(x)
            torch.testing.assert_close(m.forward_from_features(feats), _full_logits(m, x), rtol=1e-5, atol=1e-6,
                                       msg=lambda s: f"K={k}: {s}")
        if k:
            assert m.trainable_block_names == blocks[-k:]
            assert all(f.shape[0] == 2 for f in feats)


def _lite0_and_deit():
    return [("tf_efficientnet_lite0", {}), ("deit_tiny_patch16_224", {"img_size": 32})]


def _model(name, kw, k):
    torch.manual_seed(0)
    bb = timm.create_model(name, pretrained=False, **kw)
    return SingleBlockModel(bb, plan_for(name, bb), trainable_blocks=k)


@pytest.mark.slow
@pytest.mark.parametrize("name,kw", _lite0_and_deit())
def test_trainable_count_grows_with_depth_and_frozen_parts_get_no_gradient(name, kw):
    counts = {}
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    for k in (0, 1, 2, None):
        m = _model(name, kw, k).train()
        c = m.count_params()
        counts[k] = c["trainable_params"]
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        for pname, p in m.backbone.named_parameters():
            assert (p.grad is not None) == p.requires_grad, (k, pname)  # frozen: no gradient at all
        trainable = set(m.trainable_parameter_names(prefix=""))
        if k == 0:
            assert not trainable and c["trainable_params"] == c["head_params"]
            assert all(p.grad is not None for p in m.heads.parameters())
        elif k is None:
            assert c["trainable_params"] == c["total_params"]
            assert len(trainable) == len(list(m.backbone.parameters()))
        else:
            blocks = m.trainable_block_names
            assert len(blocks) == k and blocks == block_list(m.backbone, m.plan)[-k:]
            assert all(any(n.startswith(b + ".") for b in m.trainable_module_names()) for n in trainable)
    assert counts[0] < counts[1] < counts[2] < counts[None]


@pytest.mark.slow
@pytest.mark.parametrize("name,kw", _lite0_and_deit())
def test_cached_and_uncached_logits_and_gradients_agree_at_two_blocks(name, kw):
    """The cache path (frozen features once, then the model's own forward from the first trainable block) gives
    the logits and the gradients of the whole forward pass."""
    x, y = torch.randn(3, 3, 32, 32), torch.randint(0, 10, (3,))
    a, b = _model(name, kw, 2).train(), _model(name, kw, 2).train()
    b.load_state_dict(a.state_dict())
    a.eval(), b.eval()  # no dropout: the two passes must see the same arithmetic
    feats = a.frozen_features(x)
    assert a.cache_at == block_list(a.backbone, a.plan)[-2]
    la, lb = a.forward_from_features(feats), _full_logits(b, x)
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-6)
    F.cross_entropy(la, y).backward()
    F.cross_entropy(lb, y).backward()
    ga = {n: p.grad for n, p in a.named_parameters() if p.requires_grad}
    gb = {n: p.grad for n, p in b.named_parameters() if p.requires_grad}
    assert ga.keys() == gb.keys() and len(ga) > 4
    for n in ga:
        torch.testing.assert_close(ga[n], gb[n], rtol=1e-4, atol=1e-6, msg=lambda s: f"{n}: {s}")


def test_all_trains_every_layer_with_batchnorm_statistics_and_no_cache():
    m = _model("tf_efficientnet_lite0", {}, None).train()
    assert not m.cacheable and "all" in m.cache_reason
    assert not any("Frozen" in type(mod).__name__ for mod in m.backbone.modules())  # timm's freeze not applied
    assert all(mod.training for mod in m.modules())
    before = m.backbone.bn1.running_mean.clone()
    m(torch.randn(4, 3, 32, 32))
    assert not torch.equal(before, m.backbone.bn1.running_mean)  # the stem's BatchNorm trains too
    assert set(m.trainable_state_dict()) == set(m.state_dict())


@pytest.mark.slow
def test_two_blocks_leave_the_frozen_part_bit_identical():
    m = _model("tf_efficientnet_lite0", {}, 2)
    before = {k: v.clone() for k, v in m.backbone.state_dict().items()}
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    m.train()
    for _ in range(2):
        loss = F.cross_entropy(m(torch.randn(6, 3, 32, 32)), torch.randint(0, 10, (6,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    kept = set(m.trainable_state_dict())
    assert {"backbone.blocks.5.3.conv_pw.weight", "backbone.blocks.6.0.conv_pw.weight"} <= kept
    changed = [k for k, v in m.backbone.state_dict().items() if not torch.equal(v, before[k])]
    assert changed and all(f"backbone.{k}" in kept for k in changed)
    assert not any(k.startswith("blocks.5.2.") for k in kept)
    assert m.backbone.blocks[5][3].training and not m.backbone.blocks[5][2].training


@pytest.mark.parametrize("k", [17, -1])
def test_a_depth_beyond_the_block_list_is_refused(k):
    with pytest.raises(ValueError, match=r"trainable_blocks=.*16 blocks"):
        _model("tf_efficientnet_lite0", {}, k)
    _model("tf_efficientnet_lite0", {}, 16)  # every block: fine


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("k", [0, 2])
def test_a_run_at_depth_trains_end_to_end_from_its_cache(tiny_cifar_dir, tmp_path, k):
    """A short run at K=0 (the head on cached pooled features) and K=2 gives the uncached run's metrics."""
    cfg = dict(TINY, epochs=2, trainable_blocks=k)
    cached = run(TrainConfig(**cfg, cache_dtype="float32"), Paths(tiny_cifar_dir, tmp_path / "cached"))
    plain = run(TrainConfig(**cfg, feature_cache=False), Paths(tiny_cifar_dir, tmp_path / "plain"))
    assert cached["status"] == plain["status"] == "succeeded"
    fc = cached["feature_cache"]
    assert fc["enabled"] and fc["holds"] == ("the heads' input (pooled features)" if k == 0 else
                                               "the input of blocks.10")
    m, _prep = build_model(TrainConfig(**cfg), CPU)
    assert cached["trainable_params"] == m.count_params()["trainable_params"]
    for a, b in zip(_rows(tmp_path / "cached"), _rows(tmp_path / "plain"), strict=True):
        assert all(a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-5) for key in KEYS), a["epoch"]


def test_full_fine_tuning_runs_uncached_and_says_why(tiny_cifar_dir, tmp_path):
    s = run(TrainConfig(**TINY, epochs=1, trainable_blocks=None), Paths(tiny_cifar_dir, tmp_path / "o"))
    assert s["status"] == "succeeded" and s["trainable_params"] == s["total_params"]
    assert not s["feature_cache"]["enabled"] and "trainable_blocks=all" in s["feature_cache"]["reason"]


def test_cache_keys_differ_by_depth_and_each_depth_reuses_its_own(tiny_cifar_dir, tmp_path):
    paths = dict(cache_dir=tmp_path / "cache", cache_cap_bytes=1 << 30)
    keys = {}
    for k in (0, 1, 2):
        s = run(TrainConfig(**TINY, epochs=1, trainable_blocks=k), Paths(tiny_cifar_dir, tmp_path / f"k{k}", **paths))
        assert s["feature_cache"]["enabled"] and not s["feature_cache"]["reused"]
        keys[k] = s["feature_cache"]["key"]
    assert len(set(keys.values())) == 3
    again = run(TrainConfig(**TINY, epochs=1, trainable_blocks=2, lr=3e-4), Paths(tiny_cifar_dir, tmp_path / "b",
                                                                                   **paths))
    assert again["feature_cache"]["reused"] and again["feature_cache"]["key"] == keys[2]


def test_describe_counts_any_depth_on_the_real_architecture():
    from worker.finetune import build_parser, config_from_args, describe

    def card(*flags):
        return describe(config_from_args(build_parser().parse_args(["--model", "tf_efficientnet_lite0", *flags])))
    one, two, zero, full = card(), card("--trainable-blocks", "2"), card("--trainable-blocks", "0"), card(
        "--trainable-blocks", "all")
    assert one["trainable_blocks"] == 1 and one["blocks"] == 16 and one["trainable_params"] == 1_348_106
    assert two["trainable_params"] == two["architecture"]["trainable_params"] > one["trainable_params"]
    assert two["trainable_modules"] == ["blocks.5.3", "blocks.6.0", "conv_head", "bn2", "heads.0"]
    assert two["architecture"]["trainable_block_names"] == ["blocks.5.3", "blocks.6.0"]
    assert two["architecture"]["feature_cache"] == "the input of blocks.5.3"
    assert zero["architecture"]["trainable_params"] == zero["architecture"]["head_params"]
    assert full["trainable_blocks"] == "all" and full["architecture"]["trainable_params"] == full["architecture"][
        "total_params"]
    with pytest.raises(ValueError, match="trainable_blocks=17"):
        card("--trainable-blocks", "17")
