"""The training loop through its real entry points, on tiny data: cache exactness, resume, stop, reuse."""
import json
import subprocess
import sys

import pytest
import torch

from core.config import TrainConfig
from worker.engine import train as engine
from worker.engine.device import fp32_modes
from worker.engine.schedule import PlateauLR
from worker.engine.train import Callbacks, Paths, run

TINY = dict(model="deit_tiny_patch16_224", weights="none", batch_size=32, image_size=32, val_limit=60,
            precision="fp32", seed=0)
KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")


def _rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _close(a, b, tol):
    for ra, rb in zip(a, b, strict=True):
        for k in KEYS:
            assert ra[k] == pytest.approx(rb[k], rel=tol, abs=tol), (k, ra["epoch"])


class CountFrozen:
    """Counts images that go through the frozen part (the fill's padding to its fixed chunk size not counted:
    `padding` says how much there was)."""

    def __init__(self, monkeypatch):
        from worker.engine import features
        self.rows = self.padding = 0
        orig, orig_pad = engine.SingleBlockModel.frozen_features, features._padded

        def counted(m, x):
            self.rows += len(x)
            return orig(m, x)

        def padded(t, size):
            if t.dim() == 1 and t.dtype == torch.long and size > len(t):
                self.padding += (size - len(t)) / 2  # called once for the indices and once for the flip states
            return orig_pad(t, size)
        monkeypatch.setattr(engine.SingleBlockModel, "frozen_features", counted)
        monkeypatch.setattr(features, "_padded", padded)

    @property
    def images(self) -> int:
        return self.rows - int(self.padding)


def test_cached_and_uncached_runs_agree(tiny_cifar_dir, tmp_path):
    cfg = dict(TINY, epochs=3)
    run(TrainConfig(**cfg, feature_cache=False), Paths(tiny_cifar_dir, tmp_path / "plain"))
    run(TrainConfig(**cfg, cache_dtype="float32"), Paths(tiny_cifar_dir, tmp_path / "f32"))
    run(TrainConfig(**cfg), Paths(tiny_cifar_dir, tmp_path / "f16"))
    _close(_rows(tmp_path / "plain"), _rows(tmp_path / "f32"), 1e-5)
    _close(_rows(tmp_path / "plain"), _rows(tmp_path / "f16"), 2e-2)  # fp16 storage: float tolerance


def test_frozen_part_runs_once_per_image_and_flip_state(tiny_cifar_dir, tmp_path, monkeypatch):
    count = CountFrozen(monkeypatch)
    s = run(TrainConfig(**TINY, epochs=4), Paths(tiny_cifar_dir, tmp_path / "o"))
    n_train, n_val = 200, 60
    assert s["feature_cache"]["enabled"]
    # +1: the probe that sizes the cache. Each image at most twice (two flip states), validation once.
    assert n_train + n_val + 1 < count.images <= 2 * n_train + n_val + 1


def test_resume_gives_the_uninterrupted_metrics_without_recomputing(tiny_cifar_dir, tmp_path, monkeypatch):
    cfg = TrainConfig(**TINY, epochs=3)
    full = run(cfg, Paths(tiny_cifar_dir, tmp_path / "full"))
    stop_after = {"epoch": 0}

    def should_stop():
        return stop_after["epoch"] >= 2
    cb = Callbacks(on_epoch=lambda r: stop_after.update(epoch=r["epoch"]), should_stop=should_stop)
    first = run(cfg, Paths(tiny_cifar_dir, tmp_path / "part"), cb)
    assert first["status"] == "stopped" and first["epochs_run"] == 2
    seen = []
    second = run(cfg, Paths(tiny_cifar_dir, tmp_path / "part"), Callbacks(on_epoch=lambda r: seen.append(r["epoch"])))
    assert seen == [3]  # epochs 1-2 were not recomputed
    assert second["status"] == "succeeded" and second["best_val_acc"] == full["best_val_acc"]
    _close(_rows(tmp_path / "full"), _rows(tmp_path / "part"), 1e-6)


def test_finished_run_resumes_to_nothing(tiny_cifar_dir, tmp_path):
    cfg = TrainConfig(**TINY, epochs=1)
    run(cfg, Paths(tiny_cifar_dir, tmp_path / "o"))
    seen = []
    s = run(cfg, Paths(tiny_cifar_dir, tmp_path / "o"), Callbacks(on_epoch=seen.append))
    assert seen == [] and s["epochs_run"] == 1 and len(_rows(tmp_path / "o")) == 1


