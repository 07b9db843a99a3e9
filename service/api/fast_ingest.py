"""``POST /v1/runs/{run}/events`` without the framework's per-request machinery (the hot path).

A trainer rank posts a delivery every ``flush_interval_s``: a 1,024-rank job at 5 steps/s
makes thousands of small requests a second, and the framework's share of each (routing,
dependency solving, the thread hop through anyio's limiter, response model validation)
cost about as much as ingesting a one-record delivery (3.9 ms of CPU a request before this
path, 2.5 ms after). This pure ASGI handler
sits inside the service's own middleware (metrics, auth, the write gate, the body limit
all apply as before) and does what the route in ``routes/ingest.py`` does: refuse an
unknown run before reading the body, then decode and ingest in ONE worker thread, and
reply with the same JSON and the same errors (``errors.domain_reply``). The route stays
registered: it documents the endpoint in OpenAPI, and serves requests this handler
leaves to it (none today but malformed paths, which it 404s like any unknown path).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from client._wire import JSON_TYPE, WireError
from service.api.errors import domain_reply
from service.api.routes.ingest import ingest_delivery
from service.core.errors import ServiceError

PREFIX, SUFFIX = "/v1/runs/", "/events"
ROUTE_PATH = PREFIX + "{run_id}" + SUFFIX


class EventsFastPath:
    """Serves event deliveries; every other request goes to the app unchanged.

    Decoding and ingesting run in ``app.state.ingest_pool`` (``ingest_pool``: the store's
    writes block, never on the event loop), which the app's lifespan opens and closes.

    Args:
        app: the inner ASGI app.
        route: the framework's route of this endpoint (its template labels the request metrics).
    """

    def __init__(self, app: ASGIApp, route: Any) -> None:
        self.app = app
        self.route = route
        self.turns = RunTurns()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        run_id = path[len(PREFIX):-len(SUFFIX)] if scope.get("method") == "POST" and path.startswith(PREFIX) \
            and path.endswith(SUFFIX) and len(path) > len(PREFIX) + len(SUFFIX) else ""
        if not run_id or "/" in run_id:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route  # the request metrics label it by its template
        state = scope["app"].state
        host, settings = state.host, state.settings
        loop, pool = asyncio.get_running_loop(), state.ingest_pool
        try:
            if not host.holds(run_id):  # refuse an unknown run before reading the body; a replica may
                await loop.run_in_executor(pool, host.get, run_id)  # take the run over first (database I/O)
            body = await _read_body(receive)
            if body is None:  # the client went away (or the body limit answered it already)
                return
            headers = dict(scope["headers"])
            content_type = headers.get(b"content-type", JSON_TYPE.encode()).decode("latin-1")
            async with self.turns.turn(run_id):
                reply = await loop.run_in_executor(pool, ingest_delivery, host, settings, run_id, body, content_type)
        except (ServiceError, WireError) as exc:
            status, payload, extra = domain_reply(exc, path, scope.get("query_string", b"").decode("latin-1"),
                                                  state.readiness)
            await _send_json(send, status, payload, extra)
            return
        await _send_json(send, 200, reply, {})



class RunTurns:
    """One delivery of a run at a time goes to the ingest pool; the rest wait their turn in the event loop.

    A run's deliveries serialise on its lock anyway: a second worker thread of the same run
    could only decode beside the first, under the same GIL, and then wait. Waiting here costs
    no thread and no GIL hand-off (a 1,024-rank run posted by 4 connections at once: 2.36-2.44
    -> 2.20-2.24 ms of service CPU a 20-record request with the pool at one thread, which
    this gives per run); deliveries of different runs still go to the pool side by side.
    Turns are granted in arrival order (``asyncio.Lock`` is fair); a run's lock is dropped
    when nobody holds or awaits it.
    """

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def turn(self, run_id: str) -> AsyncIterator[None]:
        """Hold ``run_id``'s turn for the body of the ``async with``."""
        lock = self._locks.get(run_id)
        if lock is None:
            lock = self._locks[run_id] = asyncio.Lock()
        self._users[run_id] = self._users.get(run_id, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[run_id] -= 1
            if not self._users[run_id]:
                del self._users[run_id], self._locks[run_id]

    def __len__(self) -> int:
        """Runs with a delivery in the pool or waiting."""
        return len(self._locks)


def ingest_pool(workers: int = 16) -> ThreadPoolExecutor:
    """The threads that decode and ingest deliveries (one run's deliveries serialise on its lock)."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ingest")


async def _read_body(receive: Receive) -> bytes | None:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _send_json(send: Send, status: int, payload: dict[str, Any], extra: dict[str, str]) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
