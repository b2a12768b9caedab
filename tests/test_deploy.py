"""No Docker engine runs here: validate the compose file and that everything it names exists."""
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from worker.queue.gpu_worker import claim_gpu

ROOT = Path(__file__).resolve().parents[1]


def test_compose_services_build_from_files_that_exist():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"redis", "backend", "worker"} <= set(services)
    assert services["backend"]["ports"] == ["127.0.0.1:8000:8000"]
    for name in ("backend", "worker"):
        svc = services[name]
        dockerfile = ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]
        assert dockerfile.is_file(), dockerfile
        text = dockerfile.read_text()
        for src in re.findall(r"^COPY (\S+) ", text, re.M):
            assert (ROOT / src).exists(), f"{dockerfile.name} copies missing {src}"
        cmd = svc["command"]
        module = cmd[cmd.index("-m") + 1]
        if module == "uvicorn":
            module = cmd[cmd.index("uvicorn") + 1]  # the ASGI app it serves
        target = module.split(":")[0].replace(".", "/")
        assert (ROOT / f"{target}.py").is_file() or (ROOT / target).is_dir(), module
        assert svc["environment"]["REDIS_URL"].startswith("redis://redis:")
    gpu = services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    for vol in services["worker"]["volumes"]:
        assert vol.split(":")[0] in compose["volumes"]


def _compose_cli() -> list[str]:
    """`docker compose` (plugin) or `docker-compose`: both validate a file without an engine."""
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    assert legacy, "neither `docker compose` nor `docker-compose` is installed (.ci/run installs docker-compose)"
    return [legacy]


@pytest.mark.compose
def test_compose_config_validates(tmp_path):
    cli = _compose_cli()
    r = subprocess.run([*cli, "-f", str(ROOT / "docker-compose.yml"), "config", "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    broken = tmp_path / "docker-compose.yml"  # the check can fail: a service with an unknown key
    broken.write_text((ROOT / "docker-compose.yml").read_text().replace("    restart: unless-stopped\n",
                                                                         "    restartt: unless-stopped\n", 1))
    assert subprocess.run([*cli, "-f", str(broken), "config", "-q"], capture_output=True).returncode != 0


def test_each_worker_claims_a_different_gpu(tmp_path):
    a, fa = claim_gpu(tmp_path, 2)
    b, fb = claim_gpu(tmp_path, 2)
    c, fc = claim_gpu(tmp_path, 2)
    assert (a, b, c) == (0, 1, None)
    fa.close()  # a worker dies: its GPU is free again
    d, fd = claim_gpu(tmp_path, 2)
    assert d == 0
    fb.close()
    fd.close()
