"""Run-time estimates: the FLOPs file covers the catalogue and matches the real models, and the arithmetic counts
the frozen part once per image and used flip state and the block three times per training image per epoch."""
import pytest

from core import catalogue, estimate
from core.config import DRY_RUN, preset


def test_the_flops_file_covers_every_catalogue_model_at_every_stored_size():
    table = estimate.flops_table()
    assert set(table) == set(catalogue.CATALOGUE)
    for model, sizes in table.items():
        assert set(sizes) == {224, 112}, model
        for size, v in sizes.items():
            assert v["frozen"] > 0 and v["block"] > 0 and v["cacheable"], (model, size)
            assert v["frozen"] > v["block"], (model, size)  # a single block is the small part


def test_one_entry_recomputed_from_the_real_model():
    """The generator's measurement, run again on the real timm architecture, gives the stored numbers."""
    pytest.importorskip("torch")
    from tools.gen_flops import measure
    got = measure("deit_tiny_patch16_224", 112)
    stored = estimate.flops_table()["deit_tiny_patch16_224"][112]
    assert got["frozen"] == pytest.approx(stored["frozen"], rel=1e-6)
    assert got["block"] == pytest.approx(stored["block"], rel=1e-6)


def test_known_order_of_magnitude():
    """DeiT-B at 224 is about 17.6 GMACs (its paper), 35 GFLOPs at 2 per multiply-add: the frozen part is eleven
    of its twelve blocks. The trainable last block computes only the class token's rows (split.py), so its work is
    about the keys and values of all 197 tokens: 2 x 2 x 197 x 768^2 FLOPs."""
    per = estimate.gflops_per_image("deit_base_patch16_224", 224)
    assert per["frozen"] == pytest.approx(35.1 * 11 / 12, rel=0.1)
    assert per["block"] == pytest.approx(4 * 197 * 768**2 / 1e9, rel=0.1)


def test_other_sizes_scale_with_the_pixel_count_from_the_nearest_stored_size():
    at224 = estimate.gflops_per_image("vgg19", 224)
    assert estimate.gflops_per_image("vgg19", 448)["frozen"] == pytest.approx(4 * at224["frozen"])
    at112 = estimate.gflops_per_image("vgg19", 112)
    assert estimate.gflops_per_image("vgg19", 56)["block"] == pytest.approx(at112["block"] / 4)
    native = estimate.gflops_per_image("dm_nfnet_f6", None)  # None: the weights' own size, 448
    assert native["frozen"] == pytest.approx(4 * estimate.gflops_per_image("dm_nfnet_f6", 224)["frozen"])


def test_work_of_the_paper_run():
    cfg = preset("paper", model="deit_base_distilled_patch16_224").to_dict()
    per = estimate.gflops_per_image(cfg["model"], 224)
    w = estimate.work(cfg)
    states = 2 * (1 - 0.5 ** 20)
    assert w["train_images"] == 50_000 and w["val_images"] == 10_000
    assert w["frozen_gflop"] == pytest.approx(per["frozen"] * (50_000 * states + 10_000))
    assert w["train_gflop"] == pytest.approx(20 * per["block"] * (3 * 50_000 + 10_000))


def test_no_flip_means_one_state_and_no_cache_means_the_frozen_part_every_epoch():
    base = preset("paper", model="deit_tiny_patch16_224", epochs=3).to_dict()
    per = estimate.gflops_per_image("deit_tiny_patch16_224", 224)
    assert estimate.work({**base, "hflip": False})["frozen_gflop"] == pytest.approx(per["frozen"] * 60_000)
    assert estimate.flip_states(1, True) == 1.0 and estimate.flip_states(2, True) == 1.5
    assert estimate.work({**base, "feature_cache": False})["frozen_gflop"] == pytest.approx(
        per["frozen"] * 3 * 60_000)


def test_seconds_divide_work_by_throughput():
    cfg = {**preset("paper", model="resnet152").to_dict(), **DRY_RUN}
    w = estimate.work(cfg)
    s = estimate.seconds(cfg, 100.0)
    assert s["frozen_s"] == pytest.approx(w["frozen_gflop"] / 100, abs=0.1)
    assert s["train_s"] == pytest.approx(w["train_gflop"] / 100, abs=0.1)
    assert s["total_s"] == pytest.approx((w["frozen_gflop"] + w["train_gflop"]) / 100, abs=0.2)
    assert estimate.seconds(cfg, None)["total_s"] is None
    e = estimate.estimate(cfg, None)
    assert e["this_device_s"] is None and e["reference_s"] > 0


def test_a_runs_measured_rate_predicts_its_own_time():
    """A job's effective GFLOP/s (its work over its time, for the images it really had), fed back, predicts that
    job's time: the refinement is consistent with the estimate."""
    cfg = {**preset("paper", model="deit_tiny_patch16_224").to_dict(), "epochs": 3, "image_size": 32}
    g = estimate.run_gflops(cfg, train_images=200, val_images=40, epochs=3, seconds_=12.5)
    same = {**cfg, "train_per_class": 20, "val_limit": 40}
    assert estimate.seconds(same, g)["total_s"] == pytest.approx(12.5, abs=0.1)


