"""The tier rules can fail: planted tests that start a program unmarked, or run slowly unmarked, are failed by the
guard; `--tier fast` leaves out what a marker (written, or given by a fixture) sends to the full tier."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from tests.conftest import ROOT
from tests.tiers import SERIAL, SLOW_TIER, in_tier, needs_of, unloaded_s

PLANTED = '''
import subprocess, sys, time
import pytest

@pytest.fixture
def make_lab():  # the name alone puts a test in the system tier
    return None

def test_starts_python_unmarked():
    subprocess.run([sys.executable, "-c", "pass"], check=True)

@pytest.mark.subprocess
def test_starts_python_marked():
    subprocess.run([sys.executable, "-c", "pass"], check=True)

def _burn(cpu_s):
    start = time.process_time()
    while time.process_time() - start < cpu_s:
        pass

def test_slow_unmarked():
    _burn(0.3)  # the planted violation: more than the 0.05 s limit this run sets, however loaded the machine

@pytest.mark.slow
def test_slow_marked():
    _burn(0.3)

def test_uses_a_lab(make_lab):
    pass

def test_quick():
    pass
'''


def _pytest(tmp_path, *args):
    (tmp_path / "conftest.py").write_text("from tests.tiers import *  # noqa: F403\n"
                                          "from tests.tiers import pytest_runtest_call, pytest_runtest_makereport, "
                                          "pytest_runtest_protocol  # noqa: F401\n")
    (tmp_path / "test_planted.py").write_text(textwrap.dedent(PLANTED))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}  # a quick start
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-rA",
                        "--strict-markers", "-o", "fast_test_limit_s=0.05", *args], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    return r.returncode, r.stdout + r.stderr


@pytest.mark.subprocess
def test_the_guard_fails_unmarked_programs_and_slow_unmarked_tests_and_the_fast_tier_leaves_out_marked(tmp_path):
    code, out = _pytest(tmp_path, "--tier", "fast")
    assert code == 1, out
    assert "ERROR test_planted.py::test_starts_python_unmarked" in out and "@pytest.mark.subprocess" in out
    assert "ERROR test_planted.py::test_slow_unmarked" in out and "mark it @pytest.mark.slow" in out
    for ok in ("test_starts_python_marked", "test_quick"):
        assert f"PASSED test_planted.py::{ok}" in out, out
    assert "test_slow_marked" not in out and "test_uses_a_lab" not in out  # deselected: the full tier's
    assert "2 deselected" in out

    code, out = _pytest(tmp_path, "-k", "marked or lab")  # the full tier runs them; a marked slow test passes
    assert "PASSED test_planted.py::test_slow_marked" in out and "PASSED test_planted.py::test_uses_a_lab" in out
    assert "ERROR test_planted.py::test_slow_marked" not in out


@pytest.mark.subprocess
def test_an_unregistered_marker_is_refused(tmp_path):
    code, out = _pytest(tmp_path, "-k", "quick")
    assert code == 0, out
    (tmp_path / "test_typo.py").write_text("import pytest\n\n@pytest.mark.sloww\ndef test_x():\n    pass\n")
    code, out = _pytest(tmp_path, "test_typo.py")
    assert code != 0 and "'sloww' not found in `markers`" in out


@pytest.mark.parametrize("argv,needs", [
    (["/usr/bin/redis-server", "--port", "1"], {"redis"}),
    (["docker-compose", "-f", "x.yml", "config"], {"compose"}),
    (["mount", "-t", "tmpfs"], {"mount"}),
    ([sys.executable, "-m", "celery", "-A", "worker.queue.celery_app", "worker"], {"system"}),
    ([sys.executable, "-m", "backend.serve"], {"system"}),
    ([sys.executable, "-m", "worker.finetune", "--help"], set()),
])
def test_each_program_asks_for_its_marker(argv, needs):
    assert needs_of(argv) == {"subprocess"} | needs
    assert needs - {"subprocess"} <= set(SLOW_TIER)


def test_a_library_lookup_on_an_import_asks_for_nothing():
    """ctypes' find_library runs `ldconfig -p` when torch is first imported, platform.processor() `uname -p`: not
    programs the test starts."""
    assert needs_of(["/sbin/ldconfig", "-p"]) == needs_of(["uname", "-p"]) == set()


def test_the_full_tier_is_the_parallel_part_and_the_serial_part_and_the_fast_tier_is_inside_it():
    for names in [set(), {"subprocess"}, {"train"}, {"slow", "subprocess"}, {"system", "subprocess"},
                  {"browser", "system", "subprocess"}, {"redis", "subprocess"}, {"compose", "subprocess"}]:
        assert in_tier("parallel", names) != in_tier("serial", names) and in_tier("all", names)
        assert not in_tier("fast", names) or in_tier("parallel", names)
    assert set(SERIAL) <= set(SLOW_TIER) and in_tier("fast", {"subprocess"}) and not in_tier("fast", {"train"})


def test_on_a_loaded_machine_a_call_counts_its_cpu_time_or_its_share_of_the_wall_time():
    assert unloaded_s(3.0, 0.1, 1.0) == 3.0  # idle machine: the wall time, even for a test that only waits
    assert unloaded_s(40.0, 8.0, 7.0) == 8.0  # CPU-bound on a machine booked 7 times over: its CPU time
    assert unloaded_s(40.0, 0.5, 8.0) == 5.0  # waiting on a loaded machine: its share of the wall time


@pytest.mark.subprocess
def test_each_parallel_worker_computes_on_its_share_of_the_cores(tmp_path):
    """Two pytest-xdist workers each get their share of the cores for torch (tiers.share_cores, which the suite's
    conftest calls first), not every core each."""
    (tmp_path / "conftest.py").write_text("from tests.tiers import share_cores\nshare_cores()\n")
    (tmp_path / "test_threads.py").write_text(
        "import os\nimport torch\n\n\ndef test_threads():\n"
        "    share = max(1, (os.cpu_count() or 1) // int(os.environ['PYTEST_XDIST_WORKER_COUNT']))\n"
        "    assert torch.get_num_threads() == share, (torch.get_num_threads(), share)\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    env.update(PYTHONPATH=str(ROOT), PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "xdist", "-n", "2"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "1 passed" in r.stdout, r.stdout + r.stderr
