"""GPU readiness without a GPU: every branch the engine takes by device type, forced on the CPU through the run's
DevicePolicy (worker/engine/device.py), so that on a GPU only the kernels differ. Each forced run must give the
metrics of the plain CPU run."""
import json

import pytest
import torch

from core.config import TrainConfig
from worker.engine import limits, preprocess
from worker.engine.device import DevicePolicy, fp32_math, fp32_modes
from worker.engine.train import Callbacks, Paths, run

from .test_train import KEYS, TINY

CPU = DevicePolicy.for_device(torch.device("cpu"))
CNN = dict(TINY, model="tf_efficientnet_lite0", image_size=64)  # a CNN: the channels_last branch applies


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _same(a, b, tol, acc_tol=None):
    """The runs' epochs agree: losses and learning rates within `tol`; accuracies within `acc_tol` (a forced branch
    with other float rounding may flip a near-tied prediction of the random-init model: 1/60 per image)."""
    for ra, rb in zip(_rows(a), _rows(b), strict=True):
        for k in KEYS:
            t = acc_tol if acc_tol is not None and k.endswith("_acc") else tol
            assert ra[k] == pytest.approx(rb[k], rel=tol, abs=t), (k, ra["epoch"])


def _run(cfg, out, policy, tiny_cifar_dir, **cb):
    info = {}
    s = run(cfg, Paths(tiny_cifar_dir, out), Callbacks(on_info=info.update, **cb), policy=policy)
    return s, info


def test_the_cpu_policy_takes_no_gpu_branch():
    assert (CPU.device_free_bytes, CPU.pin_memory, CPU.channels_last) == (None, False, False)
    assert CPU.autocast_dtype("fp32") is None and CPU.autocast_dtype("bf16") is torch.bfloat16
    assert CPU.autocast_dtype("fp16") is torch.float16 and CPU.amp("fp16")["dtype"] is torch.float16
    assert CPU.amp("fp32")["enabled"] is False and CPU.amp("bf16") == dict(device_type="cpu", dtype=torch.bfloat16,
                                                                           enabled=True)


def test_features_stored_on_the_device(tiny_cifar_dir, tmp_path):
    """The branch a GPU with room takes: the cache allocated on the training device itself."""
    cfg = TrainConfig(**TINY, epochs=2)
    base, _ = _run(cfg, tmp_path / "host", CPU, tiny_cifar_dir)
    on_device = CPU.replace(device_free_bytes=lambda: 1 << 40)
    s, _ = _run(cfg, tmp_path / "device", on_device, tiny_cifar_dir)
    assert base["feature_cache"]["placement"] == "memory" and s["feature_cache"]["placement"] == "device"
    _same(tmp_path / "host", tmp_path / "device", 1e-6)


def test_a_device_without_room_falls_back_to_pinned_host_memory(tiny_cifar_dir, tmp_path):
    """The branch a GPU without room takes: page-locked host memory (cudaHostAlloc on a GPU; a stand-in here,
    since a CPU-only build cannot pin), read with non-blocking copies."""
    pinned = []

    def fake_pinned(shape, dtype):
        pinned.append((tuple(shape), dtype))
        return torch.empty(shape, dtype=dtype)
    full = CPU.replace(device_free_bytes=lambda: 0, pin_memory=True, pinned_empty=fake_pinned)
    cfg = TrainConfig(**TINY, epochs=2)
    base, _ = _run(cfg, tmp_path / "plain", CPU, tiny_cifar_dir)
    s, _ = _run(cfg, tmp_path / "pinned", full, tiny_cifar_dir)
    assert s["feature_cache"]["placement"] == "memory" and "pinned" in s["feature_cache"]["reason"]
    assert [shape[:2] for shape, _ in pinned] == [(200, 2), (60, 1)] and {d for _, d in pinned} == {torch.float16}
    _same(tmp_path / "plain", tmp_path / "pinned", 1e-6)


