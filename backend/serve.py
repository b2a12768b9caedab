"""Run the backend: `python -m backend.serve` (uvicorn on BLOCKLAB_HOST:BLOCKLAB_PORT, one process).

Connections are bounded in time and in number:
- Uvicorn closes an idle keep-alive connection after a few seconds, but a connection that sends part of its
  request headers and then stalls stays open for ever (1,000 of them are 1,000 open sockets). The protocol below
  closes a connection whose headers are not complete `header_timeout_s` after it opened or after its last
  response; a body not complete `body_timeout_s` after its request began is refused by security.py (408).
- At most `max_connections` are open at once: the next is answered 503, naming the limit, and closed.

Forwarded headers (X-Forwarded-For, X-Forwarded-Proto) are believed only from `trusted_proxies`. Uvicorn believes
them from loopback by default, so any local client could claim any address: take every per-client event-stream
place (the limit counts addresses) and write invented addresses into the access log.
"""
from __future__ import annotations

import asyncio
import json

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from core.settings import Settings, get_settings


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """Uvicorn's HTTP protocol with a deadline for request headers and a cap on open connections."""
    header_timeout_s = 10.0
    max_connections = 200

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_deadline: asyncio.TimerHandle | None = None
        self._refused = len(self.connections) >= self.max_connections  # before this one counts
        super().connection_made(transport)
        if self._refused:
            transport.write(_busy(self.max_connections))
            transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        if not self._refused:  # a refused connection's request is never read
            super().data_received(data)

    def _arm(self) -> None:
        self._disarm()
        self._header_deadline = self.loop.call_later(self.header_timeout_s, self._headers_too_late)

    def _disarm(self) -> None:
        if getattr(self, "_header_deadline", None) is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_too_late(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm()  # the next request on this connection gets as long

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def _busy(limit: int) -> bytes:
    body = json.dumps({"detail": f"the lab serves at most {limit} connections at once (BLOCKLAB_MAX_CONNECTIONS); "
                                 "try again when some have closed"}).encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"retry-after: 5\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))


def uvicorn_options(s: Settings) -> dict:
    """How uvicorn serves the lab: forwarded headers only from the configured proxies (none by default)."""
    trusted = [p.strip() for p in s.trusted_proxies if p.strip()]
    return {"host": s.host, "port": s.port, "http": HeaderTimeoutProtocol, "timeout_keep_alive": 5,
            "log_level": "info", "proxy_headers": bool(trusted), "forwarded_allow_ips": trusted or None}


def main() -> None:
    s = get_settings()
    HeaderTimeoutProtocol.header_timeout_s = s.header_timeout_s
    HeaderTimeoutProtocol.max_connections = s.max_connections
    uvicorn.run("backend.app.main:app", **uvicorn_options(s))


if __name__ == "__main__":
    main()
