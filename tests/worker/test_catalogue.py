"""The catalogue's facts come from the real architectures and timm's pretrained registry (the backend's method cards
rest on them without building a model), and reproduce the paper's Table 1 exactly wherever the architecture is the
same (counted the paper's way: see table1.csv's count_includes_mlp_head). Every paper model's preset builds at 224,
loads the tagged weights its card names, and only the authors' Keras CNNs get Keras' head and BatchNorm defaults."""

import functools

import pytest
import timm
import torch
from torch import nn

from core import catalogue
from core.config import method_card, paper_card, preset
from worker.engine import weights as weights_mod
from worker.engine.device import DevicePolicy
from worker.engine.train import build_model

SAME_ARCHITECTURE = ["deit_base_distilled_patch16_224", "cait_s24_224", "coat_lite_small",
                     "swin_base_patch4_window7_224", "vit_large_patch32_384", "dm_nfnet_f6", "tf_efficientnetv2_l",
                     "vgg19", "densenet201"]
PAPER_MODELS = [r["model_id"] for r in catalogue.paper_table1()]
META = DevicePolicy(torch.device("meta"))


def _build(model_id, **overrides):
    """The model as a paper-preset run builds it, on the meta device: the architecture without weights or memory.
    The paper preset itself is built once per model for the session: the tests only read it."""
    if not overrides:
        return _paper_build(model_id)
    cfg = preset("paper", model=model_id, weights="none", **overrides)
    with torch.device("meta"):
        return build_model(cfg, META)


@functools.cache
def _paper_build(model_id):
    with torch.device("meta"):
        return build_model(preset("paper", model=model_id, weights="none"), META)


def _counts(model_id):
    return _build(model_id)[0].count_params()


@pytest.mark.parametrize("model_id", list(catalogue.CATALOGUE))
def test_stored_counts_match_the_architecture(model_id):
    spec = catalogue.CATALOGUE[model_id]
    c = _counts(model_id)
    assert (c["trainable_params"], c["total_params"]) == (spec.trainable_params, spec.total_params)
    assert (c["trainable_backbone_params"], c["head_params"]) == (spec.trainable_backbone_params, spec.head_params())


@pytest.mark.parametrize("model_id", list(catalogue.CATALOGUE))
def test_stored_modules_widths_and_batchnorms_match_the_architecture(model_id):
    """What a method card says about the trainable part is what the engine trains."""
    spec = catalogue.CATALOGUE[model_id]
    m, _prep = _build(model_id)
    assert m.trainable_module_names() == [*spec.trainable_modules, *(f"heads.{i}" for i in range(spec.heads))]
    assert m.backbone.num_features == spec.num_features and len(m.heads) == spec.heads
    assert len(m.trainable_batchnorms()) == spec.trainable_batchnorms
    assert method_card(preset("paper", model=model_id))["trainable_modules"] == m.trainable_module_names()
    if spec.pooling == "model" and spec.heads == 1:  # the card's words for the model's own pooling
        gp = getattr(m.backbone, "global_pool", None) or m.backbone.head.global_pool
        own = {"token": "class token", "avg": "global average"}[gp if isinstance(gp, str) else gp.pool_type]
        rows = {r["label"]: r["value"] for r in paper_card(model_id)["rows"]}
        assert own in rows["Pooling"]


@pytest.mark.parametrize("model_id", SAME_ARCHITECTURE)
def test_trainable_counts_reproduce_table1(model_id):
    row = catalogue.paper_row(catalogue.CATALOGUE[model_id])
    c = _counts(model_id)
    ours = c["trainable_params"] if row["count_includes_mlp_head"] else c["trainable_backbone_params"]
    assert ours == row["trainable_params"]
    card = paper_card(model_id)
    assert card["trainable_params_as_paper_counts"] == ours and card["count_matches_paper"]


def test_all_ten_paper_models_are_in_the_catalogue():
    rows = catalogue.paper_table1()
    assert len(rows) == 10 and all(r["model_id"] in catalogue.CATALOGUE for r in rows)
    assert next(r for r in rows if r["paper_name"] == "ViT-L/32")["model_id"] == "vit_large_patch32_384"


