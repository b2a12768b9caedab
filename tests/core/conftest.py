"""A real redis-server on loopback that a test can kill and start again on the same port."""
from __future__ import annotations

import os
import shutil

import pytest

from tests.lab import Proc, _ping, free_port, wait_for


class Redis:
    """redis-server persisting every write (as docker-compose.yml runs it), so a kill -9 keeps what it had."""

    def __init__(self, tmp):
        exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (.ci/run installs it)"
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = Proc("redis", [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                   "--appendonly", "yes", "--appendfsync", "always", "--dir", str(tmp)],
                         os.environ.copy(), tmp / "redis.log")

    def start(self):
        self.proc.start()
        wait_for(lambda: _ping(self.port), 30, "redis-server to answer")

    def kill(self):
        self.proc.kill9()


@pytest.fixture
def redis_server(tmp_path):
    r = Redis(tmp_path)
    r.start()
    yield r
    r.proc.stop()
