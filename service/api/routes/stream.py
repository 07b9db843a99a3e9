"""``GET /v1/runs/{run}/stream``: the run's messages as server-sent events (DESIGN §11).

Each message is ``id: <int>``, ``event: <type>``, ``data: <one-line JSON>``; types are
``emission``, ``status``, ``alert`` and ``resync``. A reconnect sends ``Last-Event-ID``
(or ``?last_event_id=``, for readers that cannot set headers) and gets everything after
it from the run's ring buffer, or a ``resync`` first when that id has left the buffer.
Heartbeats are SSE comment lines (``: heartbeat``). The route stays on the event loop and
never takes a run lock: it only looks the run up and reads its reader's queue.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse

from service.api.deps import RegistryDep, SettingsDep
from service.api.schemas import ERRORS
from service.api.stream_hub import StreamHub, stream_lines
from service.core.errors import InvalidInput

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
async def stream_run(run_id: str, registry: RegistryDep, hub: HubDep, settings: SettingsDep,
                     last_event_id: Annotated[str | None, Header()] = None,
                     last_event_id_query: Annotated[str | None, Query(alias="last_event_id", max_length=40)] = None,
                     ) -> StreamingResponse:
    """Live messages of the run (emissions, status changes, alerts), with replay on reconnect."""
    registry.get(run_id)  # a dict lookup, no lock: 404 for an unknown run, 422 for a malformed id
    last_id = parse_last_id(last_event_id, last_event_id_query)
    return StreamingResponse(_events(hub, run_id, last_id, settings.stream_heartbeat_s),
                             media_type="text/event-stream",
                             headers={"cache-control": "no-cache", "x-accel-buffering": "no"})


async def _events(hub: StreamHub, run_id: str, last_id: int | None, heartbeat_s: float) -> AsyncIterator[bytes]:
    # subscribing here, not in the route, ties the reader's life to the generator's: the stream
    # ends when the reader is dropped (queue overflow, run deleted) or the client goes away
    # (the response cancels this generator), and either way the hub forgets the reader
    reader = hub.subscribe(run_id, last_id)
    try:
        yield b": connected\n\n"
        while True:
            batch = await reader.take(heartbeat_s)
            if batch is None:
                yield b": heartbeat\n\n"
            elif not batch:
                return
            else:
                yield stream_lines(batch)
    finally:
        hub.unsubscribe(reader)