def test_stand_in_says_it_differs_and_shows_both_counts():
    spec = catalogue.CATALOGUE["resnet152"]
    row = catalogue.paper_row(spec)
    assert row["trainable_params"] != spec.trainable_params
    assert f"{spec.trainable_params:,}" in spec.note and f"{row['trainable_params']:,}" in spec.note
    assert not paper_card("resnet152")["count_matches_paper"]


# -- item 1: the paper upsamples every model to 224 -----------------------------------------------------------------
# The frozen part's output (the trainable block's inputs) at 224: a model built for its weights' own size (NFNet-F6
# 448, EfficientNetV2-L 384, ViT-L/32-384) would give a grid twice or 1.7 times as large.
AT_224 = {
    "deit_base_distilled_patch16_224": [(198, 768)],  # 14 x 14 patches + class + distillation token
    "cait_s24_224": [(196, 384), (1, 384)],
    "coat_lite_small": [(50, 512)],  # 7 x 7 + class token
    "swin_base_patch4_window7_224": [(7, 7, 1024)],
    "vit_large_patch32_384": [(50, 1024)],  # 7 x 7 patches of 32 px + class token
    "dm_nfnet_f6": [(1536, 7, 7)],
    "tf_efficientnetv2_l": [(640, 7, 7)],
    "vgg19": [(512, 14, 14)],  # the input of block5's first conv, stride 16
    "densenet201": [(896, 7, 7)],
    "resnet152": [(1024, 14, 14)],  # the input of layer4, stride 16
}


@pytest.mark.parametrize("model_id", PAPER_MODELS)
def test_every_paper_models_preset_builds_at_224(model_id):
    cfg = preset("paper", model=model_id)
    assert cfg.image_size == 224 and paper_card(model_id)["image_size"] == 224
    m, prep = _build(model_id)
    assert prep.image_size == 224
    x = prep(torch.zeros(2, 3, 32, 32, dtype=torch.uint8, device="meta"))
    assert tuple(x.shape) == (2, 3, 224, 224)
    feats = m.frozen_features(x)
    assert [tuple(f.shape[1:]) for f in feats] == AT_224[model_id]
    before_pool = m.tail.run(m.backbone, m.cache_point, tuple(feats), m._static_kwargs)
    if m.plan.family == "cnn":
        assert tuple(before_pool.shape[-2:]) == (7, 7)  # stride 32 at 224
    else:
        pe = m.backbone.patch_embed if hasattr(m.backbone, "patch_embed") else m.backbone.patch_embed1
        assert tuple(pe.img_size) == (224, 224)
    assert tuple(m.forward_from_features(feats).shape) == (2, 10)


def test_vit_l32_is_the_21k_then_1k_release_at_224_with_the_papers_count():
    spec = catalogue.CATALOGUE["vit_large_patch32_384"]
    assert spec.weights_name in timm.list_pretrained("vit_large_patch32_384*")
    assert spec.weights_name == "vit_large_patch32_384.orig_in21k_ft_in1k" and spec.native_size == 384
    m, _prep = _build("vit_large_patch32_384")
    assert m.backbone.patch_embed.grid_size == (7, 7) and tuple(m.backbone.pos_embed.shape) == (1, 50, 1024)
    assert m.count_params()["trainable_params"] == 12_863_242 == catalogue.paper_row(spec)["trainable_params"]
    assert not hasattr(m.backbone, "pre_logits") or not any(True for _ in m.backbone.pre_logits.parameters())


# -- items 2, 3: the weights each card names are the ones a run loads ----------------------------------------------
@pytest.mark.parametrize("model_id", list(catalogue.CATALOGUE))
def test_hub_weights_exist_and_match_the_papers_pretraining(model_id):
    spec = catalogue.CATALOGUE[model_id]
    assert spec.pretrained_tag, "every model names its tag: timm's default may change under us"
    cfg = timm.models.get_pretrained_cfg(spec.weights_name)
    assert cfg.tag == spec.pretrained_tag and spec.weights_name in timm.list_pretrained(f"{model_id}*")
    assert cfg.input_size[-1] == spec.native_size
    expected = {"imagenet": (0.485, 0.456, 0.406), "half": (0.5, 0.5, 0.5)}[spec.input_norm]
    assert tuple(cfg.mean) == pytest.approx(expected, abs=1e-3)
    in21k = "21k" in cfg.tag or "22k" in cfg.tag
    assert in21k == ("21k" in spec.pretrained_on or "22k" in spec.pretrained_on)
    row = catalogue.paper_row(spec)
    if row is not None:
        assert in21k == (row["pretrained_on"] == "ImageNet-21k"), (cfg.tag, row["pretrained_on"])


