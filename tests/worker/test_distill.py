"""DeiT distillation from a teacher job: the loss is the formula, the teacher's predictions are computed once (across
epochs and across jobs) and stored with the teacher, the teacher is rebuilt exactly, and every way a teacher can be
wrong ends in a clear error."""
import json
import math
import shutil

import pytest
import torch

from core.config import TrainConfig
from worker.engine import data as cifar
from worker.engine import distill
from worker.engine.device import DevicePolicy
from worker.engine.distill import PREDICTIONS_DIR, TeacherError, TeacherPredictions, distillation_loss
from worker.engine.train import Paths, run
from worker.queue.tasks import job_error_text, teacher_dir

TINY = dict(weights="none", batch_size=32, image_size=32, val_limit=60, precision="fp32", seed=0)
STUDENT = dict(TINY, model="deit_tiny_distilled_patch16_224", teacher=1, epochs=2)


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# -- the loss on a hand-built batch ---------------------------------------------------------------------------------
def _batch():
    g = torch.Generator().manual_seed(3)
    cls, dist, teacher = (torch.randn(5, 4, generator=g) * 2 for _ in range(3))
    labels = torch.tensor([0, 3, 1, 1, 2])
    return [cls, dist], labels, teacher


def _log_softmax(z):  # written out, not torch's
    z = z.double()
    return z - z.exp().sum(1, keepdim=True).log()


def _ce(logits, target, smoothing=0.0):
    logp = _log_softmax(logits)
    k = logits.shape[1]
    q = torch.full_like(logp, smoothing / k)
    q[torch.arange(len(target)), target] += 1 - smoothing
    return float(-(q * logp).sum(1).mean())


def test_hard_distillation_is_half_label_ce_plus_half_ce_against_the_teachers_argmax():
    heads, labels, teacher = _batch()
    t_argmax = torch.tensor([max(range(4), key=lambda j: float(row[j])) for row in teacher])
    want = 0.5 * _ce(heads[0], labels) + 0.5 * _ce(heads[1], t_argmax)
    got = distillation_loss(heads, labels, teacher, "hard", temperature=3.0)
    assert float(got) == pytest.approx(want, rel=1e-6)
    # label smoothing keeps its meaning on the label term; the teacher's term stays hard
    smooth = distillation_loss(heads, labels, teacher, "hard", 3.0, label_smoothing=0.1)
    assert float(smooth) == pytest.approx(0.5 * _ce(heads[0], labels, 0.1) + 0.5 * _ce(heads[1], t_argmax),
                                          rel=1e-6)


@pytest.mark.parametrize("t", [1.0, 3.0])
def test_soft_distillation_is_half_label_ce_plus_half_t_squared_kl(t):
    heads, labels, teacher = _batch()
    p_t = _log_softmax(teacher / t).exp()
    kl = float((p_t * (p_t.log() - _log_softmax(heads[1] / t))).sum(1).sum() / len(labels))  # batchmean
    want = 0.5 * _ce(heads[0], labels) + 0.5 * t * t * kl
    got = distillation_loss(heads, labels, teacher, "soft", temperature=t)
    assert float(got) == pytest.approx(want, rel=1e-6)
    assert float(got) != pytest.approx(float(distillation_loss(heads, labels, teacher, "hard", t)), rel=1e-3)


def test_the_gradient_reaches_both_heads_and_never_the_teacher():
    heads, labels, teacher = _batch()
    heads = [h.requires_grad_() for h in heads]
    teacher.requires_grad_()
    for kind in ("soft", "hard"):
        distillation_loss(heads, labels, teacher, kind, 3.0).backward()
        assert all(h.grad is not None and h.grad.abs().sum() > 0 for h in heads)
        assert teacher.grad is None


# -- end to end: a teacher job, then students ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def teacher_run(tiny_cifar_dir, tmp_path_factory):
    """A finished teacher job's folder (any model: a plain DeiT-tiny here), as the lab keeps it: runs/job-1."""
    runs = tmp_path_factory.mktemp("runs")
    out = runs / "job-1"
    s = run(TrainConfig(**TINY, model="deit_tiny_patch16_224", epochs=1, feature_cache=False),
            Paths(tiny_cifar_dir, out))
    assert s["status"] == "succeeded"
    return runs


