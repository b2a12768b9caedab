"""Precision fp16 (issue 16: the free T4 has fp16 tensor cores and no native bf16): float16 autocast with a dynamic
gradient scaler, trained for real on the CPU (its float16 autocast kernels run the tiny models), the scale kept in
the checkpoint and restored on resume; `auto` never picks it. And issue 15's leftover: the teacher path reads
nothing back from the device per training batch."""
import json
import math
import sys

import pytest
import torch

from core.config import OPTIONS_BY_NAME, TrainConfig, method_card
from worker.engine import builders, checkpoint, distill
from worker.engine import device as device_mod
from worker.engine import train as engine
from worker.engine.device import DeviceError, DevicePolicy
from worker.engine.store import FeatureStore
from worker.engine.train import Callbacks, Paths, run
from worker.queue.tasks import job_error_text, teacher_dir

from .readbacks import Readbacks
from .test_train import TINY

CPU = DevicePolicy.for_device(torch.device("cpu"))
FP16 = dict(TINY, precision="fp16")


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


class ScalerLog:
    """Records every GradScaler the engine makes and each step it takes (the scale before the step, and whether the
    step was skipped: the scale went down)."""

    def __init__(self, monkeypatch):
        self.scalers, self.steps = [], []
        orig_init, orig_update = torch.amp.GradScaler.__init__, torch.amp.GradScaler.update
        log = self

        def init(scaler, *a, **k):
            orig_init(scaler, *a, **k)
            log.scalers.append(scaler)

        def update(scaler, *a, **k):
            before = scaler.get_scale()
            orig_update(scaler, *a, **k)
            if scaler.is_enabled():
                log.steps.append((before, scaler.get_scale() < before))
        monkeypatch.setattr(torch.amp.GradScaler, "__init__", init)
        monkeypatch.setattr(torch.amp.GradScaler, "update", update)


# -- the option -------------------------------------------------------------------------------------------------------
def test_fp16_is_a_declared_speed_option_and_the_card_says_so():
    o = OPTIONS_BY_NAME["precision"]
    assert o.default == "fp32" and "fp16" in o.choices and "gradient scaler" in o.help and "T4" in o.help
    card = method_card(TrainConfig(precision="fp16"))
    assert "float16 autocast with a dynamic gradient scaler" in str(card) and "the paper trained in fp32" in str(card)


@pytest.mark.parametrize("native_bf16", [True, False])
def test_auto_never_picks_fp16_or_emulated_bf16(monkeypatch, native_bf16):
    """auto is bf16 only where the hardware runs it natively (device.bf16_supported: compute capability 8.0 and
    up), else fp32; never fp16, which only a name asks for (a T4: capability 7.5, fp16 tensor cores)."""
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)  # counts emulation
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda d=None: (8, 0) if native_bf16 else (7, 5))
    monkeypatch.setattr(device_mod, "autocast_supported", lambda device_type, dtype: True)
    gpu = DevicePolicy.for_device(torch.device("cuda:0"))
    assert gpu.bf16 is native_bf16
    assert gpu.autocast_dtype("auto") is (torch.bfloat16 if native_bf16 else None)
    assert gpu.autocast_dtype("fp16") is torch.float16 and gpu.amp("fp16")["dtype"] is torch.float16
    for policy in (gpu, CPU, CPU.replace(bf16=True), CPU.replace(bf16=False)):
        assert policy.autocast_dtype("auto") in (torch.bfloat16, None)
        assert policy.autocast_dtype("auto") is (torch.bfloat16 if policy.bf16 else None)


def test_fp16_where_autocast_cannot_run_it_is_refused_naming_the_option(monkeypatch):
    monkeypatch.setattr(device_mod, "autocast_supported", lambda device_type, dtype: dtype is not torch.float16)
    with pytest.raises(DeviceError) as e:
        CPU.amp("fp16")
    msg = job_error_text(e.value)
    assert msg.startswith("precision=fp16: float16 autocast is not available on cpu")
    assert "choose precision fp32 or bf16" in msg and "Traceback" not in msg
    assert CPU.amp("bf16")["enabled"]  # the others are unaffected


