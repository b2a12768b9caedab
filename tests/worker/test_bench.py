"""The benchmark script runs end to end and prints its figures (speed itself is measured by running it, not here)."""
import json
import subprocess
import sys


def test_bench_prints_both_sides_and_their_ratio():
    r = subprocess.run([sys.executable, "-m", "worker.bench", "--model", "deit_tiny_patch16_224", "--images", "64",
                        "--val-images", "32", "--epochs", "2", "--ref-epochs", "1", "--image-size", "32",
                        "--batch-size", "32", "--ref-workers", "0", "--device", "cpu"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = r.stdout.splitlines()
    assert any(line.split()[:1] == ["1"] and line.endswith("x") for line in lines)
    res = json.loads(next(line for line in lines if line.startswith("JSON "))[5:])
    assert len(res["engine"]["images_per_s"]) == 2 and len(res["reference"]["images_per_s"]) == 1
    assert res["engine"]["peak_host_rss_mib"] > 0 and res["reference"]["peak_host_rss_mib"] > 0
