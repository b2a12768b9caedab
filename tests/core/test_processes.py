"""Whether a process is running, asked one way everywhere (core/processes.py): a process that exited and waits to
be reaped (a zombie) is gone, which the feature cache's scratch check used to count as running."""
import subprocess
import sys
import time

import pytest

from core.processes import alive
from tests.lab import wait_for

pytestmark = pytest.mark.subprocess
EXIT_S = 60  # a Python child starting and exiting on a busy machine


def test_a_running_process_is_alive_an_exited_one_is_not_even_before_it_is_reaped(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    assert alive(p.pid)
    p.stdin.close()  # it exits; unreaped, it is a zombie until wait()
    wait_for(lambda: not alive(p.pid), EXIT_S, "the child to be gone")
    assert p.poll() is not None  # gone while still a zombie, then reaped here


def test_a_scratch_folder_of_a_zombie_process_is_stale(tmp_path):
    """The cache removes the scratch folder of a process that will never write again, a zombie included."""
    from worker.engine import cachedir
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    wait_for(lambda: not alive(p.pid), EXIT_S, "the child to exit")
    folder = tmp_path / f".key.building.{cachedir.HOST}.{p.pid}.abcd1234"
    folder.mkdir()
    assert cachedir.scratch_stale(folder, time.time())
    p.wait()