@pytest.mark.parametrize("model_id", list(catalogue.CATALOGUE))
def test_each_models_pretrained_tag_is_the_cards(model_id, monkeypatch):
    """weights=hub asks timm for exactly `model.tag` of the card (and the architecture's config carries it)."""
    asked, fetched = [], []
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: asked.append((name, kw)) or nn.Identity())
    # The engine fetches the weights file itself (progress, cancel), then timm loads that file.
    monkeypatch.setattr(weights_mod, "_hub_file", lambda name, *a: fetched.append(name) or "/w/model.safetensors")
    weights_mod.create_backbone(model_id, "hub", img_size=224)
    card = paper_card(model_id)
    assert asked[0][0] == f"{model_id}.{card['pretrained_tag']}" == card["weights_name"] == fetched[0]
    assert asked[0][1]["pretrained"] is True
    assert asked[0][1]["pretrained_cfg_overlay"] == {"file": "/w/model.safetensors"}
    monkeypatch.undo()
    m, _prep = _build(model_id)
    assert m.backbone.pretrained_cfg["tag"] == card["pretrained_tag"]


def test_resnet152_loads_torchvisions_weights_and_says_so():
    spec = catalogue.CATALOGUE["resnet152"]
    assert spec.pretrained_tag == "tv_in1k" and timm.models.get_pretrained_cfg("resnet152").tag != "tv_in1k"
    card = paper_card("resnet152")
    assert "tv_in1k" in card["note"] and "torchvision" in card["pretrained_on"]
    assert any("Stand-in" in d["what"] for d in card["deviations"])


# -- items 4, 5: Keras' defaults in the Keras rows only --------------------------------------------------------------
@pytest.mark.parametrize("model_id", list(catalogue.CATALOGUE))
def test_only_the_keras_cnns_carry_keras_defaults(model_id):
    spec = catalogue.CATALOGUE[model_id]
    cfg = preset("paper", model=model_id)
    keras = (cfg.head_init, cfg.head_l2, cfg.bn_momentum, cfg.adam_eps) == ("he_normal", 0.01, 0.01, 1e-7)
    torch_defaults = (cfg.head_init, cfg.head_l2, cfg.bn_momentum, cfg.adam_eps) == ("torch", 0.0, None, 1e-8)
    assert keras == spec.keras and torch_defaults == (not spec.keras)
    assert spec.keras == (spec.paper_name in ("VGG-19", "DenseNet201", "ResNet152V2"))


def _frozen_bn_like(mod) -> bool:
    return "Frozen" in type(mod).__name__


@pytest.mark.parametrize("model_id", PAPER_MODELS)
def test_bn_momentum_applies_to_the_trainable_batchnorms_of_the_keras_rows_only(model_id):
    spec = catalogue.CATALOGUE[model_id]
    m, _prep = _build(model_id)
    trainable = m.trainable_batchnorms()
    expected = 0.01 if spec.keras else 0.1
    assert all(bn.momentum == expected for bn in trainable) and len(trainable) == spec.trainable_batchnorms
    inside = {id(b) for b in trainable}
    for name, mod in m.backbone.named_modules():  # the frozen part's BatchNorms: frozen, never re-tuned
        if isinstance(mod, nn.modules.batchnorm._BatchNorm) and id(mod) not in inside:
            pytest.fail(f"{name} is a trainable-style BatchNorm in the frozen part")
        if _frozen_bn_like(mod):
            assert not hasattr(mod, "momentum") or mod.momentum in (None, 0.1), name
    if model_id in ("densenet201", "resnet152"):
        assert trainable and any(_frozen_bn_like(mod) for mod in m.backbone.modules())


