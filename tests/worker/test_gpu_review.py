"""Issue 15's review of the CUDA paths, shown on the CPU: the CUDA RNG state a checkpoint carries (torch.cuda's
generator functions stood in for), the out-of-memory advice, and the default cache cap against the default model's
cache."""
import pytest
import torch
from torch import nn

from core.config import TrainConfig, config_differences, preset
from core.settings import Settings
from worker.engine import checkpoint
from worker.engine.device import DevicePolicy
from worker.engine.features import CACHE_DTYPES
from worker.engine.store import FeatureStore


class _Net(nn.Linear):
    """The two calls checkpoint.save/restore make of the engine's model."""

    def trainable_state_dict(self):
        return self.state_dict()


@pytest.fixture
def fake_gpus(monkeypatch):
    """A machine with `fake_gpus.count` CUDA devices as torch.cuda's generator functions see them: device i's state
    is a tensor holding i. The all-devices functions must not be used (they tie a checkpoint to the GPU count)."""
    class Gpus:
        count = 4
        set_calls: list = []

    def device_index(device):
        return torch.device(device).index if device is not None else 0

    def get_rng_state(device="cuda"):
        i = device_index(device)
        assert i < Gpus.count, "no such GPU"
        return torch.tensor([i], dtype=torch.uint8)

    def set_rng_state(state, device="cuda"):
        assert device_index(device) < Gpus.count, "no such GPU"
        Gpus.set_calls.append((int(state[0]), torch.device(device)))

    def refuse(*a, **k):
        raise AssertionError("the state of every GPU was asked for")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_rng_state", get_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", refuse)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", refuse)
    Gpus.set_calls = []
    return Gpus


def _parts():
    net = _Net(3, 2)
    opt = torch.optim.Adam(net.parameters())
    return TrainConfig(), net, opt, torch.optim.lr_scheduler.ReduceLROnPlateau(opt)


def _save(tmp_path, monkeypatch, trained_on: torch.device) -> dict:
    cfg, net, opt, sched = _parts()
    monkeypatch.setattr(checkpoint, "_training_device", lambda model: trained_on)
    checkpoint.save(tmp_path, cfg, checkpoint.Progress(epoch=1), net, opt, sched)
    return checkpoint.load(tmp_path)


def _restore(tmp_path, monkeypatch, resumed_on: torch.device) -> checkpoint.Progress:
    cfg, net, opt, sched = _parts()
    monkeypatch.setattr(checkpoint, "_training_device", lambda model: resumed_on)
    return checkpoint.restore(tmp_path, cfg, net, opt, sched)


def test_only_the_training_gpus_rng_state_is_saved_and_a_machine_with_fewer_gpus_resumes(fake_gpus, tmp_path,
                                                                                          monkeypatch):
    rng = _save(tmp_path, monkeypatch, torch.device("cuda:3"))["rng"]
    assert torch.equal(rng["cuda"], torch.tensor([3], dtype=torch.uint8)) and rng["cuda_device"] == 3
    fake_gpus.count = 1  # resumed where only one GPU is left: GPU 3's generator goes on on GPU 0
    assert _restore(tmp_path, monkeypatch, torch.device("cuda:0")).epoch == 1
    assert fake_gpus.set_calls == [(3, torch.device("cuda:0"))]


def test_a_run_on_the_cpu_saves_and_restores_no_cuda_state(fake_gpus, tmp_path, monkeypatch):
    assert "cuda" not in _save(tmp_path, monkeypatch, torch.device("cpu"))["rng"]
    _restore(tmp_path, monkeypatch, torch.device("cpu"))
    _restore(tmp_path, monkeypatch, torch.device("cuda:0"))  # trained on the CPU, resumed on a GPU: nothing to set
    assert fake_gpus.set_calls == []


@pytest.mark.parametrize("trained_on,expected", [(None, 0), (2, 2), (7, 0)])
def test_an_older_checkpoint_with_every_gpus_state_resumes_on_one_gpu(fake_gpus, tmp_path, monkeypatch, trained_on,
                                                                      expected):
    """Checkpoints written before held a list, one state per visible GPU (4 here): a one-GPU machine restores the
    training device's (the first where the checkpoint does not say, or names a GPU the list lacks)."""
    ckpt = _save(tmp_path, monkeypatch, torch.device("cpu"))
    ckpt["rng"]["cuda"] = [torch.tensor([i], dtype=torch.uint8) for i in range(4)]
    if trained_on is not None:
        ckpt["rng"]["cuda_device"] = trained_on
    torch.save(ckpt, tmp_path / checkpoint.CHECKPOINT)
    fake_gpus.count = 1
    assert _restore(tmp_path, monkeypatch, torch.device("cuda:0")).epoch == 1
    assert fake_gpus.set_calls == [(expected, torch.device("cuda:0"))]


def test_the_training_device_is_where_the_model_lives():
    assert checkpoint._training_device(_Net(2, 2)) == torch.device("cpu")
    assert checkpoint._training_device(nn.ReLU()) == torch.device("cpu")  # nothing to ask: the CPU


def test_the_out_of_memory_advice_is_one_the_lab_accepts():
    """A resume refuses a changed batch_size or image_size (they change what a run computes): the advice names a
    new job for them, and never promises that a resume with a lower batch size works."""
    from worker.queue.tasks import job_error_text
    for option, value in (("batch_size", 256), ("image_size", 160)):
        assert config_differences(TrainConfig().to_dict(), TrainConfig(**{option: value})) == [option]
    msg = job_error_text(torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB\nmore"))
    assert msg.startswith("out of memory: CUDA out of memory. Tried to allocate 20.00 GiB. ")
    assert "new job with a lower batch_size or image_size" in msg and "a resume keeps this job's settings" in msg
    assert "can be resumed" not in msg and "\n" not in msg


def _paper_cache_bytes(model: str) -> int:
    """The feature cache a paper-preset run of `model` on CIFAR-10 needs, computed as FrozenFeatures.setup does:
    the frozen part's output shapes for one image, 50,000 training images in 2 flip states, 10,000 validation."""
    from worker.engine.train import build_model
    cfg = preset("paper", model=model, weights="none")
    model_, prep = build_model(cfg, DevicePolicy.for_device(torch.device("cpu")))
    assert model_.cacheable
    with torch.no_grad():
        probe = model_.frozen_features(prep(torch.zeros(1, 3, 32, 32, dtype=torch.uint8)))
    shapes = [tuple(t.shape[1:]) for t in probe]
    dtype = CACHE_DTYPES[cfg.cache_dtype]
    return (FeatureStore.bytes_needed(50_000, 2 if cfg.hflip else 1, shapes, dtype)
            + FeatureStore.bytes_needed(10_000, 1, shapes, dtype))


@pytest.mark.slow
@pytest.mark.parametrize("model", [TrainConfig().model, "resnet152"])
def test_the_default_cache_cap_keeps_the_largest_paper_caches(monkeypatch, model):
    """The default model's cache (DeiT-B distilled, 31.2 GiB) and the largest of Table 1 (ResNet-152, 41.1 GiB)
    are kept for a sweep under the default cap, as the worker computes it (tasks.py: GiB)."""
    monkeypatch.delenv("BLOCKLAB_CACHE_CAP_GB", raising=False)
    cap = int(Settings().cache_cap_gb * 2**30)
    need = _paper_cache_bytes(model)
    assert 20 << 30 < need < cap  # the old 20 GiB cap never kept it
