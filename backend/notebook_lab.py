"""The lab as a background process of a notebook kernel (Colab, Kaggle, Jupyter): `start()`, `show()`, `stop()`.

`make run` in a notebook: the same supervisor (backend/launch.py: the backend and one Celery worker on embedded
defaults, SQLite for the database and the broker), started as a child of the kernel in a session of its own, so
the notebook's stop button (SIGINT to the kernel) never reaches it. It lives while the kernel does: `stop()` ends
it (SIGTERM to its process group, then SIGKILL after launch's grace), and so does the kernel's exit (atexit, and
the launcher's children die with it: PR_SET_PDEATHSIG).

Where the notebook runs decides how its user reaches the page:
- Colab proxies a kernel port to the browser (`google.colab.output.serve_kernel_port_as_iframe`, and
  `google.colab.kernel.proxyPort` for a link of its own tab). The page is https on a per-session name under
  Colab's domains while the lab listens on plain http: those domains go into BLOCKLAB_ALLOWED_HOSTS and
  BLOCKLAB_TRUSTED_ORIGINS for this lab only (backend/app/security.py). Nothing else is opened: the lab still
  listens on loopback.
- Kaggle notebooks have no port proxy: the lab runs (its API answers in the kernel) and `show()` says to use the
  cells' own entry point, worker/notebook.py, for charts.
- Elsewhere (a local Jupyter) the page is on http://127.0.0.1:<port>, in an iframe and as a link.
Torch-free, like the rest of the backend: it starts processes and asks the health endpoint.

`<home>/notebook-lab.json` records the running lab (pid, port and a random lab id), so a cell run twice attaches
instead of starting a second lab on the same database. The file is only a claim: anyone who can write the home can
write it. It is believed only when its pid is a positive one outside the caller's process group, leads a process
group of its own running `backend.launch` with this home and this lab id in its environment (/proc), and its port
answers /api/health naming this home; anything else is ignored, and said so. `stop()` signals only a lab that
passes the same checks, or the one this handle started.
"""
from __future__ import annotations

import atexit
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from backend.launch import die_with_parent
from core.processes import alive
from core.settings import home_id

# Colab serves proxied kernel ports under these names (a name per session and port).
COLAB_DOMAINS = ("*.colab.dev", "*.colab.googleusercontent.com")  # *.colab.dev covers *.prod.colab.dev
# The pages that frame a kernel port: Colab's notebook and its output frames.
COLAB_FRAMES = ("colab.research.google.com", "*.googleusercontent.com", "*.colab.dev")
LAB_ID_VAR = "BLOCKLAB_LAB_ID"  # in the supervisor's environment: the secret its record names
STOP_GRACE_S = 15.0  # launch.py gives its children 8 s after SIGTERM: this covers it with room to spare


def platform() -> str:
    """"colab", "kaggle" or "local": which notebook platform this kernel runs on."""
    if "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG"):
        return "colab"
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") or os.environ.get("KAGGLE_URL_BASE"):
        return "kaggle"
    return "local"


def free_port(preferred: int = 8000) -> int:
    """`preferred` when nothing listens there on loopback, else a free port the system picks."""
    for port in (preferred, 0):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")