def test_stop_mid_epoch_keeps_the_last_checkpoint(tiny_cifar_dir, tmp_path):
    """A stop set at batch 3 of epoch 2 ends the run there: no further batch trains, the checkpoint of epoch 1
    stays, and the run resumes from it."""
    from worker.engine import checkpoint
    from worker.engine.stop import Stop
    stop, batches = Stop(), []

    def on_progress(p):
        if p["phase"] == "training":
            batches.append((p["epoch"], p["done"]))
            if (p["epoch"], p["done"]) == (2, 3):
                stop.set()
    cfg = TrainConfig(**dict(TINY, batch_size=8), epochs=5)
    s = run(cfg, Paths(tiny_cifar_dir, tmp_path / "o"), Callbacks(on_progress=on_progress, stop=stop))
    assert s["status"] == "stopped" and s["epochs_run"] == 1 and s["stopped_in"] == "training"
    assert batches[-1] == (2, 3)  # checked at every batch: not one more
    ckpt = checkpoint.load(tmp_path / "o")
    assert ckpt["epoch"] == 1 and [r["epoch"] for r in ckpt["history"]] == [1]
    assert not (tmp_path / "o" / "checkpoint.tmp").exists()
    seen = []
    again = run(cfg, Paths(tiny_cifar_dir, tmp_path / "o"), Callbacks(on_epoch=lambda r: seen.append(r["epoch"])))
    assert seen == [2, 3, 4, 5] and again["status"] == "succeeded"  # epoch 1 came from the checkpoint


def test_a_checkpoint_written_before_an_option_existed_still_resumes(tiny_cifar_dir, tmp_path):
    """label_smoothing was added after checkpoints existed: a checkpoint without it ran at its default (0)."""
    from worker.engine import checkpoint
    cfg = TrainConfig(**TINY, epochs=2)
    run(TrainConfig(**TINY, epochs=1), Paths(tiny_cifar_dir, tmp_path / "o"))
    ckpt = checkpoint.load(tmp_path / "o")
    del ckpt["config"]["label_smoothing"]  # as written before the option was declared
    torch.save(ckpt, tmp_path / "o" / "checkpoint.pt")
    seen = []
    run(cfg, Paths(tiny_cifar_dir, tmp_path / "o"), Callbacks(on_epoch=lambda r: seen.append(r["epoch"])))
    assert seen == [2]
    with pytest.raises(ValueError, match="label_smoothing"):  # a result-affecting change is still refused
        run(TrainConfig(**TINY, epochs=3, label_smoothing=0.1), Paths(tiny_cifar_dir, tmp_path / "o"))
    seen.clear()
    run(TrainConfig(**TINY, epochs=3, device="cpu", num_workers=1), Paths(tiny_cifar_dir, tmp_path / "o"),
        Callbacks(on_epoch=lambda r: seen.append(r["epoch"])))  # runtime options and more epochs: resumes
    assert seen == [3]


def test_label_smoothing_changes_the_training_loss_only(tiny_cifar_dir, tmp_path):
    """With a vanishing learning rate the model stays put: smoothing raises the training loss, while val_loss
    (plain cross-entropy), the accuracies and the order of batches are unchanged."""
    base = dict(TINY, epochs=1, lr=1e-12)
    plain = run(TrainConfig(**base), Paths(tiny_cifar_dir, tmp_path / "plain"))
    smooth = run(TrainConfig(**base, label_smoothing=0.2), Paths(tiny_cifar_dir, tmp_path / "smooth"))
    a, b = _rows(tmp_path / "plain")[0], _rows(tmp_path / "smooth")[0]
    assert b["train_loss"] != pytest.approx(a["train_loss"], abs=1e-3)
    for k in ("val_loss", "val_acc", "train_acc"):
        assert b[k] == pytest.approx(a[k], abs=1e-6), k
    assert smooth["config"]["label_smoothing"] == 0.2 and plain["config"]["label_smoothing"] == 0.0