class CountTeacher:
    """Counts images that go through the teacher."""

    def __init__(self, monkeypatch):
        self.images = 0
        orig = distill._predict

        def counted(model, prep, x, flip, amp):
            self.images += len(x)
            return orig(model, prep, x, flip, amp)
        monkeypatch.setattr(distill, "_predict", counted)


def _student(tiny_cifar_dir, runs, out, **over):
    cfg = TrainConfig(**{**STUDENT, **over})
    return run(cfg, Paths(tiny_cifar_dir, runs / out, teacher_dir=teacher_dir(runs, cfg.teacher)))


def _distinct_pairs(cfg: TrainConfig, epochs: int, n: int) -> int:
    from worker.engine.train import _epoch_order
    used = torch.zeros(n, 2, dtype=torch.bool)
    for e in range(1, epochs + 1):
        _, flips = _epoch_order(cfg, e, n)
        used[torch.arange(n), flips.long()] = True
    return int(used.sum())


def test_teacher_predictions_are_computed_once_across_epochs_and_jobs(tiny_cifar_dir, teacher_run, monkeypatch):
    runs = teacher_run
    count = CountTeacher(monkeypatch)
    s = _student(tiny_cifar_dir, runs, "job-2", epochs=3)
    n = 200
    assert s["status"] == "succeeded"
    # every (image, flip state) the three epochs drew went through the teacher exactly once
    assert count.images == _distinct_pairs(TrainConfig(**STUDENT), 3, n)
    stored = list((runs / "job-1" / PREDICTIONS_DIR).glob("*.pt"))
    assert len(stored) == 1  # with the teacher job
    mtime = stored[0].stat().st_mtime_ns
    rows = _rows(runs / "job-2")
    for r in rows:
        assert 0.0 <= r["teacher_acc"] <= 1.0 and 0.0 <= r["teacher_agreement"] <= 1.0
        assert math.isfinite(r["train_loss"])

    # a second student job on the same images (another learning rate, fewer epochs): no teacher forward at all
    count.images = 0
    again = _student(tiny_cifar_dir, runs, "job-3", epochs=2, lr=3e-4)
    assert again["status"] == "succeeded" and count.images == 0
    assert stored[0].stat().st_mtime_ns == mtime  # read, not written again
    info = json.loads((runs / "job-3" / "summary.json").read_text())
    assert info["config"]["teacher"] == 1
    # the teacher's accuracy on an epoch's images does not depend on who asks
    assert [r["teacher_acc"] for r in _rows(runs / "job-3")] == [r["teacher_acc"] for r in rows[:2]]

    # a student on other images: a second entry, computed afresh
    _student(tiny_cifar_dir, runs, "job-4", epochs=1, train_per_class=5, distillation="soft")
    assert count.images == 50
    assert len(list((runs / "job-1" / PREDICTIONS_DIR).glob("*.pt"))) == 2


def test_the_teacher_is_rebuilt_as_it_trained(tiny_cifar_dir, teacher_run):
    """Its checkpoint's config and trained state, over the frozen weights it was built from (a seeded random
    init here): it scores its own run's validation accuracy again."""
    folder = teacher_run / "job-1"
    ckpt = distill._teacher_checkpoint(1, folder)
    tcfg = distill._teacher_config(1, ckpt, TrainConfig(**STUDENT))
    before = torch.get_rng_state()
    model, prep = distill.build_teacher(tcfg, ckpt, DevicePolicy.for_device(torch.device("cpu")))
    assert torch.equal(torch.get_rng_state(), before)  # the student's random state is untouched
    val = cifar.limit(cifar.load("cifar10", tiny_cifar_dir).val, 60)
    logits = distill._predict(model, prep, torch.from_numpy(val.images), None, {"device_type": "cpu",
                                                                               "enabled": False})
    y = torch.from_numpy(val.labels).long()
    confusion = torch.bincount(y * 10 + logits.argmax(1), minlength=100).view(10, 10)
    assert confusion.tolist() == _rows(folder)[-1]["confusion"]  # every prediction as in its own validation


