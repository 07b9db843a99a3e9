"""uvicorn's httptools protocol with header and body read deadlines (DESIGN §6).

uvicorn closes idle keep-alive connections, but a connection that sends half a request
line or half a body is kept forever: a few hundred of them exhaust the file limit and the
service stops answering. Here each request gets ``header_timeout_s`` from its first byte
(or from the connection's start) to the end of its headers, then ``body_timeout_s`` for
the whole body; a request that misses either is closed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("linnaeus_metrics.http")


class DeadlineProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` that closes requests read too slowly (deadlines set by ``with_deadlines``)."""

    header_timeout_s = 10.0
    body_timeout_s = 60.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s, "headers")

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm(self.header_timeout_s, "headers")

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._arm(self.body_timeout_s, "body")

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _arm(self, seconds: float, part: str) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expire, part, seconds)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expire(self, part: str, seconds: float) -> None:
        self._deadline = None
        log.info("closing a connection from %s: request %s not received within %.1f s", self.client, part, seconds)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True
            self.cycle.message_event.set()  # the app's receive() wakes up to http.disconnect
        self.transport.close()


def with_deadlines(header_timeout_s: float, body_timeout_s: float) -> type[DeadlineProtocol]:
    """A protocol class for ``uvicorn.Config(http=...)`` with these deadlines."""
    return type("DeadlineProtocol", (DeadlineProtocol,), {
        "header_timeout_s": header_timeout_s, "body_timeout_s": body_timeout_s})