def test_a_diverged_run_ends_with_advice_and_keeps_earlier_epochs(tiny_cifar_dir, tmp_path, monkeypatch):
    from worker.engine import checkpoint
    real = engine.F.cross_entropy
    calls = {"epoch": 0}

    def diverging(logits, y, **kw):  # the training loss of epoch 2 becomes NaN
        loss = real(logits, y, **kw)
        return loss * float("nan") if calls["epoch"] == 1 and "label_smoothing" in kw else loss
    monkeypatch.setattr(engine.F, "cross_entropy", diverging)
    rows = []
    with pytest.raises(engine.Diverged, match="the loss became NaN at epoch 2; try a lower learning rate"):
        run(TrainConfig(**TINY, epochs=3), Paths(tiny_cifar_dir, tmp_path / "o"),
            Callbacks(on_epoch=lambda r: (rows.append(r), calls.update(epoch=r["epoch"]))))
    assert [r["epoch"] for r in rows] == [1, 2] and rows[1]["nonfinite"]["train_loss"] == "NaN"
    assert json.loads(json.dumps(rows, allow_nan=False))  # strict JSON all the way
    assert checkpoint.load(tmp_path / "o")["epoch"] == 1  # the diverged state is not a resume point


def test_a_second_job_reuses_the_cached_features(tiny_cifar_dir, tmp_path, monkeypatch):
    count = CountFrozen(monkeypatch)
    paths = dict(cache_dir=tmp_path / "cache", cache_cap_bytes=1 << 30)
    a = run(TrainConfig(**TINY, epochs=2), Paths(tiny_cifar_dir, tmp_path / "a", **paths))
    first = count.images
    b = run(TrainConfig(**TINY, epochs=2, lr=3e-4), Paths(tiny_cifar_dir, tmp_path / "b", **paths))
    assert not a["feature_cache"]["reused"] and b["feature_cache"]["reused"]
    assert count.images - first == 1  # only the sizing probe: the frozen part never ran for job b
    other_data = dict(TINY, val_limit=50)  # other data, other key
    c = run(TrainConfig(**other_data, epochs=1), Paths(tiny_cifar_dir, tmp_path / "c", **paths))
    assert not c["feature_cache"]["reused"]


def test_cache_dir_evicts_least_recently_used(tiny_cifar_dir, tmp_path):
    from worker.engine.cachedir import CacheDir
    paths = dict(cache_dir=tmp_path / "cache")
    run(TrainConfig(**TINY, epochs=1), Paths(tiny_cifar_dir, tmp_path / "a", **paths))
    entries = CacheDir(tmp_path / "cache", 1 << 40).entries()
    assert len(entries) == 1
    size = entries[0][1]
    run(TrainConfig(**dict(TINY, val_limit=50), epochs=1),
        Paths(tiny_cifar_dir, tmp_path / "b", cache_dir=tmp_path / "cache", cache_cap_bytes=int(size * 1.5)))
    left = CacheDir(tmp_path / "cache", 1 << 40).entries()
    assert len(left) == 1 and left[0][2] != entries[0][2]  # the older one made room


def test_plateau_schedule_has_keras_semantics():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    s = PlateauLR(opt, factor=0.6, patience=2, min_lr=1e-7)
    lrs = []
    for acc in [0.5, 0.6, 0.6, 0.6, 0.59, 0.58, 0.7]:
        s.step(acc)
        lrs.append(s.lr)
    # two epochs without a better accuracy -> x0.6; again after two more
    assert lrs == pytest.approx([1e-4, 1e-4, 1e-4, 6e-5, 6e-5, 3.6e-5, 3.6e-5])


