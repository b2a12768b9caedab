"""Faults for the reliability suite, installed into a real worker through the task's hooks (worker/queue/tasks.py
`install_hooks`), never shipped: a test's lab starts its worker with this module as the Celery app
(`celery -A tests.faults worker`, tests/lab.py does it when BLOCKLAB_TEST_FAULTS is set).

BLOCKLAB_TEST_FAULTS="oom:3,hang:7" simulates running out of memory in job 3 and a wedged device in job 7
(training stops responding, to stops too): the suite proves the failure message, the force stop, and that a
worker goes on.
"""
from __future__ import annotations

import logging
import os
import threading

from core.protocol import Phase
from worker.queue import tasks
from worker.queue.celery_app import app  # noqa: F401 - the app this module stands for (`-A tests.faults`)

log = logging.getLogger("blocklab.worker")


def faults_of(spec: str) -> dict[int, set[str]]:
    """"oom:3,hang:7" -> {3: {"oom"}, 7: {"hang"}}."""
    out: dict[int, set[str]] = {}
    for kind, _, job in (x.partition(":") for x in spec.split(",") if x):
        out.setdefault(int(job), set()).add(kind)
    return out


class FaultHooks(tasks.AttemptHooks):
    def __init__(self, faults: dict[int, set[str]]):
        self.faults = faults

    def before_progress(self, job_id, p):
        if "oom" in self.faults.get(job_id, ()) and p["phase"] == Phase.TRAINING:
            import torch
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB "
                                              "(simulated by BLOCKLAB_TEST_FAULTS)")

    def after_progress(self, job_id, p):
        if "hang" in self.faults.get(job_id, ()) and p["phase"] == Phase.TRAINING:  # the job is seen training
            log.warning("BLOCKLAB_TEST_FAULTS: this job's training hangs now")
            threading.Event().wait()  # never set: only a force stop ends this


tasks.install_hooks(FaultHooks(faults_of(os.environ.get("BLOCKLAB_TEST_FAULTS", ""))))
