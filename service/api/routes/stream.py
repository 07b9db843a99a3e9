"""``GET /v1/runs/{run}/stream``: the run's messages as server-sent events (DESIGN §11).

Each message is ``id: <int>``, ``event: <type>``, ``data: <one-line JSON>``; types are
``emission``, ``status``, ``alert`` and ``resync``. A reconnect sends ``Last-Event-ID``
(or ``?last_event_id=``, for readers that cannot set headers) and gets everything after
it from the run's ring buffer, or a ``resync`` first when that id has left the buffer.
Heartbeats are SSE comment lines (``: heartbeat``). The route stays on the event loop and
never takes a run lock: it only looks the run up and reads its reader's queue.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated

import anyio
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from service.api.deps import HostDep, SettingsDep
from service.api.schemas import ERRORS
from service.api.stream_hub import Reader, StreamHub, stream_lines
from service.core.errors import InvalidInput

log = logging.getLogger("linnaeus_metrics.stream")
router = APIRouter(prefix="/v1/runs", tags=["stream"], responses=ERRORS)
MAX_ID = 2**63 - 1


def get_hub(request: Request) -> StreamHub:
    """The app's stream hub (set by the lifespan)."""
    hub: StreamHub = request.app.state.stream
    return hub


HubDep = Annotated[StreamHub, Depends(get_hub)]


def parse_last_id(header: str | None, query: str | None) -> int | None:
    """The reader's last id from the header (preferred) or the query; InvalidInput if malformed."""
    raw, name = (header, "Last-Event-ID") if header is not None else (query, "last_event_id")
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or int(raw) > MAX_ID:
        raise InvalidInput(f"{name}: expected a non-negative integer id, got {raw[:40]!r}")
    return int(raw)


@router.get("/{run_id}/stream", response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "server-sent events"}})
async def stream_run(run_id: str, host: HostDep, hub: HubDep, settings: SettingsDep,
                     last_event_id: Annotated[str | None, Header()] = None,
                     last_event_id_query: Annotated[str | None, Query(alias="last_event_id", max_length=40)] = None,
                     ) -> StreamingResponse:
    """Live messages of the run (emissions, status changes, alerts), with replay on reconnect."""
    host.get(run_id)  # a dict lookup, no lock: 404 for an unknown run, 422 for a malformed id
    last_id = parse_last_id(last_event_id, last_event_id_query)
    return EventStreamResponse(hub, hub.subscribe(run_id, last_id), settings.stream_heartbeat_s,
                               settings.stream_drop_grace_s)


class EventStreamResponse(StreamingResponse):
    """An SSE response that ends the connection as soon as its reader is dropped.

    A reader that stopped reading leaves the response stuck in ``send`` (the transport is
    paused); waiting for ``reader.gone`` beside it and cancelling after ``drop_grace_s``
    closes that connection instead of keeping it for as long as the client keeps its
    socket open. A reader dropped for falling behind is always cut so (what it missed is
    gone; it reconnects with ``Last-Event-ID``); one ended because its run was deleted or
    the service is stopping ends cleanly. Whatever ends the response, the hub forgets the
    reader.
    """

    def __init__(self, hub: StreamHub, reader: Reader, heartbeat_s: float, drop_grace_s: float) -> None:
        super().__init__(_events(reader, heartbeat_s), media_type="text/event-stream",
                         headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        self.hub, self.reader, self.drop_grace_s = hub, reader, drop_grace_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._end_when_dropped, tasks.cancel_scope)
                await super().__call__(scope, receive, send)
                tasks.cancel_scope.cancel()
        finally:
            self.hub.unsubscribe(self.reader)

    async def _end_when_dropped(self, scope: anyio.CancelScope) -> None:
        await self.reader.gone.wait()
        if self.reader.behind:
            log.warning("run %s: a stream reader fell %d messages behind and was dropped (it may reconnect "
                        "with Last-Event-ID)", self.reader.run_id, self.reader.max_queued)
        await anyio.sleep(self.drop_grace_s)  # a reader still reading ends cleanly within this
        scope.cancel()


async def _events(reader: Reader, heartbeat_s: float) -> AsyncIterator[bytes]:
    # ends when the reader is dropped (queue overflow, run deleted, service stopping); a
    # client going away cancels the response instead
    yield b": connected\n\n"
    while True:
        batch = await reader.take(heartbeat_s)
        if batch is None:
            yield b": heartbeat\n\n"
        elif not batch:
            if reader.behind:  # dropped for falling behind: the response's watcher cuts the connection after
                await anyio.sleep_forever()  # the grace (ending cleanly here would race with that cut)
            return
        else:
            yield stream_lines(batch)
