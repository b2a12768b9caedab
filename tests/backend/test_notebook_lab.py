"""backend/notebook_lab.py, the lab a notebook starts in the background (real processes): a second start on the
same home attaches to the running lab instead of starting another on the same database and GPU; a start
interrupted while it waits (the notebook's stop button) leaves no lab behind; stop ends the whole process group."""
import os

import pytest

from backend.notebook_lab import NotebookLab
from core.processes import alive

pytestmark = pytest.mark.system


@pytest.fixture
def env(monkeypatch):
    for k in [k for k in os.environ if k.startswith("BLOCKLAB_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _gone(pid: int) -> bool:
    return not alive(pid)


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


@pytest.fixture
def answering_port():
    """A port where something that is not the lab answers /api/health with 200."""
    import http.server
    import threading

    class Ok(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}')

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()


def test_a_record_naming_a_stranger_is_ignored_and_the_stranger_never_signalled(tmp_path, env, answering_port):
    """Issue 25: a record naming any live pid and a port where anything answers was attached to, and stop() sent
    SIGTERM to that pid's process group."""
    import json
    import subprocess
    import sys
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        lab = NotebookLab(tmp_path / "home", port=0, where="local")
        lab.home.mkdir(parents=True)
        for record, why in (({"pid": stranger.pid, "port": answering_port}, "does not name"),
                            ({"pid": stranger.pid, "port": answering_port, "lab_id": "guessed"},
                             f"process {stranger.pid} is not BlockLab's supervisor")):
            lab.state_file.write_text(json.dumps(record))
            assert lab._recorded() is None
            assert lab.ignored.startswith(f"ignoring {lab.state_file}") and why in lab.ignored, lab.ignored
        lab.pid, lab.lab_id = stranger.pid, "guessed"  # as if attached: stop() checks again before it signals
        assert lab.stop() is None
        assert stranger.poll() is None, "stop() signalled a process that is not this home's lab"
    finally:
        stranger.kill()
        stranger.wait()


def test_pid_zero_is_never_attached_nor_signalled(tmp_path, env, answering_port):
    import json
    import subprocess
    import sys
    lab = NotebookLab(tmp_path / "home", port=0, where="local")
    lab.home.mkdir(parents=True)
    lab.state_file.write_text(json.dumps({"pid": 0, "port": answering_port, "lab_id": "x"}))
    assert lab._recorded() is None and "pid 0" in lab.ignored
    # stop() on pid 0 would signal the caller's own group: run it in a process with a session of its own.
    code = ("from backend.notebook_lab import NotebookLab\n"
            f"lab = NotebookLab({str(tmp_path / 'home')!r}, port=0, where='local')\n"
            "lab.pid, lab.lab_id = 0, 'x'\nlab.stop()\nprint('survived')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         start_new_session=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert "survived" in out.stdout, (out.returncode, out.stderr[-2000:])
