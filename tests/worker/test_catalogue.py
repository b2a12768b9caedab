"""The catalogue's counts come from the real architectures, and reproduce the paper's Table 1 exactly wherever
the architecture is the same (counted the paper's way: see table1.csv's count_includes_mlp_head)."""

import pytest
import timm
import torch

from core import catalogue
from worker.engine.model import SingleBlockModel, plan_for

SAME_ARCHITECTURE = ["deit_base_distilled_patch16_224", "cait_s24_224", "coat_lite_small",
                     "swin_base_patch4_window7_224", "vit_large_patch32_224", "dm_nfnet_f6", "tf_efficientnetv2_l",
                     "vgg19", "densenet201"]


def _counts(model_id):
    with torch.device("meta"):  # random init without memory: the architecture is all we count
        m = SingleBlockModel(timm.create_model(model_id, pretrained=False), plan_for(model_id))
    return m.count_params()


@pytest.mark.parametrize("model_id", list(catalogue.CATALOGUE))
def test_stored_counts_match_the_architecture(model_id):
    spec = catalogue.CATALOGUE[model_id]
    c = _counts(model_id)
    assert (c["trainable_params"], c["total_params"]) == (spec.trainable_params, spec.total_params)


@pytest.mark.parametrize("model_id", SAME_ARCHITECTURE)
def test_trainable_counts_reproduce_table1(model_id):
    row = catalogue.paper_row(catalogue.CATALOGUE[model_id])
    c = _counts(model_id)
    ours = c["trainable_params"] if row["count_includes_mlp_head"] else c["trainable_backbone_params"]
    assert ours == row["trainable_params"]


def test_all_ten_paper_models_are_in_the_catalogue():
    rows = catalogue.paper_table1()
    assert len(rows) == 10 and all(r["model_id"] in catalogue.CATALOGUE for r in rows)


def test_stand_in_says_it_differs_and_shows_both_counts():
    spec = catalogue.CATALOGUE["resnet152"]
    row = catalogue.paper_row(spec)
    assert row["trainable_params"] != spec.trainable_params
    assert f"{spec.trainable_params:,}" in spec.note and f"{row['trainable_params']:,}" in spec.note



@pytest.mark.parametrize("model_id", [s.id for s in catalogue.CATALOGUE.values()])
def test_hub_weights_exist_and_match_the_papers_pretraining(model_id):
    spec = catalogue.CATALOGUE[model_id]
    cfg = timm.models.get_pretrained_cfg(f"{model_id}.{spec.pretrained_tag}" if spec.pretrained_tag else model_id)
    tag = cfg.tag
    assert f"{model_id}.{tag}" in timm.list_pretrained(f"{model_id}*")
    row = catalogue.paper_row(spec)
    if row is not None:
        in21k = "21k" in tag or "22k" in tag
        assert in21k == (row["pretrained_on"] == "ImageNet-21k"), (tag, row["pretrained_on"])
