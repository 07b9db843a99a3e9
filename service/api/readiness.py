"""Readiness, and the gate that refuses writes while the service is not ready (DESIGN §9).

Not ready means no writes: while the store cannot be opened or written, or recovery has not
finished, every write answers 503 (the client keeps its records and retries), so an
acknowledgement always means durable. Readiness is proved by a real durable write (the
store's ``probe``: a committed row and an fsynced file), never assumed: it is taken after
recovery, on ``/readyz`` and, once a write failed, before the next write is refused.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from anyio import to_thread
from starlette.types import ASGIApp, Receive, Scope, Send

from service.core.errors import StoreUnavailable

log = logging.getLogger("linnaeus_metrics.readiness")
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class Probeable(Protocol):
    """A store that can prove it takes durable writes."""

    def probe(self) -> None:
        """Raise StoreUnavailable unless a durable write succeeds."""


class Readiness:
    """Whether the service takes writes, and why not.

    Args:
        probe_interval_s: at most one probe of the store per this many seconds (probes write).
        clock: monotonic seconds (injected by tests).
    """

    def __init__(self, probe_interval_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ready = False
        self.reason = "starting"
        self.store: Probeable | None = None
        self.recovered = False
        #: runs recovery could not rebuild, and why (named in every report; the others serve)
        self.quarantined: Callable[[], dict[str, str]] = dict
        self.probe_interval_s = probe_interval_s
        self._clock = clock
        self._next_probe = float("-inf")

    def not_ready(self, reason: str) -> None:
        """Stop taking writes (a store failure, shutdown); logged once per change of reason."""
        if self.ready or reason != self.reason:
            log.error("not ready: %s", reason)
        self.ready, self.reason = False, reason

    def stop(self) -> None:
        """Shutting down: no more writes (not an error)."""
        self.ready, self.reason = False, "shutting down"

    def set_ready(self) -> None:
        """Take writes again (the store proved a durable write)."""
        if not self.ready:
            log.info("ready")
        self.ready, self.reason = True, ""

    async def refresh(self, force: bool = False) -> None:
        """Probe the store when a probe is due (or ``force``); readiness follows the result."""
        if self.store is None or not self.recovered:
            return
        now = self._clock()
        if not force and now < self._next_probe:
            return
        self._next_probe = now + self.probe_interval_s
        await to_thread.run_sync(self.probe_now)

    def probe_now(self) -> None:
        """One probe of the store, in the caller's thread."""
        if self.store is None:
            return
        try:
            self.store.probe()
        except StoreUnavailable as exc:
            self.not_ready(str(exc))
            return
        self.set_ready()

    def report(self) -> dict[str, Any]:
        """What ``/readyz`` answers."""
        report: dict[str, Any] = {"status": "ready"} if self.ready else {"status": "not_ready", "detail": self.reason}
        quarantined = self.quarantined()
        if quarantined:
            report["quarantined"] = quarantined
        return report


class WriteGate:
    """An ASGI middleware: 503 for every write while the service is not ready."""

    def __init__(self, app: ASGIApp, readiness: Readiness) -> None:
        self.app = app
        self.readiness = readiness

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in WRITE_METHODS:
            await self.app(scope, receive, send)
            return
        if not self.readiness.ready:
            await self.readiness.refresh()
        if self.readiness.ready:
            await self.app(scope, receive, send)
            return
        detail = f"service not ready, writes are refused until it is: {self.readiness.reason}"
        body = json.dumps({"type": "not_ready", "detail": detail}).encode()
        await send({"type": "http.response.start", "status": 503, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1")]})
        await send({"type": "http.response.body", "body": body})
