"""Run the backend: `python -m backend.serve` (uvicorn on BLOCKLAB_HOST:BLOCKLAB_PORT, one process).

Uvicorn closes an idle keep-alive connection after a few seconds, but a connection that sends part of its
request headers and then stalls stays open for ever (1,000 of them are 1,000 open sockets). The protocol below
closes a connection whose headers are not complete `header_timeout_s` after it opened or after its last
response; a stalled request body is refused by security.py (408).
"""
from __future__ import annotations

import asyncio

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from core.settings import get_settings


class HeaderTimeoutProtocol(HttpToolsProtocol):
    header_timeout_s = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._header_deadline: asyncio.TimerHandle | None = None
        self._arm()

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


def main() -> None:
    s = get_settings()
    HeaderTimeoutProtocol.header_timeout_s = s.header_timeout_s
    uvicorn.run("backend.app.main:app", host=s.host, port=s.port, http=HeaderTimeoutProtocol,
                timeout_keep_alive=5, log_level="info")


if __name__ == "__main__":
    main()