def test_the_loss_trains_the_distillation_head_towards_the_teacher(tiny_cifar_dir, teacher_run):
    """Hard distillation with a teacher moves training away from the no-teacher run: train_loss is the
    distillation loss, and agreement with the teacher is recorded."""
    runs = teacher_run
    plain = run(TrainConfig(**{**STUDENT, "teacher": None, "epochs": 1}), Paths(tiny_cifar_dir, runs / "plain"))
    _student(tiny_cifar_dir, runs, "hard", epochs=1)
    p, h = _rows(runs / "plain")[0], _rows(runs / "hard")[0]
    assert p["teacher_acc"] is None and p["teacher_agreement"] is None
    assert h["train_loss"] != pytest.approx(p["train_loss"], rel=1e-4)
    assert plain["status"] == "succeeded"


def test_a_checkpoint_never_resumes_under_another_teacher(tiny_cifar_dir, teacher_run):
    runs = teacher_run
    shutil.copytree(runs / "job-1", runs / "job-7", ignore=shutil.ignore_patterns(PREDICTIONS_DIR))
    _student(tiny_cifar_dir, runs, "resume", epochs=1)
    with pytest.raises(ValueError, match="teacher"):
        _student(tiny_cifar_dir, runs, "resume", epochs=2, teacher=7)


# -- a teacher that cannot teach ------------------------------------------------------------------------------------
def test_a_missing_teacher_says_which_job_and_what_to_do(tiny_cifar_dir, tmp_path):
    with pytest.raises(TeacherError) as e:
        _student(tiny_cifar_dir, tmp_path, "s", teacher=41, epochs=1)
    msg = job_error_text(e.value)
    assert "teacher job 41" in msg and "missing" in msg and "choose another teacher" in msg
    assert "Traceback" not in msg and not msg.startswith("TeacherError")
    with pytest.raises(TeacherError, match="--teacher-dir"):  # the command line without the folder
        run(TrainConfig(**{**STUDENT, "epochs": 1}), Paths(tiny_cifar_dir, tmp_path / "cli"))


def test_an_unfinished_or_foreign_teacher_is_refused(tiny_cifar_dir, teacher_run, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(teacher_run / "job-1", runs / "job-5", ignore=shutil.ignore_patterns(PREDICTIONS_DIR))
    summary = runs / "job-5" / "summary.json"
    good = summary.read_text()
    summary.write_text(json.dumps({**json.loads(good), "status": "stopped"}))
    with pytest.raises(TeacherError, match=r"teacher job 5 has not succeeded \(stopped"):
        _student(tiny_cifar_dir, runs, "s1", teacher=5, epochs=1)
    summary.unlink()  # still running: no summary yet
    with pytest.raises(TeacherError, match="teacher job 5 has not succeeded"):
        _student(tiny_cifar_dir, runs, "s2", teacher=5, epochs=1)
    summary.write_text(good)
    ckpt = torch.load(runs / "job-5" / "checkpoint.pt", weights_only=True)
    ckpt["config"]["dataset"] = "cifar100"
    torch.save(ckpt, runs / "job-5" / "checkpoint.pt")
    with pytest.raises(TeacherError, match="teacher job 5 was trained on cifar100 .100 classes"):
        _student(tiny_cifar_dir, runs, "s3", teacher=5, epochs=1)


def test_a_student_without_a_distillation_head_is_refused(tiny_cifar_dir, teacher_run, tmp_path):
    with pytest.raises(TeacherError, match="no distillation head"):
        _student(tiny_cifar_dir, teacher_run, "onehead", model="deit_tiny_patch16_224", epochs=1)


def test_a_teacher_deleted_mid_run_is_not_made_again(tiny_cifar_dir, teacher_run, tmp_path):
    """Its predictions were read at setup; storing them after its folder went is skipped, not a crash."""
    runs = tmp_path / "runs"
    shutil.copytree(teacher_run / "job-1", runs / "job-6", ignore=shutil.ignore_patterns(PREDICTIONS_DIR))
    cfg = TrainConfig(**{**STUDENT, "teacher": 6})
    train = cifar.load("cifar10", tiny_cifar_dir).train
    images = torch.from_numpy(train.images)
    tp = TeacherPredictions.setup(cfg, runs / "job-6", DevicePolicy.for_device(torch.device("cpu")),
                                  {"device_type": "cpu", "enabled": False}, images, cifar.fingerprint(train))
    shutil.rmtree(runs / "job-6")
    assert tp.fill(None) == len(images)
    assert not (runs / "job-6").exists() and tp.info["stored"] is False
    assert tp.get(torch.arange(3), None).shape == (3, 10)
