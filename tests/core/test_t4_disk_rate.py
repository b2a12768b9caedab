"""A free T4's estimate for a run whose features go to a memory-mapped file: the disk read rate is assumed (and
the time a range over the assumed rates) until a worker on a T4 has measured its own; then it is that rate."""
import pytest

from core import estimate

DEIT_B = {"model": "deit_base_distilled_patch16_224"}  # 31 GiB of features: on disk under Colab's limits


def test_an_assumed_disk_rate_gives_a_range_and_a_measured_one_replaces_it():
    assumed = estimate.on_t4(DEIT_B)
    assert assumed["placement"]["where"] == "disk" and assumed["disk_read"] == "assumed"
    assert assumed["disk_bytes_per_s"] == estimate.T4["disk_bytes_per_s"]
    low, high = assumed["seconds_range"]
    assert low < assumed["seconds"] < high
    slow, fast = estimate.T4["disk_bytes_per_s_range"]
    assert high - low == pytest.approx(estimate.disk_read_s(DEIT_B, slow) - estimate.disk_read_s(DEIT_B, fast),
                                       abs=0.2)

    measured = estimate.on_t4(DEIT_B, disk_bytes_per_s=50e6)  # a quarter of the assumed rate
    assert measured["disk_read"] == "measured" and measured["seconds_range"] is None
    assert measured["disk_read_s"] == pytest.approx(4 * assumed["disk_read_s"], rel=1e-3)
    assert measured["seconds"] - measured["disk_read_s"] == pytest.approx(assumed["seconds"] - assumed["disk_read_s"],
                                                                          abs=0.2)


def test_a_run_without_a_disk_cache_has_no_disk_rate():
    small = estimate.on_t4({"model": "deit_tiny_patch16_224", "image_size": 112, "train_per_class": 100})
    assert small["placement"]["where"] != "disk"
    assert small["disk_read"] is None and small["seconds_range"] is None and small["disk_read_s"] is None