def test_weights_size_from_the_parameter_count():
    assert estimate.weights_mb("deit_base_patch16_224") == round(85_998_090 * 4 / 2**20)


def test_depth_moves_work_between_the_frozen_part_and_training():
    """trainable_blocks: the head alone trains nothing heavy, more blocks train more and cache less, all trains
    everything every epoch; the forward work in all stays the model's."""
    base = {**preset("paper", model="deit_base_patch16_224").to_dict(), "epochs": 3}
    per = estimate.gflops_per_image("deit_base_patch16_224", 224)
    total = per["frozen"] + per["block"]
    split = {k: estimate.at_depth(per, "deit_base_patch16_224", k) for k in (0, 1, 2, 12, None)}
    assert split[1] == per and split[0]["block"] == 0
    assert split[0]["block"] < split[1]["block"] < split[2]["block"] < split[12]["block"] == split[None]["block"]
    assert all(s["frozen"] + s["block"] == pytest.approx(total) for s in split.values())
    w = {k: estimate.work({**base, "trainable_blocks": k}) for k in (0, 1, 2, None)}
    assert w[0]["train_gflop"] == 0 < w[1]["train_gflop"] < w[2]["train_gflop"] < w[None]["train_gflop"]
    assert w[None]["frozen_gflop"] == 0


def test_cifar100_counts_its_images_per_class_of_100():
    cfg = {**preset("paper", dataset="cifar100").to_dict(), "train_per_class": 20}
    assert estimate.image_counts(cfg)[0] == 2000
    assert estimate.image_counts({**cfg, "train_per_class": 5000})[0] == 50_000


def test_auto_runs_bf16_only_where_the_worker_runs_it_natively():
    from core.config import runs_in
    assert runs_in("auto", bf16_native=True) == "bf16" and runs_in("auto", bf16_native=False) == "fp32"
    assert runs_in("fp16", bf16_native=True) == "fp16" and runs_in("fp32", True) == "fp32"


def test_only_jobs_of_the_runs_own_precision_time_it():
    """A bf16 job of the model (about three times the fp32 rate on a CPU with AMX) never times an fp32 run of it,
    nor an fp32 job a bf16 run (unless scaled by the family's bf16 speed-up, and then as a range)."""
    cfg = preset("paper", model="deit_tiny_patch16_224").to_dict()
    gains = {"transformer": 3.0, "cnn": 1.5}
    size = cfg["image_size"]
    bf16_job = {estimate.measured_key("deit_tiny_patch16_224", size, "bf16"): 60.0}
    assert estimate.measured_key("deit_tiny_patch16_224", 224, "bf16") == "deit_tiny_patch16_224@224@bf16"
    assert estimate.measured_key("deit_tiny_patch16_224", 224) == "deit_tiny_patch16_224@224"
    fp32 = estimate.rate(cfg, 10.0, bf16_job, bf16_speedup=gains)
    assert fp32["basis"] == "benchmark" and fp32["gflops"] == 10.0 and fp32["precision"] == "fp32"
    bf16 = estimate.rate({**cfg, "precision": "bf16"}, 10.0, bf16_job, bf16_speedup=gains)
    assert bf16["basis"] == "measured" and bf16["gflops"] == 60.0 and bf16["span"] is None
    # Only an fp32 job: the bf16 run is its rate times the family's speed-up, a range up to a little slower.
    only_fp32 = {estimate.measured_key("deit_tiny_patch16_224", 112): 20.0}  # another size: scaled from it
    scaled = estimate.rate({**cfg, "precision": "bf16"}, 10.0, only_fp32, bf16_speedup=gains)
    assert scaled["basis"] == "fp32 scaled" and scaled["gflops"] == 60.0 and scaled["speedup"] == 3.0
    assert scaled["span"] == (estimate.BF16_SPAN[0], 3.0 * estimate.BF16_SPAN[1])
    e = estimate.estimate(cfg, scaled["gflops"], calibrated=False, span=scaled["span"])
    t = e["this_device_s"]
    assert e["range_s"] == [pytest.approx(t * estimate.BF16_SPAN[0], abs=0.1), pytest.approx(3.3 * t, abs=0.2)]
    # Nothing measured: the fp32 calibration times the family's speed-up, within both ranges' width.
    bench = estimate.rate({**cfg, "model": "densenet201", "precision": "bf16"}, 10.0, {}, bf16_speedup=gains)
    assert bench["basis"] == "benchmark" and bench["gflops"] == 15.0 and bench["speedup"] == 1.5
    low, high = estimate.UNCALIBRATED_SPAN
    assert bench["span"] == (low * estimate.BF16_SPAN[0], high * 1.5 * estimate.BF16_SPAN[1])
    # Without bf16 speed-ups (no native bf16), auto is fp32 and fp32 jobs time it.
    assert estimate.rate({**cfg, "precision": "auto"}, 10.0, only_fp32)["basis"] == "scaled"
