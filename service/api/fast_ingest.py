"""``POST /v1/runs/{run}/events`` without the framework's per-request machinery (the hot path).

A trainer rank posts a delivery every ``flush_interval_s``: a 1,024-rank job at 5 steps/s
makes thousands of small requests a second, and the framework's share of each (routing,
dependency solving, the thread hop through anyio's limiter, response model validation)
cost about as much as ingesting a one-record delivery (3.9 ms of CPU a request before this
path, 2.5 ms after). This pure ASGI handler
sits inside the service's own middleware (metrics, auth, the write gate, the body limit
all apply as before) and does what the route in ``routes/ingest.py`` does: refuse an
unknown run before reading the body, then decode and ingest in ONE worker thread, and
reply with the same JSON and the same errors (``errors.domain_reply``). Deliveries that
arrive while their run is busy are ingested together, with one journal transaction
(``RunTurns``: group commit). The route stays
registered: it documents the endpoint in OpenAPI, and serves requests this handler
leaves to it (none today but malformed paths, which it 404s like any unknown path).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from starlette.types import ASGIApp, Receive, Scope, Send

from client._wire import JSON_TYPE, WireError
from service.api.errors import domain_reply
from service.api.routes.ingest import ingest_group
from service.core.errors import ServiceError

PREFIX, SUFFIX = "/v1/runs/", "/events"
MAX_GROUP = 16  # deliveries of one run ingested with one journal transaction, at most (each waits for its group)
MAX_GROUP_BYTES = 64 * 2**20  # and about this much of their bodies
T = TypeVar("T")
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
        self.turns: RunTurns[tuple[bytes, str]] = RunTurns()

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
            reply = await self.turns.submit(
                run_id, (body, content_type),
                lambda group: loop.run_in_executor(pool, ingest_group, host, settings, run_id, group), len(body))
        except (ServiceError, WireError) as exc:
            status, payload, extra = domain_reply(exc, path, scope.get("query_string", b"").decode("latin-1"),
                                                  state.readiness)
            await _send_json(send, status, payload, extra)
            return
        await _send_json(send, 200, reply, {})



class RunTurns(Generic[T]):
    """Deliveries of a run go to the ingest pool in groups, one group of a run at a time.

    A run's deliveries serialise on its lock anyway, so while one group of a run is in the
    pool the run's next deliveries wait here, in the event loop (no thread, no GIL hand-off),
    and go together as the next group once it returns: ``process`` ingests a group with one
    journal transaction, so a busy run pays one sync to disk per group instead of one per
    delivery (group commit). Groups form only under load: a delivery that finds its run idle
    goes at once, alone. Deliveries of other runs go to the pool beside it. A group keeps
    arrival order and holds at most ``max_group`` deliveries and about ``max_bytes`` of
    bodies (the rest wait for the next). A delivery cancelled while it waits gives up its
    place; one cancelled once its group is in the pool is still ingested (as before: the
    thread cannot be stopped), and its reply dropped.
    """

    def __init__(self, max_group: int = MAX_GROUP, max_bytes: int = MAX_GROUP_BYTES) -> None:
        self.max_group, self.max_bytes = max_group, max_bytes
        self._waiting: dict[str, list[_Waiter[T]]] = {}  # runs with a group in the pool: who waits for the next
        self._drivers: dict[str, asyncio.Task[None]] = {}

    async def submit(self, run_id: str, item: T, process: Callable[[list[T]], Awaitable[list[Any]]],
                     nbytes: int = 0) -> Any:
        """Ingest ``item`` in a group of ``run_id``: its reply, or its error raised.

        ``process`` takes a group's items and returns one result per item (a reply, or the
        exception that refused it), or raises what fails the whole group.
        """
        waiter = _Waiter(item, asyncio.get_running_loop().create_future(), nbytes)
        queue = self._waiting.get(run_id)
        if queue is None:  # the run is idle: this delivery goes now, and leads the groups after it
            self._waiting[run_id] = []
            self._drivers[run_id] = asyncio.create_task(self._drive(run_id, [waiter], process))
        else:
            queue.append(waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:
            if not waiter.taken and waiter in self._waiting.get(run_id, ()):
                self._waiting[run_id].remove(waiter)
            raise

    async def _drive(self, run_id: str, group: list[_Waiter[T]],
                     process: Callable[[list[T]], Awaitable[list[Any]]]) -> None:
        """Ingest groups of ``run_id`` until nobody waits."""
        try:
            while group:
                for waiter in group:
                    waiter.taken = True
                try:
                    results: list[Any] = await process([w.item for w in group])
                except Exception as exc:  # the whole group failed (the store): every delivery's answer
                    results = [exc] * len(group)
                for waiter, result in zip(group, results, strict=True):
                    if waiter.future.done():  # its request was cancelled meanwhile
                        continue
                    if isinstance(result, BaseException):
                        waiter.future.set_exception(result)
                    else:
                        waiter.future.set_result(result)
                group = self._next_group(self._waiting[run_id])
        finally:  # done, or cancelled (shutdown): nobody is left waiting for a group that will not come
            for waiter in [*group, *self._waiting.pop(run_id, [])]:
                if not waiter.future.done():
                    waiter.future.cancel()
            self._drivers.pop(run_id, None)

    def _next_group(self, queue: list[_Waiter[T]]) -> list[_Waiter[T]]:
        count, size = 0, 0
        for waiter in queue:
            if count and (count == self.max_group or size + waiter.nbytes > self.max_bytes):
                break
            count, size = count + 1, size + waiter.nbytes
        group = queue[:count]
        del queue[:count]
        return group

    def __len__(self) -> int:
        """Runs with a group in the pool."""
        return len(self._waiting)


class _Waiter(Generic[T]):
    __slots__ = ("future", "item", "nbytes", "taken")

    def __init__(self, item: T, future: asyncio.Future[Any], nbytes: int) -> None:
        self.item, self.future, self.nbytes, self.taken = item, future, nbytes, False


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
