"""Event streams and connections under abuse, against a real backend process: idle streams cost nothing, their
number is bounded, idle ones get keep-alive comments, and half-open requests are closed. Each test prints its
figure."""
from __future__ import annotations

import socket
import statistics
import time

import httpx
import pytest

from tests.lab import QUICK, wait_for

pytestmark = pytest.mark.system


def _open_stream(port: int, job_id: int) -> socket.socket:
    """An event-stream client that sends its request and never reads a byte."""
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET /api/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
              "Accept: text/event-stream\r\n\r\n".encode())
    return s


def _health_p95(lab, n: int = 60) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        assert lab.client.get("/api/health").status_code == 200
        times.append(time.perf_counter() - t0)
    return statistics.quantiles(times, n=20)[18]


def test_300_non_reading_streams_leave_the_backend_responsive(make_lab):
    lab = make_lab(BLOCKLAB_MAX_STREAMS="400", BLOCKLAB_MAX_STREAMS_PER_CLIENT="400")
    jid = lab.submit("waits", **QUICK)  # no worker: the job stays queued, its streams stay open
    idle = _health_p95(lab)
    socks = [_open_stream(lab.port, jid) for _ in range(300)]
    try:
        wait_for(lambda: _open_count(lab) >= 300, 60, "300 open streams")
        busy = _health_p95(lab)
        print(f"\n/api/health p95: {1000 * idle:.1f} ms alone, {1000 * busy:.1f} ms beside 300 non-reading streams")
        assert busy < 0.100
    finally:
        for s in socks:
            s.close()


def _open_count(lab) -> int:
    return lab.client.get("/api/health").json()["event_streams"]


def test_streams_beyond_the_limits_get_429(make_lab):
    lab = make_lab(BLOCKLAB_MAX_STREAMS="6", BLOCKLAB_MAX_STREAMS_PER_CLIENT="4")
    jid = lab.submit("waits", **QUICK)
    socks = [_open_stream(lab.port, jid) for _ in range(4)]
    try:
        wait_for(lambda: _open_count(lab) == 4, 30, "4 open streams")
        r = lab.client.get(f"/api/jobs/{jid}/events")
        assert r.status_code == 429 and "per client" in r.json()["detail"]
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: _open_count(lab) == 0, 30, "the streams' places given back")
    with httpx.Client(base_url=lab.url, timeout=10) as c, c.stream("GET", f"/api/jobs/{jid}/events") as r:
        assert r.status_code == 200  # places are given back when clients leave


def test_an_idle_stream_gets_keep_alive_comments(make_lab):
    lab = make_lab(BLOCKLAB_STREAM_KEEPALIVE_S="0.5")
    jid = lab.submit("waits", **QUICK)
    comments = 0
    with httpx.Client(base_url=lab.url, timeout=30) as c, c.stream("GET", f"/api/jobs/{jid}/events") as r:
        for line in r.iter_lines():
            comments += line.startswith(": keep-alive")
            if comments == 2:
                break
    assert comments == 2


def test_half_open_requests_are_closed(make_lab):
    lab = make_lab(BLOCKLAB_HEADER_TIMEOUT_S="1", BLOCKLAB_BODY_TIMEOUT_S="1")
    heads = []
    for _ in range(200):  # headers that never end
        s = socket.create_connection(("127.0.0.1", lab.port))
        s.sendall(f"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1:{lab.port}\r\n".encode())
        heads.append(s)
    body = socket.create_connection(("127.0.0.1", lab.port))  # a body that stops half-way
    body.sendall(f"POST /api/experiments HTTP/1.1\r\nHost: 127.0.0.1:{lab.port}\r\nContent-Type: application/json"
                 "\r\nContent-Length: 100\r\n\r\n{\"name\":".encode())
    t0 = time.monotonic()
    closed = 0
    for s in heads:
        s.settimeout(30)
        closed += s.recv(1024) == b""  # the server closed it
        s.close()
    body.settimeout(30)
    answer = body.recv(4096).decode()
    body.close()
    print(f"\n200 half-open requests closed in {time.monotonic() - t0:.1f} s; a stalled body got "
          f"{answer.split(chr(13))[0]!r}")
    assert closed == 200 and answer.startswith("HTTP/1.1 408")
    assert lab.client.get("/api/health").status_code == 200


def test_head_on_a_stream_answers_headers_and_gives_its_place_back(make_lab):
    """HEAD is GET without the body: on an event stream it answers at once and holds no stream open."""
    lab = make_lab()
    jid = lab.submit("waits", **QUICK)
    t0 = time.monotonic()
    r = lab.client.head(f"/api/jobs/{jid}/events")
    took = time.monotonic() - t0
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream") and r.content == b""
    wait_for(lambda: _open_count(lab) == 0, 10, "the HEAD's stream place given back")
    head = lab.client.head(f"/api/jobs/{jid}")
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
    print(f"\nHEAD on an event stream answered in {1000 * took:.0f} ms")
