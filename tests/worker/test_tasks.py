"""The Celery task's own parts, without a broker: progress events throttled by time (never dropping a phase's
start or end), and the cancel watchdog (a cancel sets the run's stop Event; force or an unhonoured cancel
force-stops)."""
import threading

import pytest

from core.protocol import progress
from worker.queue import tasks
from worker.queue.tasks import _ProgressSender, _Watchdog


def test_progress_events_are_throttled_but_keep_every_phase_change_and_end(monkeypatch):
    clock = {"t": 100.0}
    monkeypatch.setattr(tasks.time, "monotonic", lambda: clock["t"])
    sent = []
    p = _ProgressSender(lambda **e: sent.append(e))
    p(progress("starting"))
    for done in range(1, 11):  # 10 feature chunks, 1/8 s apart
        clock["t"] += 0.125
        p(progress("features", done, 10, epoch=1, split="train"))
    clock["t"] += 0.0625
    p(progress("features", 0, 4, epoch=1, split="val"))  # another split: at once
    for done in range(1, 4):
        clock["t"] += 0.0625
        p(progress("training", done, 3, epoch=1))
    got = [(e["phase"], e["split"], e["done"]) for e in sent]
    assert got == [("starting", None, 0), ("features", "train", 1), ("features", "train", 5),
                   ("features", "train", 9), ("features", "train", 10), ("features", "val", 0), ("training", None, 1), ("training", None, 3)]
    assert "batch" not in sent[1] and sent[1]["total"] == 10  # the protocol's keys only


class FakeControl:
    def __init__(self):
        self.cancel, self.force, self.asked = False, False, threading.Event()

    def cancelled(self):
        self.asked.set()
        return self.cancel


def _watchdog(control, grace_s=30.0):
    stop, forced = threading.Event(), []
    done = threading.Event()
    w = _Watchdog(control, stop, poll_s=0.01, grace_s=grace_s,
                  on_force=lambda reason: (forced.append(reason), done.set()))
    w.start()
    return w, stop, forced, done


def test_a_cancel_sets_the_stop_event_and_an_honoured_one_is_never_forced():
    c = FakeControl()
    w, stop, forced, _ = _watchdog(c)
    assert c.asked.wait(5) and not stop.is_set()
    c.cancel = True
    assert stop.wait(5)
    w.honoured()
    w.join(5)
    assert not w.is_alive() and forced == []


@pytest.mark.parametrize("how", ["force", "grace"])
def test_force_or_a_cancel_not_honoured_within_the_grace_force_stops(how):
    c = FakeControl()
    c.cancel = True
    c.force = how == "force"
    w, stop, forced, done = _watchdog(c, grace_s=0.05 if how == "grace" else 30.0)
    assert done.wait(10) and stop.is_set()
    assert forced == (["a force stop was asked for"] if how == "force"
                      else ["the run did not stop within 0.05 s of the cancel"])
    w.join(5)


def test_a_force_stopped_attempt_delivered_again_never_trains(tmp_path, monkeypatch):
    """acks_late: the message of a force-stopped attempt may come back; the marker in the job's folder ends it at
    once, reported cancelled, before anything is imported or trained."""
    from core import settings
    monkeypatch.setenv("BLOCKLAB_HOME", str(tmp_path))
    settings.get_settings.cache_clear()
    out = settings.get_settings().runs_path / "job-7"
    out.mkdir(parents=True)
    tasks.force_marker(out, 2).write_text("{}")
    sent = []

    class Events:
        def __init__(self, *a, **kw):
            pass

        def send(self, kind, **data):
            sent.append((kind, data))

        def close(self):
            pass

    monkeypatch.setattr(tasks, "EventPublisher", Events)
    try:
        result = tasks.run_job.run(7, 2, {"model": "deit_tiny_patch16_224"})
    finally:
        settings.get_settings.cache_clear()
    assert result == {"status": "cancelled"}
    assert [k for k, _ in sent] == ["finished"] and sent[0][1]["status"] == "cancelled"
    assert "force-stopped" in sent[0][1]["error"]
    assert not (out / "metrics.jsonl").exists()


class _Recorder:
    def __init__(self, *a, **kw):
        self.sent = []

    def send(self, kind, **data):
        self.sent.append((kind, data))

    def close(self):
        pass


def test_an_attempt_sends_one_finished_event_and_nothing_after_it(tmp_path, monkeypatch):
    from core import settings
    monkeypatch.setenv("BLOCKLAB_HOME", str(tmp_path))
    settings.get_settings.cache_clear()
    monkeypatch.setattr(tasks, "EventPublisher", _Recorder)
    monkeypatch.setattr(tasks, "ControlChannel", lambda *a, **kw: FakeControl())
    try:
        a = tasks.Attempt(3, 1, {"model": "deit_tiny_patch16_224"}, "w1")
    finally:
        settings.get_settings.cache_clear()
    assert a.state is tasks.AttemptState.RECEIVED
    assert a.send("heartbeat") and a.state is tasks.AttemptState.RECEIVED
    a.finish(tasks.JobStatus.CANCELLED, error=None)
    a.finish(tasks.JobStatus.FAILED, error="late")  # a second end (the watchdog's, the task's) is not sent
    assert not a.send("heartbeat") and a.state is tasks.AttemptState.FINISHED
    assert [k for k, _ in a.events.sent] == ["heartbeat", "finished"]
    assert a.events.sent[1][1]["status"] == tasks.JobStatus.CANCELLED


def test_faults_come_only_through_hooks_a_test_installs(monkeypatch):
    """Shipped code holds no fault branch: a hook the test installs sees each progress report, before and after
    it is sent (tests/faults.py installs the reliability suite's)."""
    import inspect
    assert "BLOCKLAB_TEST_FAULTS" not in inspect.getsource(tasks) and not hasattr(tasks, "_injected_faults")
    seen = []

    class Hooks(tasks.AttemptHooks):
        def before_progress(self, job_id, p):
            seen.append(("before", job_id, p["phase"]))

        def after_progress(self, job_id, p):
            seen.append(("after", job_id, p["phase"]))
    sent = []
    _ProgressSender(lambda **e: sent.append(("sent", e["phase"])), Hooks(), job_id=5)(progress("training", 1, 3))
    assert seen == [("before", 5, "training"), ("after", 5, "training")] and sent == [("sent", "training")]