@pytest.mark.slow
@pytest.mark.subprocess
def test_cli_trains_and_writes_metrics_and_summary(tiny_cifar_dir, tmp_path):
    out = tmp_path / "cli"
    r = subprocess.run([sys.executable, "-m", "worker.finetune", "--model", "deit_tiny_patch16_224",
                        "--data-dir", str(tiny_cifar_dir), "--out", str(out), "--epochs", "2", "--batch-size", "64",
                        "--weights", "none", "--image-size", "32", "--val-limit", "40", "--device", "cpu"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = _rows(out)
    assert [x["epoch"] for x in rows] == [1, 2]
    for row in rows:
        assert {"epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds", "images_per_s"} <= set(row)
        assert 0 <= row["val_acc"] <= 1 and 0 <= row["train_acc"] <= 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["model"] == "deit_tiny_patch16_224" and summary["best_epoch"] in (1, 2)
    assert summary["trainable_params"] < summary["total_params"]
    assert "epoch 1 train" in r.stderr  # the progress bar


@pytest.mark.slow
@pytest.mark.subprocess
def test_cli_describe_and_list_models():
    r = subprocess.run([sys.executable, "-m", "worker.finetune", "--describe", "--model",
                        "deit_base_distilled_patch16_224"], capture_output=True, text=True, check=True)
    d = json.loads(r.stdout)
    assert d["trainable_params"] == 7_488_276 == d["paper_trainable_params"]
    assert d["trainable_modules"] == ["blocks.11", "norm", "heads.0", "heads.1"]
    r = subprocess.run([sys.executable, "-m", "worker.finetune", "--list-models"], capture_output=True, text=True,
                       check=True)
    models = json.loads(r.stdout)
    paper = [m for m in models if m["paper_name"]]
    assert len(paper) == 10 and {"id", "paper_name", "family", "paper_val_acc", "paper_trainable_params"} <= set(paper[0])


@pytest.mark.slow
@pytest.mark.subprocess
def test_cli_errors_are_clear(tmp_path):
    r = subprocess.run([sys.executable, "-m", "worker.finetune", "--data-dir", str(tmp_path), "--out",
                        str(tmp_path / "o"), "--weights", "none", "--model", "deit_tiny_patch16_224"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "CIFAR-10 not found" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "worker.finetune", "--describe", "--model", "no_such_net"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unknown model" in r.stderr


@pytest.mark.slow
@pytest.mark.subprocess
def test_cli_help_shows_every_option_with_its_default():
    from core.config import OPTIONS
    r = subprocess.run([sys.executable, "-m", "worker.finetune", "--help"], capture_output=True, text=True,
                       check=True, env={**__import__("os").environ, "COLUMNS": "200"})
    for o in OPTIONS:
        assert f"--{o.name.replace('_', '-')}" in r.stdout, o.name
    assert "(default: 0.0)" in r.stdout and "256 for swin_base_patch4_window7_224" in r.stdout


def test_cli_flags_derive_from_the_options():
    from worker.finetune import build_parser, config_from_args
    cfg = config_from_args(build_parser().parse_args(["--model", "swin_base_patch4_window7_224",
                                                      "--label-smoothing", "0.1", "--no-hflip",
                                                      "--train-per-class", "all"]))
    assert (cfg.batch_size, cfg.label_smoothing, cfg.hflip, cfg.train_per_class) == (256, 0.1, False, None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--label-smoothing", "0.9"])  # beyond the declared bound


def _stopped_after_first_epoch(cfg, paths):
    done = {"epoch": 0}
    s = run(cfg, paths, Callbacks(on_epoch=lambda r: done.update(epoch=r["epoch"]),
                                  should_stop=lambda: done["epoch"] >= 1))
    assert s["status"] == "stopped" and s["epochs_run"] == 1 and s["feature_cache"]["kept"]
    return s


def _used_states(cfg, epochs, n) -> torch.Tensor:
    """(image, flip state) pairs the given epochs train on."""
    used = torch.zeros(n, 2, dtype=torch.bool)
    for epoch in epochs:
        flips = engine._epoch_order(cfg, epoch, n)[1]
        used[torch.arange(n), flips.long() if flips is not None else 0] = True
    return used


@pytest.mark.parametrize("hflip", [False, True])
def test_a_resumed_run_reuses_the_feature_cache(tiny_cifar_dir, tmp_path, monkeypatch, hflip):
    """Issue 11, item 7: the key hashes the frozen part only, so the attempt that resumes (its block trained,
    restored from the checkpoint) finds the cache its first attempt kept and runs the frozen part only for the
    (image, flip state) pairs its epochs use that epoch 1 did not (issue 13: each epoch computes only its own)."""
    import numpy as np
    count = CountFrozen(monkeypatch)
    paths = Paths(tiny_cifar_dir, tmp_path / "o", cache_dir=tmp_path / "cache", cache_cap_bytes=1 << 30)
    cfg = TrainConfig(**TINY, epochs=3, hflip=hflip)
    first = _stopped_after_first_epoch(cfg, paths)
    filled = torch.from_numpy(np.load(tmp_path / "cache" / first["feature_cache"]["key"] / "train" / "filled.npy"))
    n = len(filled)
    assert torch.equal(filled, _used_states(cfg, [1], n)[:, :filled.shape[1]])  # what epoch 1 used, nothing else
    before = count.images
    second = run(cfg, paths)
    assert second["status"] == "succeeded" and second["epochs_run"] == 3
    assert second["feature_cache"]["reused"] and second["feature_cache"]["key"] == first["feature_cache"]["key"]
    new_pairs = int((_used_states(cfg, [2, 3], n) & ~_used_states(cfg, [1], n)).sum())
    assert new_pairs == 0 or hflip
    assert count.images - before == 1 + new_pairs  # the sizing probe, and what epochs 2-3 add
    uncached = TrainConfig(**TINY, epochs=3, hflip=hflip, feature_cache=False)  # and the numbers are the same
    run(uncached, Paths(tiny_cifar_dir, tmp_path / "plain"))
    _close(_rows(tmp_path / "plain"), _rows(tmp_path / "o"), 2e-2)


def test_each_epoch_computes_only_the_flip_states_it_uses(tiny_cifar_dir, tmp_path, monkeypatch):
    """Issue 13: the first curve point comes after one frozen pass per image. Epoch 1 runs the frozen part for
    exactly its own (image, flip state) pairs; over the run, each distinct pair used goes through it once."""
    count = CountFrozen(monkeypatch)
    cfg = TrainConfig(**TINY, epochs=4)
    n_train, n_val = 200, 60
    at_epoch = {}
    passes = []
    run(cfg, Paths(tiny_cifar_dir, tmp_path / "o"),
        Callbacks(on_epoch=lambda r: at_epoch.setdefault(r["epoch"], count.images),
                  on_progress=lambda p: p["phase"] == "features" and p["done"] == p["total"] and passes.append(
                      (p["epoch"], p["split"], p["total"]))))
    assert at_epoch[1] == 1 + n_train + n_val  # the probe, one pass per training image, the validation set
    used = _used_states(cfg, range(1, 5), n_train)
    assert count.images == 1 + int(used.sum()) + n_val < 1 + 2 * n_train + n_val
    added = [int((_used_states(cfg, [e], n_train) & ~_used_states(cfg, range(1, e), n_train)).sum())
             for e in range(2, 5)]
    assert passes == [(1, "train", n_train), (1, "val", n_val)] + [(e, "train", k) for e, k in zip(range(2, 5), added)
                                                                    if k]


def test_the_cache_key_hashes_the_frozen_part_only(tiny_cifar_dir):
    """Training (or restoring) the block changes nothing the cached features depend on; a frozen weight does."""
    from worker.engine.device import DevicePolicy
    from worker.engine.train import build_model
    from worker.engine.weights import fingerprint
    cfg = TrainConfig(**TINY)
    model, _prep = build_model(cfg, DevicePolicy.for_device(torch.device("cpu")))
    key = fingerprint(model.frozen_state())
    with torch.no_grad():
        model.block.mlp.fc1.weight.add_(1.0)
        model.backbone.norm.weight.mul_(2.0)
        model.heads[0][1].weight.add_(1.0)
    assert fingerprint(model.frozen_state()) == key
    with torch.no_grad():
        model.backbone.blocks[3].attn.qkv.weight.add_(1e-3)
    assert fingerprint(model.frozen_state()) != key
    assert not any(k.startswith(("blocks.11.", "norm.")) for k in model.frozen_state())


def test_the_paper_preset_is_fp32_with_tf32_and_ieee_and_bf16_are_named_options(tiny_cifar_dir, tmp_path):
    from core.config import preset
    paper = preset("paper")
    assert (paper.precision, paper.tf32, paper.image_size) == ("fp32", True, 224)  # TF32: issue 15's deviation
    seen = {}

    def during(_info):
        seen["matmul"], seen["conv"] = fp32_modes()
    outside = fp32_modes()
    s = run(TrainConfig(**{**TINY, "precision": "fp32"}, epochs=1, tf32=False), Paths(tiny_cifar_dir, tmp_path / "a"),
            Callbacks(on_info=during))
    assert s["precision"] == "fp32" and seen == {"matmul": "ieee", "conv": "ieee"}  # TF32 off, cuDNN's too
    s = run(TrainConfig(**{**TINY, "precision": "bf16"}, epochs=1, tf32=True), Paths(tiny_cifar_dir, tmp_path / "b"),
            Callbacks(on_info=during))
    assert s["precision"] == "bf16" and seen == {"matmul": "tf32", "conv": "tf32"}
    assert fp32_modes() == outside