# -- trainable depth: the block list the paper's last-block rule takes the last of ------------------------------------
@pytest.mark.parametrize("model_id", list(catalogue.CATALOGUE))
def test_stored_block_counts_match_the_architecture(model_id):
    """`blocks` (the range of trainable_blocks) is the length of the engine's block list, which ends at the
    paper's last block; every depth up to it builds, one more is refused."""
    from worker.engine.model import SingleBlockModel

    spec = catalogue.CATALOGUE[model_id]
    m, _prep = _build(model_id)
    assert len(m.blocks) == spec.blocks and m.blocks[-1] == spec.unfreeze_from
    assert len(set(m.blocks)) == spec.blocks
    with torch.device("meta"):  # past the config's bound (NFNet-F6 has 84 blocks): the model itself decides
        deepest = SingleBlockModel(weights_mod.create_backbone(model_id, "none", img_size=224), m.plan,
                                   trainable_blocks=spec.blocks)
        with pytest.raises(ValueError, match=f"trainable_blocks={spec.blocks + 1}: .* {spec.blocks} blocks"):
            SingleBlockModel(weights_mod.create_backbone(model_id, "none", img_size=224), m.plan,
                             trainable_blocks=spec.blocks + 1)
    assert deepest.trainable_block_names == m.blocks


@pytest.mark.slow
@pytest.mark.parametrize("model_id", PAPER_MODELS)
def test_every_paper_model_runs_from_its_cache_at_two_blocks_and_at_none(model_id):
    """At K=2 the cache holds the second-to-last block's input (CoaT: its stage's first block's) and the
    model's own forward runs on from it; at K=0 it holds the heads' input. On the meta device: shapes only (the
    values are proven on small siblings, tests/worker/test_depth.py)."""
    spec = catalogue.CATALOGUE[model_id]
    for k in (2, 0):
        m, prep = _build(model_id, trainable_blocks=k)
        assert m.cacheable, m.cache_reason
        x = prep(torch.zeros(2, 3, 32, 32, dtype=torch.uint8, device="meta"))
        feats = m.frozen_features(x)
        if k == 2:
            assert m.trainable_block_names == m.blocks[-2:]
            expected = m.blocks[-2] if spec.arch != "coat" else m.blocks[-2].split(".")[0] + ".0"
            assert m.cache_at == expected
        else:
            assert [tuple(f.shape) for f in feats] == [(2, spec.num_features)] * spec.heads
        assert tuple(m.forward_from_features(feats).shape) == (2, 10)
        assert m.count_params()["trainable_params"] > (spec.trainable_params if k else 0)


# -- what the card says about numerics and modes, checked against the real architecture and engine -------------------
def _rows(card) -> dict[str, str]:
    return {r["label"]: r["value"] for r in card["rows"]}


@pytest.mark.parametrize("model_id", list(catalogue.CATALOGUE))
def test_the_trainable_blocks_drop_path_is_the_cards(model_id):
    """timm's default stochastic depth in the trainable block (Swin-B: 0.1, spread linearly to its last block),
    read from the built model: what the card's Stochastic depth row and Swin-B's deviation say."""
    from timm.layers import DropPath
    spec = catalogue.CATALOGUE[model_id]
    m, _prep = _build(model_id)
    block = m.backbone.get_submodule(spec.unfreeze_from)
    rates = [mod.drop_prob for mod in block.modules() if isinstance(mod, DropPath)]
    assert max(rates, default=0.0) == pytest.approx(spec.drop_path)
    m.train(True)  # the engine's training mode: the trainable block's drop path is live
    assert all(mod.training for mod in block.modules() if isinstance(mod, DropPath))
    row = _rows(paper_card(model_id))["Stochastic depth"]
    assert (f"drop path {spec.drop_path:g}" in row) if spec.drop_path else row.startswith("none")
    said = any("drop path 0.1" in d["what"] for d in paper_card(model_id)["deviations"])
    assert said == (spec.drop_path > 0 and spec.paper_name is not None)
    assert (model_id == "swin_base_patch4_window7_224") == (spec.drop_path > 0)


