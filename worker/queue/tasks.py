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
from enum import StrEnum
from pathlib import Path

from core.broker import ControlChannel, EventPublisher, transport_options
from core.errors import Terms
from core.protocol import JOB_STATUS_OF_RUN, TASK_NAME, JobStatus, RunStatus, worker_label
from core.settings import get_settings

from .celery_app import app

log = logging.getLogger("blocklab.worker")

PROGRESS_EVERY_S = 0.5  # progress events at most this often, but always on a new phase and at its end
FORCED_EXIT_CODE = 75  # what a force-stopped worker exits with (EX_TEMPFAIL: its supervisor starts another)
FORCE_REPORT_S = 5.0  # a force stop waits this long for its `finished` event to reach the broker, then exits


def teacher_dir(runs: Path, teacher: int | None) -> Path | None:
    """A teacher job's run folder: the lab keeps every job's files in `<runs>/job-<id>` (its predictions for a
    student are stored there too, for the next student)."""
    return None if teacher is None else runs / f"job-{teacher}"


class FormTerms(Terms):
    """The job page's terms for a fix (core/errors.py): the form's field (`choose weights: none`), a folder as the
    worker's setting (BLOCKLAB_WEIGHTS_DIR), a switch as the worker's environment variable; then resume the job."""
    FOLDERS = {"weights_dir": "the worker's weights folder, BLOCKLAB_WEIGHTS_DIR",
               "data_dir": "the worker's data folder, BLOCKLAB_DATA_DIR",
               "cache_dir": "the worker's feature cache, BLOCKLAB_CACHE_DIR"}
    SWITCHES = {"download": "allow the download (BLOCKLAB_ALLOW_DOWNLOAD=true for the worker)"}
    after = "then resume the job"

    def option(self, name, value):
        return self.SWITCHES.get(name) or f"choose {name}: {value}"

    def folder(self, name, path):
        return f"{path} ({self.FOLDERS[name]})" if name in self.FOLDERS else f"{path}"


FORM = FormTerms()


def job_error_text(e: BaseException) -> str:
    """A failed job's error as the job page shows it: what went wrong and the fix in the form's terms."""
    import torch

    from worker.engine import SetupError, user_error_text
    text = user_error_text(e, FORM)  # a user's error, a SetupError's fixes in the form's words; None: anything else
    if isinstance(e, SetupError):
        return text
    if isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in str(e).lower():
        # batch_size and image_size change what a run computes, so a resume refuses them: the advice is a new job.
        return (f"out of memory: {str(e).splitlines()[0]}. Start a new job with a lower batch_size or image_size "
                "(a resume keeps this job's settings, so it would run out of memory again), or resume it on a worker "
                "whose GPU has more memory.")
    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST,
                                               errno.ENOTDIR, errno.ENOSPC):
        return (f"cannot write the job's files: {e}. Make the runs directory (BLOCKLAB_RUNS_DIR) writable "
                "for the worker, then resume the job.")
    if text is not None:
        return text
    return str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"


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
    (or split) and when a phase reaches its total. `hooks` sees each report before and after (tests/faults.py)."""

    def __init__(self, send, hooks: AttemptHooks | None = None, job_id: int = 0):
        self.send, self.hooks, self.job_id = send, hooks or AttemptHooks(), job_id
        self.last, self.key = float("-inf"), None

    def __call__(self, p: dict) -> None:
        self.hooks.before_progress(self.job_id, p)
        now = time.monotonic()
        key = (p["phase"], p.get("split"), p.get("epoch"))
        end = p["total"] is not None and p["done"] >= p["total"]
        if key != self.key or end or now - self.last >= PROGRESS_EVERY_S:
            self.last, self.key = now, key
            self.send(**p)
        self.hooks.after_progress(self.job_id, p)


class AttemptHooks:
    """Where a test puts a fault into an attempt (tests/faults.py installs one with `install_hooks`): called with
    the job's id and each engine progress report, before it is sent and after. The shipped hooks do nothing."""

    def before_progress(self, job_id: int, p: dict) -> None:
        pass

    def after_progress(self, job_id: int, p: dict) -> None:
        pass


_hooks = AttemptHooks()


def install_hooks(hooks: AttemptHooks) -> None:
    """Replace the attempts' hooks (tests only: a fault hook)."""
    global _hooks
    _hooks = hooks


class AttemptState(StrEnum):
    """Where an attempt is. RECEIVED -> (REFUSED | SETTING_UP -> TRAINING) -> FINISHED; FORCE_STOPPING from
    SETTING_UP or TRAINING ends the process."""
    RECEIVED = "received"
    REFUSED = "refused"  # force-stopped before (its message came again) or cancelled while queued: never trains
    SETTING_UP = "setting_up"  # the watchdog listens; imports, config, device
    TRAINING = "training"  # `started` went out; the engine runs, the heartbeat beats
    FINISHED = "finished"  # the one `finished` event went out
    FORCE_STOPPING = "force_stopping"  # the watchdog ends the worker process