def test_autocast_support_is_asked_of_autocast_itself():
    assert device_mod.autocast_supported("cpu", torch.bfloat16)
    assert not device_mod.autocast_supported("cpu", torch.float64)  # autocast turns itself off for it
    assert not device_mod.autocast_supported("meta", torch.float16)  # a device type autocast does not know
    if not torch.cuda.is_available():
        assert not device_mod.autocast_supported("cuda", torch.float16)


def test_only_fp16_gets_a_gradient_scaler():
    for precision, on in (("fp32", False), ("bf16", False), ("fp16", True)):
        assert engine.grad_scaler(CPU.amp(precision)).is_enabled() is on, precision


# -- a real fp16 run ----------------------------------------------------------------------------------------------------
def test_an_fp16_run_trains_reports_fp16_and_resumes_at_its_scale(tiny_cifar_dir, tmp_path, monkeypatch):
    log = ScalerLog(monkeypatch)
    cfg = TrainConfig(**FP16, epochs=3)
    out = tmp_path / "o"
    done = {"epoch": 0}
    infos = []
    first = run(cfg, Paths(tiny_cifar_dir, out), Callbacks(on_info=infos.append,
                                                           on_epoch=lambda r: done.update(epoch=r["epoch"]),
                                                           should_stop=lambda: done["epoch"] >= 2))
    assert first["status"] == "stopped" and first["epochs_run"] == 2
    assert first["precision"] == "fp16" == infos[0]["precision"]
    rows = _rows(out)
    for r in rows:
        assert math.isfinite(r["train_loss"]) and math.isfinite(r["val_loss"]) and 0 <= r["val_acc"] <= 1
        assert not r["nonfinite"]
    assert rows[1]["train_loss"] < rows[0]["train_loss"]  # it learns
    assert len(log.steps) == 2 * math.ceil(200 / TINY["batch_size"])  # a scaler step per batch
    (scaler,) = [s for s in log.scalers if s.is_enabled()]
    saved = checkpoint.load(out)
    assert saved["scaler"]["scale"] == scaler.get_scale()
    assert saved["scaler"]["_growth_tracker"] == scaler.state_dict()["_growth_tracker"] > 0
    assert saved["optimizer"]["param_groups"][0]["fused"] is True  # the scaler's flag stays on the device

    # the stored scale is what the resumed run starts from (not the first one): made different to be sure
    saved["scaler"]["scale"], saved["scaler"]["_growth_tracker"] = 1024.0, 7
    torch.save(saved, out / checkpoint.CHECKPOINT)
    log.steps.clear()
    seen = []
    second = run(cfg, Paths(tiny_cifar_dir, out), Callbacks(on_epoch=lambda r: seen.append(r["epoch"])))
    assert seen == [3] and second["status"] == "succeeded" and second["precision"] == "fp16"  # 1-2 not recomputed
    assert log.steps[0] == (1024.0, False)
    assert log.scalers[-1].state_dict()["_growth_tracker"] == 7 + len(log.steps)
    assert checkpoint.load(out)["epoch"] == 3 and "scaler" in checkpoint.load(out)


def test_fp16_lands_near_fp32(tiny_cifar_dir, tmp_path):
    run(TrainConfig(**TINY, epochs=2), Paths(tiny_cifar_dir, tmp_path / "fp32"))
    s = run(TrainConfig(**FP16, epochs=2), Paths(tiny_cifar_dir, tmp_path / "fp16"))
    assert s["status"] == "succeeded"
    for a, b in zip(_rows(tmp_path / "fp32"), _rows(tmp_path / "fp16"), strict=True):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=0.05)
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=0.05)


