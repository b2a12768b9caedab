"""backend/notebook_lab.py, the lab a notebook starts in the background (real processes): a second start on the
same home attaches to the running lab instead of starting another on the same database and GPU; a start
interrupted while it waits (the notebook's stop button) leaves no lab behind; stop ends the whole process group."""
import os

import pytest

from backend import notebook_lab
from backend.notebook_lab import NotebookLab

pytestmark = pytest.mark.system


@pytest.fixture
def env(monkeypatch):
    for k in [k for k in os.environ if k.startswith("BLOCKLAB_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _gone(pid: int) -> bool:
    return not notebook_lab._alive(pid)


def test_a_second_start_on_the_same_home_attaches_and_stop_ends_it(tmp_path, env):
    first = NotebookLab(tmp_path / "home", port=0, where="local").start()
    try:
        again = NotebookLab(tmp_path / "home", port=0, where="local").start()
        assert (again.pid, again.port) == (first.pid, first.port) and again.proc is None
        assert again.running
        assert again.stop() is None  # attached: the exit code belongs to the handle that started it
        assert _gone(first.pid) and not first.running
        assert not again.state_file.exists()
    finally:
        first.stop()


def test_an_interrupted_start_leaves_no_lab(tmp_path, env, monkeypatch):
    lab = NotebookLab(tmp_path / "home", port=0, where="local")

    def interrupted(port=None):
        raise KeyboardInterrupt  # the stop button while start() waits for the backend
    monkeypatch.setattr(lab, "_healthy", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lab.start()
    assert lab.pid is not None and _gone(lab.pid) and not lab.state_file.exists()