class Attempt:
    """One delivery of a job to this worker, from its message to its one `finished` event.

    Every event goes through `send` (the task's, the heartbeat's and the watchdog's threads alike), one at a
    time; once `finished` went out nothing else is sent. The watchdog listens for a cancel from SETTING_UP on and
    may force-stop (`force_stop`): the job is reported cancelled and the process ends (`os._exit`), so its
    supervisor starts a fresh worker.
    """

    def __init__(self, job_id: int, attempt: int, config: dict, worker: str, settings=None):
        self.job_id, self.attempt, self.config, self.worker = job_id, attempt, dict(config), worker
        self.s = s = settings or get_settings()
        self.out_dir = s.runs_path / f"job-{job_id}"
        topts = transport_options(s.broker_url, s.visibility_timeout_s)
        self.events = EventPublisher(s.broker_url, job_id, attempt, topts)
        self.control = ControlChannel(s.broker_url, job_id, attempt, topts, min_interval_s=0)  # watchdog paces it
        self.lock = threading.Lock()  # one event at a time; guards `state`
        self.state = AttemptState.RECEIVED
        self.stop = threading.Event()
        self.watchdog = _Watchdog(self.control, self.stop, s.control_poll_s, s.cancel_grace_s, self.force_stop)

    # -- the one sender ---------------------------------------------------------------------------------------
    def _to(self, state: AttemptState) -> None:
        log.debug("job %s attempt %s: %s -> %s", self.job_id, self.attempt, self.state.value, state.value)
        self.state = state

    def send(self, kind: str, **data) -> bool:
        """Send an event, unless the attempt has finished; `finished` itself moves it to FINISHED, once."""
        with self.lock:
            if self.state is AttemptState.FINISHED:
                return False
            self.events.send(kind, **data)
            if kind == "finished":
                self._to(AttemptState.FINISHED)
            return True

    def finish(self, status: JobStatus, **data) -> None:
        self.send("finished", status=status, **data)

    # -- the run ----------------------------------------------------------------------------------------------
    def run(self) -> dict:
        try:
            if force_marker(self.out_dir, self.attempt).exists():  # force-stopped: its message came again
                log.warning("job %s attempt %s was force-stopped: not training it again", self.job_id, self.attempt)
                return self._refuse(error="force-stopped (the task was delivered again after its worker was "
                                          "ended)")
            if self.control.cancelled():  # cancelled while queued: never starts
                return self._refuse(error=None)
            self._to(AttemptState.SETTING_UP)
            self.watchdog.start()  # from here a cancel is heard while the rest of setup runs (imports take seconds)
            status = self._train()
            return {"status": status}
        except Exception as e:  # noqa: BLE001 - every failure becomes a readable job error, the worker lives on
            self.watchdog.honoured()
            log.error("job %s failed:\n%s", self.job_id, traceback.format_exc())
            self.finish(JobStatus.FAILED, error=job_error_text(e))
            return {"status": JobStatus.FAILED}
        finally:
            self.watchdog.honoured()
            if self.watchdog.is_alive():
                self.watchdog.join()  # it may be asking the control queue right now: let it finish before closing
            self.control.close()
            self.events.close()

    def _refuse(self, error: str | None) -> dict:
        self._to(AttemptState.REFUSED)
        self.finish(JobStatus.CANCELLED, error=error)
        return {"status": JobStatus.CANCELLED}

    def _train(self) -> JobStatus:
        import torch

        from core.config import TrainConfig
        from worker.engine import Callbacks, assemble, lab_paths, resolve_device

        s = self.s
        cfg = TrainConfig.from_dict({**self.config, "device": s.device})
        run = assemble(cfg, lab_paths(s, self.out_dir, teacher_dir=teacher_dir(s.runs_path, cfg.teacher)))
        device = resolve_device(cfg.device)
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        self.send("started", worker=self.worker, device=f"{device} ({name})")
        self._to(AttemptState.TRAINING)
        beat = _Heartbeat(self.send, s.heartbeat_interval_s)
        beat.start()
        try:
            for row in (run.prior.history if run.prior else []):  # replay: the backend keeps each epoch once
                self.send("epoch", row=row)
            summary = run.run(Callbacks(
                on_progress=_ProgressSender(lambda **p: self.send("progress", **p), _hooks, self.job_id),
                on_epoch=lambda row: self.send("epoch", row=row),
                on_info=lambda info: self.send("info", info=info),
                on_stopped=self._stopped, stop=self.stop))
        finally:
            self.watchdog.honoured()
            beat.stopped.set()
            beat.join()
        status = JOB_STATUS_OF_RUN[RunStatus(summary["status"])]
        self.finish(status, error=None, summary=summary)
        return status

    def _stopped(self, summary: dict) -> None:
        """The engine honoured a stop: the job is cancelled now, even while the cache is being kept."""
        self.watchdog.honoured()
        if self.watchdog.heard_at is not None:
            log.info("job %s attempt %s: cancel honoured %.3f s after it was heard (during %s)", self.job_id,
                     self.attempt, time.monotonic() - self.watchdog.heard_at, summary.get("stopped_in"))
        self.finish(JobStatus.CANCELLED, error=None, summary=summary)

    def force_stop(self, reason: str) -> None:
        """From the watchdog: the job is reported cancelled and this process ends; nothing after it runs."""
        log.warning("job %s: force stop (%s): ending the worker process", self.job_id, reason)
        self._to(AttemptState.FORCE_STOPPING)
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            force_marker(self.out_dir, self.attempt).write_text(json.dumps({"reason": reason, "at": time.time()}))
        except OSError as e:
            log.error("job %s: cannot leave the force-stop marker (%s)", self.job_id, e)
        note = threading.Thread(target=self.finish, daemon=True, args=(JobStatus.CANCELLED,), kwargs={
            "error": f"force-stopped: {reason}; the worker process was ended (its supervisor starts a fresh one). "
                     "Resume continues from the last finished epoch."})
        note.start()
        note.join(FORCE_REPORT_S)  # a broker that is away must not keep a stuck worker alive
        logging.shutdown()
        os._exit(FORCED_EXIT_CODE)


@app.task(name=TASK_NAME, bind=True)
def run_job(self, job_id: int, attempt: int, config: dict) -> dict:
    worker = worker_label(self.request.hostname or socket.gethostname(), os.getpid())
    return Attempt(job_id, attempt, config, worker).run()