def test_steps_the_scaler_skips_are_not_divergence(tiny_cifar_dir, tmp_path, monkeypatch):
    """A first scale so large that every scaled gradient overflows float16: each step of epoch 1 is skipped and
    the scale halved, but the loss is a number, so the run goes on (and is not called diverged); once the scale
    has come down, steps are taken again. An fp32 checkpoint carries no scaler state."""
    monkeypatch.setattr(builders, "FP16_INIT_SCALE", 2.0 ** 120)
    log = ScalerLog(monkeypatch)
    batch = 8
    per_epoch = math.ceil(200 / batch)
    cfg = TrainConfig(**{**FP16, "batch_size": batch}, epochs=5)
    s = run(cfg, Paths(tiny_cifar_dir, tmp_path / "o"))
    assert s["status"] == "succeeded"
    assert all(skipped for _, skipped in log.steps[:per_epoch])  # epoch 1: every step skipped
    assert not log.steps[-1][1]  # by the end the scale fits and steps are taken
    rows = _rows(tmp_path / "o")
    assert all(math.isfinite(r["train_loss"]) and not r["nonfinite"] for r in rows)
    assert checkpoint.load(tmp_path / "o")["scaler"]["scale"] < 2.0 ** 120
    run(TrainConfig(**TINY, epochs=1), Paths(tiny_cifar_dir, tmp_path / "fp32"))
    assert "scaler" not in checkpoint.load(tmp_path / "fp32")


def test_a_non_finite_fp16_loss_is_still_divergence(tiny_cifar_dir, tmp_path, monkeypatch):
    real = engine.F.cross_entropy

    def nan_loss(logits, y, **kw):
        return real(logits, y, **kw) * float("nan") if "label_smoothing" in kw else real(logits, y, **kw)
    monkeypatch.setattr(engine.F, "cross_entropy", nan_loss)
    with pytest.raises(engine.Diverged) as e:
        run(TrainConfig(**FP16, epochs=2), Paths(tiny_cifar_dir, tmp_path / "o"))
    assert str(e.value).startswith("the loss became NaN at epoch 1; try a lower learning rate; under fp16 ")
    assert "try precision bf16 or fp32" in job_error_text(e.value)


def test_a_cnn_trains_under_fp16_with_the_gpu_branches_forced(tiny_cifar_dir, tmp_path):
    """The T4's path for the paper's CNNs: channels_last, features on the device, fp16 autocast and the scaler,
    near the plain fp32 CPU run."""
    from .test_device import CNN, _same
    gpu_like = CPU.replace(device_free_bytes=lambda: 1 << 40, pin_memory=True, channels_last=True, bf16=False,
                           pinned_empty=lambda shape, dtype: torch.empty(shape, dtype=dtype))
    infos = []
    s = run(TrainConfig(**{**CNN, "precision": "fp16"}, epochs=2), Paths(tiny_cifar_dir, tmp_path / "t4"),
            Callbacks(on_info=infos.append), policy=gpu_like)
    assert (s["status"], s["precision"], infos[0]["channels_last"]) == ("succeeded", "fp16", True)
    run(TrainConfig(**CNN, epochs=2), Paths(tiny_cifar_dir, tmp_path / "cpu"), policy=CPU)
    _same(tmp_path / "cpu", tmp_path / "t4", 0.05, acc_tol=0.1)


# -- the teacher path -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher_runs(tiny_cifar_dir, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    s = run(TrainConfig(**{**TINY, "model": "deit_tiny_patch16_224"}, epochs=1, feature_cache=False),
            Paths(tiny_cifar_dir, runs / "job-1"))
    assert s["status"] == "succeeded"
    return runs


STUDENT = dict(TINY, model="deit_tiny_distilled_patch16_224", teacher=1)


def test_a_student_trains_under_fp16_and_keeps_its_own_teacher_predictions(tiny_cifar_dir, teacher_runs):
    """The teacher runs under the student's autocast: fp16 predictions are stored apart from fp32 and bf16 ones."""
    keys = {}
    for precision in ("fp32", "bf16", "fp16"):
        info = {}
        cfg = TrainConfig(**{**STUDENT, "precision": precision}, epochs=2)
        s = run(cfg, Paths(tiny_cifar_dir, teacher_runs / f"s-{precision}", teacher_dir=teacher_dir(teacher_runs, 1)),
                Callbacks(on_info=info.update))
        assert s["status"] == "succeeded" and s["precision"] == precision
        keys[precision] = info["teacher"]["key"]
        for r in _rows(teacher_runs / f"s-{precision}"):
            assert math.isfinite(r["train_loss"]) and 0 <= r["teacher_agreement"] <= 1
    assert len(set(keys.values())) == 3


