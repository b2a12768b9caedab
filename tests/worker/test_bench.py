"""The benchmark script runs end to end and prints its figures (speed itself is measured by running it, not here):
side by side in one process by default (the plain loop and the engine interleaved, the raw forward limit, bf16 as a
named deviation where the device runs it natively), one process per side with --separate; its one GPU command is
rehearsed on the CPU at tiny sizes: the DeiT-B distilled paper preset, the engine's paper and fast variants and the
reference loop, every figure in one JSON file."""
import json
import subprocess
import sys

import pytest


def _bench(*args, timeout=600):
    r = subprocess.run([sys.executable, "-m", "worker.bench", *args], capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


@pytest.mark.subprocess
@pytest.mark.slow
def test_bench_prints_both_sides_and_their_ratio():
    r = _bench("--model", "deit_tiny_patch16_224", "--images", "64", "--val-images", "32", "--epochs", "2",
               "--ref-epochs", "1", "--image-size", "32", "--batch-size", "32", "--ref-workers", "0", "--device", "cpu",
               "--separate")
    lines = r.stdout.splitlines()
    assert any(line.split()[:1] == ["1"] and line.endswith("x") for line in lines)
    res = json.loads(next(line for line in lines if line.startswith("JSON "))[5:])
    assert len(res["engine"]["images_per_s"]) == 2 and len(res["reference"]["images_per_s"]) == 1
    assert res["engine"]["peak_host_rss_mib"] > 0 and res["reference"]["peak_host_rss_mib"] > 0


@pytest.mark.subprocess
@pytest.mark.slow
def test_the_gpu_command_writes_every_figure_as_json(tmp_path):
    """The README's GPU command with tiny sizes (the model, preset and variants it names; 32 px, 64 images)."""
    out = tmp_path / "bench.json"
    _bench("--model", "deit_base_distilled_patch16_224", "--images", "64", "--val-images", "32", "--epochs", "2",
           "--ref-epochs", "1", "--image-size", "32", "--batch-size", "32", "--ref-workers", "0", "--device", "cpu",
           "--separate", "--json", str(out))
    report = json.loads(out.read_text())
    sides = report["sides"]
    assert set(sides) == {"reference", "engine-paper", "engine-fast"}
    paper, fast, ref = sides["engine-paper"], sides["engine-fast"], sides["reference"]
    assert paper["config"]["model"] == "deit_base_distilled_patch16_224"
    assert (paper["precision"], paper["tf32"], paper["config"]["feature_cache"]) == ("fp32", True, True)
    assert (fast["precision"], fast["tf32"]) == ("bf16", True)
    for side in (paper, fast):
        assert len(side["images_per_s"]) == len(side["epoch_s"]) == len(side["train_s"]) == len(side["val_s"]) == 2
        assert side["feature_cache"] in ("device", "memory", "disk") and side["feature_cache_gib"] > 0
        assert side["peak_host_rss_mib"] > 0 and side["torch"] and side["device"] == "cpu"
    assert len(ref["images_per_s"]) == 1 and ref["config"]["batch_size"] == 32
    summary = report["summary"]
    assert summary["reference_train_s_for_all_epochs"] > 0
    for name in ("engine-paper", "engine-fast"):
        s = summary["engine"][name]
        assert len(s["ratio_per_epoch"]) == 2 and s["speedup_all_epochs_training"] > 0
        assert s["first_epoch_images_per_s"] > 0 and s["later_epochs_mean_images_per_s"] > 0
    assert report["command"][:3] == ["python", "-m", "worker.bench"] and report["epochs"] == 2


def test_side_by_side_interleaves_the_plain_loop_and_the_engine_with_the_forward_limit(tiny_cifar_dir, tmp_path,
                                                                                         monkeypatch, capsys):
    """The default mode in-process, on CIFAR-10 files (--data-dir): both sides' epochs, alternated (the plain loop's
    epoch N runs just before the engine's), the forward limit before and after, the summary's three figures, the
    chunk sizes the fill measured. bf16 is shown where the device runs it natively, with its accuracy effect, and
    said to be absent elsewhere: the capability is simulated both ways."""
    from worker import bench
    from worker.engine import train as engine
    order = []
    orig_epoch, orig_plain = engine._epoch, bench.PlainLoop.epoch
    monkeypatch.setattr(engine, "_epoch", lambda *a, **k: order.append(("engine", a[7])) or orig_epoch(*a, **k))
    monkeypatch.setattr(bench.PlainLoop, "epoch", lambda self, e: order.append(("plain", e)) or orig_plain(self, e))
    monkeypatch.setattr(bench, "bf16_native", lambda device: True)
    out = tmp_path / "side.json"
    assert bench.main(["--images", "40", "--val-images", "20", "--epochs", "2", "--image-size", "32", "--batch-size",
                       "16", "--device", "cpu", "--data-dir", str(tiny_cifar_dir), "--limit-images", "16",
                       "--limit-batch", "8", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert order[:4] == [("plain", 1), ("engine", 1), ("plain", 2), ("engine", 2)]
    assert order[4:] == [("engine", 1), ("engine", 2)]  # then bf16, engine only
    assert (report["images"], report["val_images"], report["epochs"]) == (40, 20, 2)
    plain, eng = report["plain"], report["engine"]
    assert len(plain["epoch_s"]) == len(eng["epoch_s"]) == len(eng["cpu_s"]) == 2 and eng["precision"] == "fp32"
    assert len(report["forward_limit"]["runs"]) == 2 and report["forward_limit"]["images_per_s"] > 0
    s = report["summary"]
    assert s["epoch1"]["speedup"] == round(plain["epoch_s"][0] / eng["epoch_s"][0], 2)
    assert s["last"]["epoch"] == 2 and s["whole"]["engine_s"] == eng["wall_s"] > 0
    assert eng["chunk_sizes"] and all(not c["fixed_shapes"] for c in eng["chunk_sizes"])  # the CPU: never padded
    b = report["bf16"]
    assert b["native"] and b["engine"]["precision"] == "bf16" and b["deviation"].startswith("precision bf16")
    assert b["accuracy_effect"] == round(b["best_val_acc"] - b["fp32_best_val_acc"], 4)
    text = capsys.readouterr().out
    assert "raw forward limit" in text and "whole" in text and "bf16 (deviation: precision bf16" in text
    bench.print_side_by_side({**report, "bf16": {"native": False}})
    assert "no native bf16" in capsys.readouterr().out


def test_a_device_without_native_bf16_runs_no_bf16_engine(monkeypatch):
    from worker import bench
    monkeypatch.setattr(bench, "bf16_native", lambda device: False)
    ran = []
    monkeypatch.setattr(bench, "PlainLoop", _NoPlain)
    monkeypatch.setattr(bench, "run_engine_beside", lambda args, cfg, ds, between=None: ran.append(cfg.precision)
                        or (between and between(1)) or _ENGINE)
    monkeypatch.setattr(bench, "_splits", lambda args, cfg: (None, [0] * 4, [0] * 2))
    r = bench.side_by_side(bench.build_parser().parse_args(["--epochs", "1", "--device", "cpu"]))
    assert ran == ["fp32"] and r["bf16"] == {"native": False}


_ENGINE = {"epoch_s": [1.0], "cpu_s": [1.0], "wall_s": 2.0, "precision": "fp32", "best_val_acc": 0.5}


class _NoPlain:
    setup_s = 0.5

    def __init__(self, *a):
        pass

    def epoch(self, epoch):
        return {"epoch_s": 3.0, "train_s": 2.0, "cpu_s": 3.0, "val_acc": 0.5}

    def forward_limit(self, batch, images):
        return {"batch": batch, "images": images, "seconds": 1.0, "images_per_s": float(images)}


def test_unset_flags_take_the_models_paper_preset():
    from worker.bench import build_parser, engine_config
    args = build_parser().parse_args(["--model", "swin_base_patch4_window7_224"])
    cfg = engine_config(args)
    assert (cfg.batch_size, cfg.image_size, cfg.precision, cfg.tf32) == (256, 224, "fp32", True)
    fast = engine_config(args, "fast")
    assert (fast.precision, fast.tf32, fast.batch_size) == ("bf16", True, 256)
    ieee = engine_config(args, "ieee")  # what TF32 buys: the paper preset with plain IEEE fp32
    assert (ieee.precision, ieee.tf32, ieee.batch_size) == ("fp32", False, 256)


TABLE1_FIGURES = ("frozen_images_per_s", "epoch1_s", "epoch1_images_per_s", "epoch1_vs_frozen", "later_epoch_s",
                  "first_point_s", "wall_s", "peak_host_rss_mib", "projected_paper_s")


@pytest.mark.subprocess
@pytest.mark.slow
def test_table1_mode_times_each_model_and_the_total(tmp_path):
    """--table1 on two small models (the ten paper models are the GPU script's, tools/gpu_check.sh): per
    model the frozen forward's speed, epoch 1 and the later epochs, peak memory, the first curve point and a
    projection to the paper's size; then the total. A model that cannot run is reported, and the rest still run."""
    out = tmp_path / "t1.json"
    r = subprocess.run([sys.executable, "-m", "worker.bench", "--table1", "--models",
                        "deit_tiny_patch16_224,tf_efficientnet_lite0,no_such_model", "--images", "32",
                        "--val-images", "16", "--epochs", "2", "--image-size", "32", "--batch-size", "16",
                        "--frozen-iters", "1", "--device", "cpu", "--json", str(out)],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 1, r.stderr[-3000:]  # one model failed
    report = json.loads(out.read_text())
    assert report["mode"] == "table1" and report["variant"] == "paper" and report["epochs"] == 2
    rows = {m["model"]: m for m in report["models"]}
    assert list(rows) == ["deit_tiny_patch16_224", "tf_efficientnet_lite0"] and list(report["failed"]) == [
        "no_such_model"]
    for row in rows.values():
        for k in TABLE1_FIGURES:
            assert isinstance(row[k], (int, float)) and row[k] > 0, (row["model"], k)
        assert (row["precision"], row["tf32"], row["batch_size"]) == ("fp32", True, 16)
        assert row["frozen_batch"] in (16, 32)  # the chunk size the fill measured and chose (32 images at most)
        assert len(row["epoch_s"]) == 2 and row["later_epoch_s"] == row["epoch_s"][1]
        assert row["first_point_s"] >= row["epoch1_s"] and row["wall_s"] >= sum(row["epoch_s"])
        assert row["projected_paper_s"] > row["wall_s"]  # 50,000 + 10,000 images and 20 epochs take longer
        assert "peak_gpu_reserved_mib" in row  # None on the CPU
    total = report["total"]
    assert total["engine_s"] == round(sum(m["wall_s"] for m in report["models"]), 1)
    assert total["elapsed_s"] >= total["engine_s"] and 0 < total["first_point_s"] <= total["elapsed_s"]
    printed = r.stdout.splitlines()
    assert any(x.startswith("deit_tiny_patch16_224 ") for x in printed) and any(
        x.startswith("no_such_model") and "FAILED" in x for x in printed)
    assert any(x.startswith("total: ") for x in printed)
    assert json.loads(next(x for x in printed if x.startswith("TABLE1 "))[7:])["total"] == total


def test_table1_defaults_to_the_papers_ten_models_in_the_paper_preset():
    from core import catalogue
    from worker.bench import build_parser, table1_models
    args = build_parser().parse_args(["--table1"])
    assert table1_models(args) == [r["model_id"] for r in catalogue.paper_table1()] and len(table1_models(args)) == 10
    assert table1_models(build_parser().parse_args(["--table1", "--models", "vgg19,densenet201"])) == [
        "vgg19", "densenet201"]


def test_the_projection_to_the_papers_size_is_linear_in_images_and_epochs():
    """Training scales with the training images, validation with the validation images, the later epochs' mean
    stands for the epochs not run; setup and per-epoch overhead as measured."""
    from worker.bench import projected_paper_s
    r = {"train_s": [2.0, 1.0, 1.0], "val_s": [0.5, 0.25, 0.25], "epoch_s": [2.5, 1.25, 1.25],
         "first_point_s": 3.5, "wall_s": 6.5}  # setup 1 s; 0.5 s a later epoch's checkpoint and the end
    # 5,000 + 1,000 images: x10 each; epoch 1 = 25 s, later = 12.5 + 0.25 s each, 19 of them
    assert projected_paper_s(r, 3, 5000, 1000) == round(1.0 + 25.0 + 19 * (12.5 + 0.25), 1)
    assert projected_paper_s(r, 3, 50000, 10000) == round(1.0 + 2.5 + 19 * (1.25 + 0.25), 1)