@pytest.mark.parametrize("model_id", PAPER_MODELS)
def test_the_frozen_part_runs_in_inference_mode_and_the_card_says_whose_rule_that_is(model_id):
    spec = catalogue.CATALOGUE[model_id]
    m, _prep = _build(model_id)
    m.train(True)
    trainable = tuple(spec.trainable_modules)
    frozen = [(n, mod) for n, mod in m.backbone.named_modules()
              if n and not any(n == t or n.startswith(t + ".") for t in trainable)
              and not any(t.startswith(n + ".") for t in trainable)]  # parents of a trainable module aside
    assert frozen and not any(mod.training for _n, mod in frozen)
    assert all(m.backbone.get_submodule(t).training for t in trainable) and m.heads.training
    card = paper_card(model_id)
    assert "inference mode" in _rows(card)["Frozen part"]
    listed = catalogue.FROZEN_INFERENCE in catalogue.known_deviations(spec)
    assert listed == (not spec.keras)  # the authors' Keras rule for their three rows; a choice for the seven
    assert ("Keras' rule" in _rows(card)["Frozen part"]) == spec.keras


def test_the_default_cache_rounds_the_blocks_input_as_the_card_says(tiny_cifar_dir, tmp_path):
    """The engine's cache of a default run stores float16 (its report), whose mantissa is the card's 10 bits; the
    precision row no longer reads as plain fp32, and the deviation goes when the cache stores float32."""
    from core.config import TrainConfig
    from worker.engine.train import Paths, run

    from .test_train import TINY
    out = run(TrainConfig(**dict(TINY, epochs=1)), Paths(tiny_cifar_dir, tmp_path / "run"))
    dtype = out["feature_cache"]["dtype"]
    assert out["feature_cache"]["enabled"] and dtype == TrainConfig.cache_dtype == "float16"
    bits = catalogue.CACHE_MANTISSA_BITS
    for name, torch_dtype in (("float16", torch.float16), ("bfloat16", torch.bfloat16), ("float32", torch.float32)):
        assert torch.finfo(torch_dtype).eps == 2.0 ** -bits[name]
    card = paper_card("tf_efficientnetv2_l")
    assert f"rounded to a {bits[dtype]}-bit mantissa" in _rows(card)["Precision"]
    assert catalogue.CACHE_ROUNDING.what in [d["what"] for d in card["deviations"]]
    exact = method_card(preset("paper", model="tf_efficientnetv2_l", cache_dtype="float32"))
    assert "feature cache" not in _rows(exact)["Precision"]
    assert catalogue.CACHE_ROUNDING.what not in [d["what"] for d in exact["deviations"]]
    off = method_card(preset("paper", model="tf_efficientnetv2_l", feature_cache=False))
    assert catalogue.CACHE_ROUNDING.what not in [d["what"] for d in off["deviations"]]


def test_soft_distillation_is_the_deit_papers_equation_not_its_codes():
    """The engine's soft loss is 1/2 CE + 1/2 T^2 KL per sample (the DeiT paper); DeiT's released code divides the
    KL sum by batch x classes, 1/classes of it: the ratio the card states."""
    import torch.nn.functional as F

    from worker.engine.distill import distillation_loss
    g = torch.Generator().manual_seed(0)
    cls, dist, teacher = (torch.randn(8, 10, generator=g) for _ in range(3))
    labels = torch.randint(0, 10, (8,), generator=g)
    t = 3.0
    ce = F.cross_entropy(cls, labels)
    p_t, log_s = F.softmax(teacher / t, 1), F.log_softmax(dist / t, 1)
    kl_per_sample = (p_t * (p_t.log() - log_s)).sum(1)
    paper = 0.5 * ce + 0.5 * t * t * kl_per_sample.mean()
    code = 0.5 * ce + 0.5 * t * t * kl_per_sample.sum() / dist.numel()  # deit/losses.py DistillationLoss
    ours = distillation_loss([cls, dist], labels, teacher, "soft", t)
    assert ours.item() == pytest.approx(paper.item(), rel=1e-5) and ours.item() != pytest.approx(code.item(), rel=1e-2)
    assert ((ours - 0.5 * ce) / (code - 0.5 * ce)).item() == pytest.approx(10, rel=1e-4)
    card = method_card(preset("paper", model="deit_base_distilled_patch16_224", teacher=1, distillation="soft"))
    soft = [d for d in card["deviations"] if d["what"].startswith("Soft distillation")]
    assert soft and "1/10 of this one" in soft[0]["what"] and "10x more" in soft[0]["effect"]
    assert "not DeiT's released code" in _rows(card)["Distillation"]
    hard = method_card(preset("paper", model="deit_base_distilled_patch16_224", teacher=1))
    assert not [d for d in hard["deviations"] if d["what"].startswith("Soft distillation")]