def test_the_teacher_key_of_fp32_and_bf16_is_the_one_stored_before_fp16():
    """Predictions stored before fp16 existed were keyed `bf16: <autocast on>`: those keys stay as they were."""
    assert distill._numerics_key({"device_type": "cpu", "enabled": False}) == {"bf16": False}
    assert distill._numerics_key(CPU.amp("fp32")) == {"bf16": False}
    assert distill._numerics_key(CPU.amp("bf16")) == {"bf16": True}
    assert distill._numerics_key(CPU.amp("fp16")) == {"bf16": False, "fp16": True}


READBACKS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__")


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_a_student_epoch_reads_nothing_back_from_the_device_per_batch(tiny_cifar_dir, teacher_runs, monkeypatch,
                                                                      precision):
    """As tests/worker/test_cache_gpu_paths.py counts the plain path's readbacks: every .item, .cpu, .tolist,
    .numpy, float(), int(), bool() of a tensor that the engine's code makes while an epoch trains. With a teacher
    (25 batches) only the epoch-end accumulation reads back: loss, accuracy, the teacher's accuracy and the
    agreement. The host bookkeeping on host tensors (the feature store's and the teacher's filled flags) is not a
    readback and is checked to get host tensors. fp16's GradScaler reads its overflow flag back at every step unless
    the optimizer takes it on the device (fused Adam): its readbacks are counted too, and there are none."""
    counting = Readbacks(monkeypatch, also=sys.modules[torch.amp.GradScaler.__module__].__file__)
    counting.host_only(FeatureStore, "lacking")
    counting.host_only(distill.TeacherPredictions, "lacking")
    get_calls = []
    orig_get = distill.TeacherPredictions.get
    monkeypatch.setattr(distill.TeacherPredictions, "get",
                        lambda self, *a, **k: get_calls.append(1) or orig_get(self, *a, **k))
    cfg = TrainConfig(**{**STUDENT, "batch_size": 8, "precision": precision}, epochs=1)
    s = run(cfg, Paths(tiny_cifar_dir, teacher_runs / f"sync-{precision}", teacher_dir=teacher_dir(teacher_runs, 1)))
    assert s["status"] == "succeeded" and len(get_calls) == 25
    assert counting.calls == ["__float__"] * 4  # loss, accuracy, teacher accuracy, agreement: at the end only
    assert counting.extra == []  # none from the GradScaler either


def test_teacher_predictions_keep_their_flags_on_the_host(tiny_cifar_dir, teacher_runs, tmp_path):
    import shutil

    from worker.engine import data as cifar
    folder = tmp_path / "job-1"  # the teacher without the predictions the students above stored
    shutil.copytree(teacher_runs / "job-1", folder, ignore=shutil.ignore_patterns(distill.PREDICTIONS_DIR))
    train = cifar.load("cifar10", tiny_cifar_dir).train
    images = torch.from_numpy(train.images)
    tp = distill.TeacherPredictions.setup(TrainConfig(**STUDENT), folder, CPU, CPU.amp("fp32"), images,
                                          cifar.fingerprint(train))
    assert tp.filled.device.type == "cpu"
    flips = torch.rand(len(images), generator=torch.Generator().manual_seed(0)) < 0.5
    tp.fill(flips)
    idx = torch.arange(5)
    got = tp.get(idx, flips[idx], (idx.clone(), flips[idx].clone()))
    torch.testing.assert_close(got, tp.logits[idx, flips[idx].long()])
    torch.testing.assert_close(tp.get(idx, flips[idx]), got)  # without device copies: the same
    with pytest.raises(RuntimeError, match="before `fill`"):
        tp.get(idx, ~flips[idx])