class NotebookLab:
    """One lab started from a notebook. `home`: its state folder (database, runs, data, weights, caches)."""

    def __init__(self, home: str | Path = "blocklab-home", port: int = 8000, env: dict | None = None,
                 where: str | None = None):
        self.home = Path(home).resolve()
        self.port = free_port(port)
        self.where = where or platform()
        self.extra_env = dict(env or {})
        self.proc: subprocess.Popen | None = None  # the supervisor this object started
        self.pid: int | None = None  # the supervisor's pid (and process group): started here or attached to
        self.lab_id: str | None = None  # a secret the lab carries in its environment: which process is ours
        self.ignored: str | None = None  # why a recorded lab was not believed (also printed)
        self.log = self.home / "lab.log"

    @property
    def url(self) -> str:
        """Where the kernel reaches the lab (the browser may need the platform's proxy: `show()`)."""
        return f"http://127.0.0.1:{self.port}"

    def environment(self) -> dict:
        """The lab's settings: the kernel's BLOCKLAB_* ones (a data folder set in a cell), this home and port, and
        on Colab its proxy's names."""
        env = dict(os.environ)
        env.update({"BLOCKLAB_HOME": str(self.home), "BLOCKLAB_PORT": str(self.port), "PYTHONUNBUFFERED": "1"})
        if self.lab_id:
            env[LAB_ID_VAR] = self.lab_id
        here = str(Path(__file__).resolve().parents[1])  # the checkout, when BlockLab runs without installing
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, env.get("PYTHONPATH")]))
        if self.where == "colab":
            env["BLOCKLAB_ALLOWED_HOSTS"] = json.dumps(list(COLAB_DOMAINS))
            env["BLOCKLAB_TRUSTED_ORIGINS"] = json.dumps([f"https://{d}" for d in COLAB_DOMAINS])
            env["BLOCKLAB_FRAME_ANCESTORS"] = json.dumps([f"https://{d}" for d in COLAB_FRAMES])
        elif self.where == "local":  # a local Jupyter's page frames the lab from another loopback port
            env["BLOCKLAB_FRAME_ANCESTORS"] = json.dumps(["http://localhost:*", "http://127.0.0.1:*"])
        env.update(self.extra_env)
        return env

    @property
    def state_file(self) -> Path:
        return self.home / "notebook-lab.json"  # the lab this home has: one per home, whatever cell started it

    def _recorded(self) -> tuple[int, int, str] | None:
        """(pid, port, lab id) of a lab already running on this home and answering (a cell run twice, a lost
        handle), once verified; None when there is none, or when the record does not hold (said so)."""
        try:
            rec = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            return self._ignore(f"it cannot be read ({type(e).__name__})")
        try:
            pid, port, lab_id = int(rec["pid"]), int(rec["port"]), str(rec["lab_id"])
        except (KeyError, TypeError, ValueError, AttributeError):
            return self._ignore("it does not name a pid, a port and a lab id")
        problem = self._not_our_lab(pid, lab_id)
        if problem is None and not self._healthy(port):
            problem = f"nothing on port {port} answers /api/health as this home's lab"
        return self._ignore(problem) if problem else (pid, port, lab_id)

    def _ignore(self, why: str) -> None:
        self.ignored = f"ignoring {self.state_file}: {why}"
        print(f"BlockLab: {self.ignored}", file=sys.stderr)
        return None

    def _not_our_lab(self, pid: int, lab_id: str | None) -> str | None:
        """Why process `pid` is not this home's lab (None when it is): see the module's docstring."""
        if pid <= 0:
            return f"pid {pid} is no process (signalling it would reach a whole group, perhaps the caller's)"
        if pid in (os.getpid(), os.getpgrp()):
            return f"pid {pid} is this kernel's own process or group"
        if not alive(pid):
            return f"process {pid} is not running"
        proc = Path(f"/proc/{pid}")
        try:
            pgrp = int(proc.joinpath("stat").read_text().rsplit(")", 1)[1].split()[2])
            cmdline = proc.joinpath("cmdline").read_bytes().split(b"\0")
            environ = dict(kv.split(b"=", 1) for kv in proc.joinpath("environ").read_bytes().split(b"\0") if b"=" in kv)
        except (OSError, IndexError, ValueError):
            return f"process {pid} cannot be inspected (another user's, or no /proc here)"
        if pgrp != pid:
            return f"process {pid} does not lead a process group of its own, as the lab's supervisor does"
        if b"backend.launch" not in cmdline:
            return f"process {pid} is not BlockLab's supervisor (backend.launch)"
        if environ.get(b"BLOCKLAB_HOME", b"").decode(errors="replace") != str(self.home):
            return f"process {pid} is a lab of another home"
        if not lab_id or environ.get(LAB_ID_VAR.encode(), b"").decode(errors="replace") != lab_id:
            return f"process {pid} does not carry the lab id the record names"
        return None

    def start(self, timeout_s: float = 180.0) -> NotebookLab:
        """Start the supervisor and wait until the backend answers /api/health (the first start migrates the
        database; a worker joins within its own start-up); or attach to the lab this home already runs, so a cell
        run twice never starts a second one on the same database and GPU. Raises RuntimeError with the log's end
        on failure; an interrupted start stops what it started."""
        if self.running:
            return self
        found = self._recorded()
        if found:
            self.pid, self.port, self.lab_id = found
            atexit.register(self.stop)
            return self
        self.home.mkdir(parents=True, exist_ok=True)
        self.lab_id = secrets.token_hex(16)
        with open(self.log, "ab") as fh:
            self.proc = subprocess.Popen([sys.executable, "-m", "backend.launch"], env=self.environment(),
                                         stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=str(Path(__file__).resolve().parents[1]), start_new_session=True,
                                         preexec_fn=die_with_parent)  # a killed kernel takes the lab with it
        self.pid = self.proc.pid
        self.state_file.write_text(json.dumps({"pid": self.pid, "port": self.port, "lab_id": self.lab_id}))
        atexit.register(self.stop)
        try:
            deadline = time.monotonic() + timeout_s
            while not self._healthy():
                if self.proc.poll() is not None:
                    raise RuntimeError(f"the lab exited ({self.proc.returncode}) before it answered; its log "
                                       f"({self.log}) ends:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the lab did not answer {self.url}/api/health within {timeout_s:.0f} s; "
                                       f"its log ({self.log}) ends:\n{self.log_tail()}")
                time.sleep(0.5)  # polling the health endpoint: the event we wait for is another process's socket
        except BaseException:  # a failure, or the stop button during the wait: no lab left without a handle
            self.stop()
            raise
        return self

    def wait_for_worker(self, timeout_s: float = 180.0) -> dict:
        """The worker's first self-report (its device, measured throughput, weights and data), once it has
        started and calibrated: what the plan's estimates rest on. Raises RuntimeError if none comes in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"the lab is not running; its log ({self.log}) ends:\n{self.log_tail()}")
            token = self.environment().get("BLOCKLAB_TOKEN")  # with one set, every API route but health needs it
            ask = urllib.request.Request(f"{self.url}/api/workers", headers={"X-BlockLab-Token": token} if token else {})
            try:
                with urllib.request.urlopen(ask, timeout=5) as r:
                    reports = json.load(r)
            except (OSError, ValueError):
                reports = []
            if reports:
                return reports[0]
            time.sleep(0.5)  # the report arrives through the backend: polling its API is how a client sees it
        raise RuntimeError(f"no worker reported within {timeout_s:.0f} s; the lab's log ({self.log}) ends:\n"
                           f"{self.log_tail()}")

    def _healthy(self, port: int | None = None) -> bool:
        """Does the port answer /api/health as this home's lab (its answer names the home: core.settings.home_id)?"""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port or self.port}/api/health", timeout=2) as r:
                return r.status == 200 and json.load(r).get("home") == home_id(self.home)
        except (OSError, ValueError, AttributeError):
            return False

    @property
    def running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid is not None and alive(self.pid)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def show(self, height: int = 800):
        """Show the web UI in the cell's output, the way the platform allows; returns the browser's address (or
        None where there is none)."""
        from IPython.display import HTML, IFrame, display
        if self.where == "colab":
            from google.colab import output  # type: ignore[import-not-found]
            output.serve_kernel_port_as_iframe(self.port, height=height)
            link = output.eval_js(f"google.colab.kernel.proxyPort({self.port})")
            display(HTML(f'<p>The lab in a tab of its own: <a href="{link}" target="_blank">{link}</a> (valid '
                         "while this notebook is open)</p>"))
            return link
        if self.where == "kaggle":
            display(HTML("<p>Kaggle notebooks have no port proxy: the lab runs in this kernel (its API answers on "
                         f"{self.url}), but its page cannot reach your browser. Use the cells' entry point "
                         "(<code>worker.notebook.run</code>) for live charts.</p>"))
            return None
        display(IFrame(self.url, width="100%", height=height))
        display(HTML(f'<p>The lab: <a href="{self.url}" target="_blank">{self.url}</a></p>'))
        return self.url

    def stop(self) -> int | None:
        """Stop the lab (a job in progress resumes from its last checkpoint on the next start); its exit code
        (None for a lab this object attached to: another handle started it)."""
        if self.pid is None:
            return None
        if self.proc is None and (problem := self._not_our_lab(self.pid, self.lab_id)):  # attached: check again
            print(f"BlockLab: not stopping process {self.pid}: {problem}", file=sys.stderr)
            atexit.unregister(self.stop)
            self.pid = None
            return None
        try:
            os.killpg(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        if not _wait_gone(self, STOP_GRACE_S):
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _wait_gone(self, 5)
        atexit.unregister(self.stop)
        try:
            if json.loads(self.state_file.read_text()).get("pid") == self.pid:
                self.state_file.unlink()
        except (OSError, ValueError):
            pass
        return self.proc.returncode if self.proc is not None else None


def _wait_gone(lab: NotebookLab, timeout_s: float) -> bool:
    """Wait for the supervisor to exit (reaped when we started it); True when it has."""
    if lab.proc is not None:
        try:
            lab.proc.wait(timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout_s
    while alive(lab.pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)  # not our child: nothing to wait on but its pid
    return True


def start(home: str | Path = "blocklab-home", port: int = 8000, **env: str) -> NotebookLab:
    """Start a lab in the background of this kernel (settings as BLOCKLAB_* keyword arguments) and wait for it."""
    return NotebookLab(home, port, env).start()
