"""A stand-in for the Hugging Face hub on 127.0.0.1 (tests never reach the internet): serves weight files the way
`hf_hub_download` fetches them (HEAD for metadata, then GET with optional Range), at a chosen rate, so a test can
watch download progress and cancel mid-download."""
from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def deit_tiny_weights(seed: int = 0) -> bytes:
    """A real state_dict of deit_tiny_patch16_224 (random init, seeded) as safetensors bytes."""
    import timm
    import torch
    from safetensors.torch import save

    torch.manual_seed(seed)
    sd = timm.create_model("deit_tiny_patch16_224", pretrained=False).state_dict()
    return save({k: v.contiguous() for k, v in sd.items()})


class FakeHub:
    """`files`: {"<repo id>/<filename>": bytes}; `rate`: bytes per second of every GET (None: as fast as it goes)."""

    def __init__(self, files: dict[str, bytes], rate: float | None = None, chunk: int = 64 << 10):
        self.files, self.rate, self.chunk = files, rate, chunk
        self.gets: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _file(self):
                repo_file = self.path.split("?")[0].lstrip("/").replace("/resolve/main/", "/", 1)
                return repo_file, hub.files.get(repo_file)

            def _head(self, body: bytes, length: int, status: int = 200):
                self.send_response(status)
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()}"')
                self.send_header("Content-Length", str(length))
                self.end_headers()

            def _missing(self):
                self.send_response(404)
                self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("X-Error-Message", "Entry not found")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_HEAD(self):
                _, body = self._file()
                if body is None:
                    return self._missing()
                self._head(body, len(body))

            def do_GET(self):
                name, body = self._file()
                if body is None:
                    return self._missing()
                hub.gets.append(name)
                start = 0
                rng = self.headers.get("Range", "")
                if rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0] or 0)
                self._head(body, len(body) - start, 206 if start else 200)
                t0 = time.monotonic()
                sent = 0
                try:
                    for i in range(start, len(body), hub.chunk):
                        part = body[i:i + hub.chunk]
                        self.wfile.write(part)
                        sent += len(part)
                        if hub.rate:
                            ahead = sent / hub.rate - (time.monotonic() - t0)
                            if ahead > 0:
                                time.sleep(ahead)  # the rate limit of a slow link (the server's, not a test's wait)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (a cancelled download)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def serve_bytes(blob: bytes, name: str):
    """One file on 127.0.0.1 (a dataset mirror): yields (its URL, the paths GET asked for)."""
    gets: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            gets.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(blob)))
            self.end_headers()
            self.wfile.write(blob)

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}/{name}", gets
    finally:
        srv.shutdown()
        srv.server_close()


@contextlib.contextmanager
def unreachable_hub(how: str):
    """A hub address on 127.0.0.1 that gives no answer: "refused" (nothing listens: a machine offline, a firewall
    that rejects) or "silent" (the connection is taken, nothing is ever said: a firewall that drops, a dead proxy).
    Yields its URL, for HF_ENDPOINT."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if how == "refused":
        sock.close()
    else:
        sock.listen(16)  # the kernel completes connections into the backlog; nobody accepts or answers
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        sock.close()
