"""Start one Celery worker bound to one GPU: `python -m worker.queue.gpu_worker`.

With `docker compose up --scale worker=N` every replica sees all GPUs; each claims a different one by taking an
exclusive lock on `<lock dir>/gpu<i>` (released by the kernel when the process dies), then exposes only that
GPU to the engine. Without GPUs it runs on the CPU.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from core.protocol import worker_command


def gpu_count() -> int:
    """GPUs on this machine, without initializing CUDA in this process."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) not in (None, ""):
        return len(os.environ["CUDA_VISIBLE_DEVICES"].split(","))
    if not shutil.which("nvidia-smi"):
        return 0
    out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True)
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def claim_gpu(lock_dir: Path, n: int):
    """Lock the first free GPU index; returns (index, open lock file) or (None, None) when all are taken."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        fh = open(lock_dir / f"gpu{i}", "a+")
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            continue
        fh.seek(0)
        fh.truncate()
        fh.write(f"{socket.gethostname()} pid {os.getpid()}\n")
        fh.flush()
        return i, fh
    return None, None


def main() -> int:
    n = gpu_count()
    env = os.environ.copy()
    name = f"cpu@{socket.gethostname()}"
    if n:
        visible = (env.get("CUDA_VISIBLE_DEVICES") or ",".join(map(str, range(n)))).split(",")
        idx, _lock = claim_gpu(Path(env.get("BLOCKLAB_GPU_LOCK_DIR", "/tmp/blocklab-gpu-locks")), n)
        if idx is None:
            print(f"worker: all {n} GPUs already have a worker; not starting another", file=sys.stderr)
            return 3
        env["CUDA_VISIBLE_DEVICES"] = visible[idx]
        name = f"gpu{visible[idx]}@{socket.gethostname()}"
        # The lock stays open in this process and is inherited by the worker below (no close-on-exec).
        os.set_inheritable(_lock.fileno(), True)
    cmd = worker_command(sys.executable, name)
    os.execvpe(cmd[0], cmd, env)  # the lock's file descriptor survives exec


if __name__ == "__main__":
    sys.exit(main())