def test_no_room_on_device_or_host_memory_maps_a_file(tiny_cifar_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(limits, "host_available_bytes", lambda: 0)
    policy = CPU.replace(device_free_bytes=lambda: 0, pin_memory=True)
    s = run(TrainConfig(**TINY, epochs=1), Paths(tiny_cifar_dir, tmp_path / "o", cache_dir=tmp_path / "c"),
            policy=policy)
    assert s["feature_cache"]["placement"] == "disk"


def test_uint8_data_lives_on_the_device_and_preprocessing_is_batched(tiny_cifar_dir, tmp_path, monkeypatch):
    """Images cross to the device once, as uint8; resize, normalize and flip run per batch there, never per image."""
    calls = []
    orig = preprocess.Preprocess.__call__

    def recorded(self, images_u8, flip=None):
        calls.append((images_u8.dtype, images_u8.device.type, len(images_u8)))
        return orig(self, images_u8, flip)
    monkeypatch.setattr(preprocess.Preprocess, "__call__", recorded)
    s = run(TrainConfig(**TINY, epochs=2, feature_cache=False), Paths(tiny_cifar_dir, tmp_path / "o"), policy=CPU)
    assert s["status"] == "succeeded"
    assert {(d, t) for d, t, _ in calls} == {(torch.uint8, "cpu")}
    batches_per_epoch = -(-200 // 32) + -(-60 // 32)
    assert len(calls) == 2 * batches_per_epoch and max(n for *_, n in calls) == 32  # one call per batch


def test_channels_last_cnn_gives_the_same_metrics(tiny_cifar_dir, tmp_path):
    """The CNN branch a GPU takes: model and inputs in NHWC."""
    cfg = TrainConfig(**CNN, epochs=2)
    _s, plain = _run(cfg, tmp_path / "nchw", CPU, tiny_cifar_dir)
    nhwc = CPU.replace(channels_last=True)
    s, info = _run(cfg, tmp_path / "nhwc", nhwc, tiny_cifar_dir)
    assert not plain["channels_last"] and info["channels_last"] and s["status"] == "succeeded"
    _same(tmp_path / "nchw", tmp_path / "nhwc", 1e-3, acc_tol=2.5 / 60)
    from worker.engine.train import build_model
    model, prep = build_model(cfg, nhwc)
    conv = model.backbone.conv_stem.weight  # 3x3 kernels: NHWC and NCHW strides differ
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    x = prep(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    assert x.is_contiguous(memory_format=torch.channels_last)
    dt = TrainConfig(**TINY)  # transformers stay as they are
    assert not build_model(dt, nhwc)[1].channels_last


@pytest.mark.parametrize("precision,hardware_bf16,expected", [
    ("fp32", True, "fp32"), ("bf16", False, "bf16"), ("auto", True, "bf16"), ("auto", False, "fp32"),
    ("fp16", True, "fp16"), ("fp16", False, "fp16")])
def test_the_autocast_dtype_follows_precision_and_hardware(tiny_cifar_dir, tmp_path, precision, hardware_bf16,
                                                           expected):
    policy = CPU.replace(bf16=hardware_bf16)
    s = run(TrainConfig(**{**TINY, "precision": precision}, epochs=1), Paths(tiny_cifar_dir, tmp_path / "o"),
            policy=policy)
    assert s["precision"] == expected


def test_every_gpu_branch_at_once(tiny_cifar_dir, tmp_path):
    """A CNN with the whole GPU policy forced (features on the device, channels_last, bf16 autocast, TF32 allowed)
    runs to the end and lands near the plain fp32 CPU run."""
    gpu_like = CPU.replace(device_free_bytes=lambda: 1 << 40, pin_memory=True, channels_last=True, bf16=True,
                           pinned_empty=lambda shape, dtype: torch.empty(shape, dtype=dtype))
    cfg = TrainConfig(**{**CNN, "precision": "auto"}, epochs=2, tf32=True)
    s, info = _run(cfg, tmp_path / "gpu", gpu_like, tiny_cifar_dir)
    assert (s["status"], s["precision"], info["channels_last"], info["tf32"]) == ("succeeded", "bf16", True, True)
    assert s["feature_cache"]["placement"] == "device"
    run(TrainConfig(**CNN, epochs=2), Paths(tiny_cifar_dir, tmp_path / "cpu"), policy=CPU)
    _same(tmp_path / "cpu", tmp_path / "gpu", 0.05, acc_tol=0.1)  # bf16 numerics: close, not equal


def test_tf32_switches_are_restored_after_a_run():
    before = fp32_modes()
    with fp32_math(True) as mode:
        assert mode == "tf32" and fp32_modes() == ("tf32", "tf32")
    with fp32_math(False):
        assert fp32_modes() == ("ieee", "ieee")
    assert fp32_modes() == before


def test_a_pytorch_without_the_fp32_precision_switches_sets_the_allow_tf32_flags(monkeypatch):
    """PyTorch before 2.9 (Colab's 2.8, Kaggle's, the oldest supported 2.5) has no torch.backends.cudnn.conv: the run
    sets the allow_tf32 flags instead of crashing at its first line, and restores them."""
    if hasattr(type(torch.backends.cudnn), "conv"):  # a newer PyTorch: take its switches away, as 2.8 has none
        monkeypatch.delattr(type(torch.backends.cudnn), "conv")
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    with fp32_math(False) as mode:
        assert mode == "ieee" and fp32_modes() == ("ieee", "ieee")
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (False, False)
    with fp32_math(True):
        assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (True, True)
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


@pytest.mark.parametrize("capability,expected", [((7, 0), None), ((7, 5), None), ((8, 0), torch.bfloat16),
                                                 ((9, 0), torch.bfloat16)])
def test_precision_auto_never_picks_emulated_bf16(monkeypatch, capability, expected):
    """torch.cuda.is_bf16_supported() says yes on a T4 or V100 (emulated, slower than fp32): auto asks the training
    device's compute capability instead, and bf16 below 8.0 only when asked for by name."""
    asked = []
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: asked.append(d) or capability)
    from worker.engine import device as device_mod
    monkeypatch.setattr(device_mod, "autocast_supported", lambda device_type, dtype: True)  # no GPU here to ask
    policy = DevicePolicy.for_device(torch.device("cuda:1"))
    assert policy.autocast_dtype("auto") is expected and asked == [torch.device("cuda:1")]
    assert policy.autocast_dtype("bf16") is torch.bfloat16 and policy.autocast_dtype("fp32") is None
    assert policy.autocast_dtype("fp16") is torch.float16  # the T4's fast path, by name only (never auto)


@pytest.fixture
def no_usable_cuda(monkeypatch):
    """PyTorch's view with a driver older than its CUDA build: no CUDA device, though the machine has a GPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


@pytest.mark.parametrize("setting", ["auto", "cuda", "cuda:1"])
def test_a_gpu_worker_that_cannot_use_its_gpu_refuses_to_train_on_the_cpu(no_usable_cuda, monkeypatch, setting):
    from worker.engine import device as device_mod
    monkeypatch.setattr(device_mod.glob, "glob", lambda pattern: ["/dev/nvidia0"] if "nvidia" in pattern else [])
    monkeypatch.setattr(device_mod, "_driver_version", lambda: "driver 535.104.05")
    with pytest.raises(device_mod.DeviceError) as e:
        device_mod.resolve_device(setting)
    msg = str(e.value)
    assert f"device={setting}" in msg and "CUDA 13.0" in msg and "torch.version.cuda" in msg
    assert "driver 535.104.05" in msg and "torch wheel that matches the driver" in msg and "device=cpu" in msg
    from worker.queue.tasks import job_error_text
    assert job_error_text(e.value) == msg  # the job page shows the advice as it is


def test_a_cpu_only_torch_on_a_gpu_machine_says_so(no_usable_cuda, monkeypatch):
    from worker.engine import device as device_mod
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(device_mod.shutil, "which", lambda cmd: "/usr/bin/nvidia-smi" if cmd == "nvidia-smi" else None)
    with pytest.raises(device_mod.DeviceError, match="CPU-only build"):
        device_mod.resolve_device("auto")


def test_a_machine_without_a_gpu_stays_on_the_cpu_silently(no_usable_cuda, monkeypatch):
    from worker.engine import device as device_mod
    monkeypatch.setattr(device_mod.glob, "glob", lambda pattern: [])
    monkeypatch.setattr(device_mod.shutil, "which", lambda cmd: None)
    assert device_mod.resolve_device("auto") == torch.device("cpu") == device_mod.resolve_device("cpu")
    # A GPU hidden on purpose (CUDA_VISIBLE_DEVICES empty or -1) is a CPU run asked for, not a broken driver.
    monkeypatch.setattr(device_mod.glob, "glob", lambda pattern: ["/dev/nvidia0"])
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert device_mod.resolve_device("auto") == torch.device("cpu")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(device_mod.DeviceError):
        device_mod.resolve_device("auto")
    assert device_mod.resolve_device("cpu") == torch.device("cpu")  # an explicit cpu is always honoured
