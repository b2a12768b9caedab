"""The Celery task: a thin layer that runs the engine and streams its progress to the backend.

Idempotent: a job delivered again (worker lost, requeued) resumes from its checkpoint, replays the finished
epochs it already has (the backend stores each epoch once) and never recomputes them.

Cancel: a watchdog thread asks the job's control queue every `control_poll_s` and sets the run's stop Event,
which the engine honours within a layer of the model in every phase (setup, downloads, the frozen pass,
training); the job ends `cancelled`. A force stop (a cancel with force=true, or a cancel the engine has not
honoured within `cancel_grace_s`) reports the job cancelled, leaves a marker in the job's folder and ends the
worker process: its supervisor (`make run`'s launcher, docker's restart policy) starts a fresh one. The task
message is acknowledged late, so it may come again: the marker makes that delivery end at once, untrained.
"""
from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
import traceback
from pathlib import Path

from core.broker import ControlChannel, EventPublisher, transport_options
from core.protocol import JOB_STATUS_OF_RUN, TASK_NAME, JobStatus, Phase, RunStatus, worker_label
from core.settings import get_settings

from .celery_app import app

log = logging.getLogger("blocklab.worker")

PROGRESS_EVERY_S = 0.5  # progress events at most this often, but always on a new phase and at its end
FORCED_EXIT_CODE = 75  # what a force-stopped worker exits with (EX_TEMPFAIL: its supervisor starts another)
FORCE_REPORT_S = 5.0  # a force stop waits this long for its `finished` event to reach the broker, then exits


def _local_weights(weights_dir: Path, model: str) -> str:
    from worker.engine.weights import WeightsError, local_file
    found = local_file(weights_dir, model)
    if found is not None:
        return str(found)
    raise WeightsError(f"weights: local, put {model}.safetensors (or {model}.pth) in {weights_dir}: neither is "
                       f"there. Or choose weights: hub or none.")


def teacher_dir(runs: Path, teacher: int | None) -> Path | None:
    """A teacher job's run folder: the lab keeps every job's files in `<runs>/job-<id>` (its predictions for a
    student are stored there too, for the next student)."""
    return None if teacher is None else runs / f"job-{teacher}"


def _injected_faults(job_id: int) -> set[str]:
    """Test-only fault injection: BLOCKLAB_TEST_FAULTS="oom:3,hang:7" simulates running out of memory in job 3
    and a wedged device in job 7 (training stops responding, to stops too): the reliability suite proves the
    failure message, the force stop, and that a worker goes on."""
    spec = os.environ.get("BLOCKLAB_TEST_FAULTS", "")
    return {kind for kind, _, jid in (x.partition(":") for x in spec.split(",") if x) if jid == str(job_id)}


def _friendly_error(e: BaseException) -> str:
    import torch

    from worker.engine.checkpoint import StorageError
    from worker.engine.data import DatasetError
    from worker.engine.distill import TeacherError
    from worker.engine.train import Diverged
    from worker.engine.weights import HubUnavailable, WeightsError
    if isinstance(e, HubUnavailable):  # the job page speaks the form's terms, not the command line's
        return e.web_text(get_settings().weights_path)
    if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower():
        # batch_size and image_size change what a run computes, so a resume refuses them: the advice is a new job.
        return (f"out of memory: {str(e).splitlines()[0]}. Start a new job with a lower batch_size or image_size "
                "(a resume keeps this job's settings, so it would run out of memory again), or resume it on a worker "
                "whose GPU has more memory.")
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST,
                                               errno.ENOTDIR, errno.ENOSPC):
        return (f"cannot write the job's files: {e}. Make the runs directory (BLOCKLAB_RUNS_DIR) writable "
                "for the worker, then resume the job.")
    if isinstance(e, DatasetError) and e.web:
        return e.web
    if isinstance(e, (DatasetError, WeightsError, Diverged, StorageError, TeacherError, ValueError)):
        return str(e)
    return f"{type(e).__name__}: {e}"


class _Heartbeat(threading.Thread):
    def __init__(self, send, interval: float):
        super().__init__(daemon=True, name="heartbeat")
        self.send, self.interval, self.stopped = send, interval, threading.Event()

    def run(self):
        while not self.stopped.wait(self.interval):
            self.send("heartbeat")


def force_marker(out_dir: Path, attempt: int) -> Path:
    """Left in the job's folder by a force stop: a redelivered message for this attempt must never train."""
    return out_dir / f".force-stopped.attempt{attempt}"


class _Watchdog(threading.Thread):
    """Listens for this attempt's cancel while the job runs, whatever the training thread is doing: sets the
    stop Event on a cancel, and force-stops (`on_force(reason)`) on force=true or when the engine has not
    honoured the cancel within `grace_s`. `honoured()` stands it down (the run is ending by itself)."""

    def __init__(self, control: ControlChannel, stop: threading.Event, poll_s: float, grace_s: float, on_force):
        super().__init__(daemon=True, name="cancel-watchdog")
        self.control, self.stop, self.poll_s, self.grace_s, self.on_force = control, stop, poll_s, grace_s, on_force
        self.done = threading.Event()
        self.heard_at: float | None = None  # monotonic time the cancel was heard

    def honoured(self) -> None:
        self.done.set()

    def run(self):
        while not self.done.wait(self.poll_s):
            if self.control.cancelled() and self.heard_at is None:
                self.heard_at = time.monotonic()
                log.info("cancel heard: stopping the run")
                self.stop.set()
            if self.done.is_set():
                return
            if self.control.force:
                return self.on_force("a force stop was asked for")
            if self.heard_at is not None and time.monotonic() - self.heard_at > self.grace_s:
                return self.on_force(f"the run did not stop within {self.grace_s:g} s of the cancel")


