"""The Celery task: a thin layer that runs the engine and streams its progress to the backend.

Idempotent: a job delivered again (worker lost, requeued) resumes from its checkpoint, replays the finished
epochs it already has (the backend stores each epoch once) and never recomputes them.
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import threading
import time
import traceback
from pathlib import Path

from core.broker import ControlChannel, EventPublisher, transport_options
from core.protocol import TASK_NAME, JobStatus
from core.settings import get_settings

from .celery_app import app

log = logging.getLogger("blocklab.worker")


def _local_weights(weights_dir: Path, model: str) -> str:
    for ext in (".safetensors", ".pth"):
        p = weights_dir / f"{model}{ext}"
        if p.is_file():
            return str(p)
    from worker.engine.weights import WeightsError
    raise WeightsError(f"weights=local but neither {model}.safetensors nor {model}.pth is in the server's "
                       f"weights directory {weights_dir}. Put the file there, or choose weights=hub or none.")


def _injected_faults(job_id: int) -> set[str]:
    """Test-only fault injection: BLOCKLAB_TEST_FAULTS="oom:3,oom:7" simulates running out of memory in
    jobs 3 and 7 (the reliability suite proves the failure message and that the worker lives on)."""
    spec = os.environ.get("BLOCKLAB_TEST_FAULTS", "")
    return {kind for kind, _, jid in (x.partition(":") for x in spec.split(",") if x) if jid == str(job_id)}


def _friendly_error(e: BaseException) -> str:
    import torch

    from worker.engine.checkpoint import StorageError
    from worker.engine.data import DatasetError
    from worker.engine.train import Diverged
    from worker.engine.weights import WeightsError
    if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower():
        return (f"out of memory: {str(e).splitlines()[0]}. Lower batch_size or image_size, or run on a GPU "
                "with more memory; the job can be resumed from its last finished epoch.")
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST,
                                               errno.ENOTDIR, errno.ENOSPC):
        return (f"cannot write the job's files: {e}. Make the runs directory (BLOCKLAB_RUNS_DIR) writable "
                "for the worker, then resume the job.")
    if isinstance(e, (DatasetError, WeightsError, Diverged, StorageError, ValueError)):
        return str(e)
    return f"{type(e).__name__}: {e}"


class _Heartbeat(threading.Thread):
    def __init__(self, events: EventPublisher, interval: float):
        super().__init__(daemon=True, name="heartbeat")
        self.events, self.interval, self.stopped = events, interval, threading.Event()
        self.lock = threading.Lock()

    def run(self):
        while not self.stopped.wait(self.interval):
            with self.lock:
                self.events.send("heartbeat")


@app.task(name=TASK_NAME, bind=True)
def run_job(self, job_id: int, attempt: int, config: dict) -> dict:
    s = get_settings()
    out_dir = s.runs_path / f"job-{job_id}"
    topts = transport_options(s.broker_url, s.visibility_timeout_s)
    events = EventPublisher(s.broker_url, job_id, attempt, topts)
    control = ControlChannel(s.broker_url, job_id, attempt, topts)
    worker = f"{self.request.hostname or socket.gethostname()} pid {os.getpid()}"
    try:
        if control.cancelled():  # cancelled while queued: never starts
            events.send("finished", status=JobStatus.CANCELLED, error=None)
            return {"status": JobStatus.CANCELLED}
        import torch

        from core.config import TrainConfig
        from worker.engine import checkpoint
        from worker.engine.train import Callbacks, Paths, resolve_device, run

        cfg_dict = dict(config)
        cfg_dict["device"] = s.device
        if cfg_dict.get("weights") == "local":
            cfg_dict["weights"] = _local_weights(s.weights_path, cfg_dict["model"])
        cfg = TrainConfig.from_dict(cfg_dict)
        device = resolve_device(cfg.device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        events.send("started", worker=worker, device=f"{device} ({name})")
        beat = _Heartbeat(events, s.heartbeat_interval_s)
        beat.start()
        try:
            ckpt = checkpoint.load(out_dir) if out_dir.exists() else None
            for row in (ckpt or {}).get("history", []):  # replay: the backend keeps each epoch once
                with beat.lock:
                    events.send("epoch", row=row)
            last = [0.0]
            faults = _injected_faults(job_id)

            def on_batch(e):
                if "oom" in faults:
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB "
                                                      "(simulated by BLOCKLAB_TEST_FAULTS)")
                now = time.monotonic()
                if now - last[0] >= 0.5 or e["batch"] == e["batches"]:
                    last[0] = now
                    with beat.lock:
                        events.send("progress", **e)

            def on_epoch(row):
                with beat.lock:
                    events.send("epoch", row=row)

            def on_info(info):
                with beat.lock:
                    events.send("info", info=info)

            summary = run(cfg, Paths(s.data_path, out_dir, s.weights_path, s.cache_path,
                                     int(s.cache_cap_gb * 2**30), allow_download=s.allow_download),
                          Callbacks(on_batch=on_batch, on_epoch=on_epoch, should_stop=control.cancelled,
                                    on_info=on_info))
        finally:
            beat.stopped.set()
            beat.join()
        status = JobStatus.CANCELLED if summary["status"] == "stopped" else JobStatus.SUCCEEDED
        events.send("finished", status=status, error=None, summary=summary)
        return {"status": status}
    except Exception as e:  # noqa: BLE001 - every failure becomes a readable job error, the worker lives on
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        events.send("finished", status=JobStatus.FAILED, error=_friendly_error(e))
        return {"status": JobStatus.FAILED}
    finally:
        control.close()
        events.close()
