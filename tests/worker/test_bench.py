"""The benchmark script runs end to end and prints its figures (speed itself is measured by running it, not here);
its one GPU command is rehearsed on the CPU at tiny sizes: the DeiT-B distilled paper preset, the engine's paper
and fast variants and the reference loop, every figure in one JSON file."""
import json
import subprocess
import sys


def _bench(*args, timeout=600):
    r = subprocess.run([sys.executable, "-m", "worker.bench", *args], capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_bench_prints_both_sides_and_their_ratio():
    r = _bench("--model", "deit_tiny_patch16_224", "--images", "64", "--val-images", "32", "--epochs", "2",
               "--ref-epochs", "1", "--image-size", "32", "--batch-size", "32", "--ref-workers", "0", "--device", "cpu")
    lines = r.stdout.splitlines()
    assert any(line.split()[:1] == ["1"] and line.endswith("x") for line in lines)
    res = json.loads(next(line for line in lines if line.startswith("JSON "))[5:])
    assert len(res["engine"]["images_per_s"]) == 2 and len(res["reference"]["images_per_s"]) == 1
    assert res["engine"]["peak_host_rss_mib"] > 0 and res["reference"]["peak_host_rss_mib"] > 0


def test_the_gpu_command_writes_every_figure_as_json(tmp_path):
    """The README's GPU command with tiny sizes (the model, preset and variants it names; 32 px, 64 images)."""
    out = tmp_path / "bench.json"
    _bench("--model", "deit_base_distilled_patch16_224", "--images", "64", "--val-images", "32", "--epochs", "2",
           "--ref-epochs", "1", "--image-size", "32", "--batch-size", "32", "--ref-workers", "0", "--device", "cpu",
           "--json", str(out))
    report = json.loads(out.read_text())
    sides = report["sides"]
    assert set(sides) == {"reference", "engine-paper", "engine-fast"}
    paper, fast, ref = sides["engine-paper"], sides["engine-fast"], sides["reference"]
    assert paper["config"]["model"] == "deit_base_distilled_patch16_224"
    assert (paper["precision"], paper["tf32"], paper["config"]["feature_cache"]) == ("fp32", False, True)
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


def test_unset_flags_take_the_models_paper_preset():
    from worker.bench import build_parser, engine_config
    args = build_parser().parse_args(["--model", "swin_base_patch4_window7_224"])
    cfg = engine_config(args)
    assert (cfg.batch_size, cfg.image_size, cfg.precision, cfg.tf32) == (256, 224, "fp32", False)
    fast = engine_config(args, "fast")
    assert (fast.precision, fast.tf32, fast.batch_size) == ("bf16", True, 256)