class _ProgressSender:
    """Engine progress -> `progress` events, throttled: at most every PROGRESS_EVERY_S, but always on a new phase
    (or split) and when a phase reaches its total."""

    def __init__(self, send, faults: set[str]):
        self.send, self.faults = send, faults
        self.last, self.key = float("-inf"), None

    def __call__(self, p: dict) -> None:
        if "oom" in self.faults and p["phase"] == Phase.TRAINING:
            import torch
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB "
                                              "(simulated by BLOCKLAB_TEST_FAULTS)")
        now = time.monotonic()
        key = (p["phase"], p.get("split"), p.get("epoch"))
        end = p["total"] is not None and p["done"] >= p["total"]
        if key != self.key or end or now - self.last >= PROGRESS_EVERY_S:
            self.last, self.key = now, key
            self.send(**p)
        if "hang" in self.faults and p["phase"] == Phase.TRAINING:  # after the event: the job is seen training
            log.warning("BLOCKLAB_TEST_FAULTS: this job's training hangs now")
            threading.Event().wait()  # never set: only a force stop ends this


@app.task(name=TASK_NAME, bind=True)
def run_job(self, job_id: int, attempt: int, config: dict) -> dict:
    s = get_settings()
    out_dir = s.runs_path / f"job-{job_id}"
    topts = transport_options(s.broker_url, s.visibility_timeout_s)
    events = EventPublisher(s.broker_url, job_id, attempt, topts)
    control = ControlChannel(s.broker_url, job_id, attempt, topts, min_interval_s=0)  # the watchdog paces it
    worker = worker_label(self.request.hostname or socket.gethostname(), os.getpid())
    send_lock = threading.Lock()  # one event at a time from the task, its heartbeat and its watchdog
    finished = threading.Event()  # a finished event went out: nothing else may send one

    def send(kind, **data):
        with send_lock:
            events.send(kind, **data)

    def finish(status, **data) -> None:
        with send_lock:
            if not finished.is_set():
                events.send("finished", status=status, **data)
                finished.set()

    def force_stop(reason: str) -> None:
        """From the watchdog: the job is reported cancelled and this process ends; nothing after it runs."""
        log.warning("job %s: force stop (%s): ending the worker process", job_id, reason)
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            force_marker(out_dir, attempt).write_text(json.dumps({"reason": reason, "at": time.time()}))
        except OSError as e:
            log.error("job %s: cannot leave the force-stop marker (%s)", job_id, e)
        note = threading.Thread(target=finish, daemon=True, args=(JobStatus.CANCELLED,), kwargs={
            "error": f"force-stopped: {reason}; the worker process was ended (its supervisor starts a fresh one). "
                     "Resume continues from the last finished epoch."})
        note.start()
        note.join(FORCE_REPORT_S)  # a broker that is away must not keep a stuck worker alive
        logging.shutdown()
        os._exit(FORCED_EXIT_CODE)

    stop = threading.Event()
    watchdog = _Watchdog(control, stop, s.control_poll_s, s.cancel_grace_s, force_stop)
    try:
        if force_marker(out_dir, attempt).exists():  # this attempt was force-stopped: its message came again
            log.warning("job %s attempt %s was force-stopped: not training it again", job_id, attempt)
            finish(JobStatus.CANCELLED, error="force-stopped (the task was delivered again after its worker "
                                              "was ended)")
            return {"status": JobStatus.CANCELLED}
        if control.cancelled():  # cancelled while queued: never starts
            finish(JobStatus.CANCELLED, error=None)
            return {"status": JobStatus.CANCELLED}
        watchdog.start()  # from here a cancel is heard while the rest of setup runs (imports take seconds)
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
        send("started", worker=worker, device=f"{device} ({name})")
        beat = _Heartbeat(send, s.heartbeat_interval_s)
        beat.start()
        try:
            ckpt = checkpoint.load(out_dir) if out_dir.exists() else None
            for row in (ckpt or {}).get("history", []):  # replay: the backend keeps each epoch once
                send("epoch", row=row)

            def on_stopped(summary):  # honoured: the job is cancelled now, even while the cache is being kept
                watchdog.honoured()
                if watchdog.heard_at is not None:
                    log.info("job %s attempt %s: cancel honoured %.3f s after it was heard (during %s)", job_id,
                             attempt, time.monotonic() - watchdog.heard_at, summary.get("stopped_in"))
                finish(JobStatus.CANCELLED, error=None, summary=summary)

            summary = run(cfg, Paths(s.data_path, out_dir, s.weights_path, s.cache_path,
                                     int(s.cache_cap_gb * 2**30), allow_download=s.allow_download,
                                     teacher_dir=teacher_dir(s.runs_path, cfg.teacher)),
                          Callbacks(on_progress=_ProgressSender(lambda **p: send("progress", **p),
                                                                _injected_faults(job_id)),
                                    on_epoch=lambda row: send("epoch", row=row),
                                    on_info=lambda info: send("info", info=info),
                                    on_stopped=on_stopped, stop=stop))
        finally:
            watchdog.honoured()
            beat.stopped.set()
            beat.join()
        status = JOB_STATUS_OF_RUN[RunStatus(summary["status"])]
        finish(status, error=None, summary=summary)
        return {"status": status}
    except Exception as e:  # noqa: BLE001 - every failure becomes a readable job error, the worker lives on
        watchdog.honoured()
        log.error("job %s failed:\n%s", job_id, traceback.format_exc())
        finish(JobStatus.FAILED, error=_friendly_error(e))
        return {"status": JobStatus.FAILED}
    finally:
        watchdog.honoured()
        if watchdog.is_alive():
            watchdog.join()  # it may be asking the control queue right now: let it finish before closing that
        control.close()
        events.close()
