"""A stand-in for ``GET /v1/runs/{run}/stream`` on a service that does not have it yet.

Used only while the real stream route is missing from ``create_app`` (its branch is merged
separately); it speaks the same contract: ``id``/``event``/``data`` messages, replay after
``Last-Event-ID``, ``: heartbeat`` comments; emissions with their metric identities, notices
as ``status`` messages. Delete this module once the real route is on main.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Header
from fastapi.responses import StreamingResponse

from service.api import create_app
from service.core.emission import Emission, Notice
from service.settings import Settings


class FakeStream:
    """A sink that keeps every emission as a numbered message and wakes the readers."""

    name = "fake-stream"

    def __init__(self) -> None:
        self.messages: dict[str, list[bytes]] = {}
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = []

    def open_run(self, run_id: str, spec: Mapping[str, Any]) -> None:
        """Nothing to prepare."""

    def emit(self, emissions: Sequence[Emission]) -> None:
        for e in emissions:
            self._publish(e.run_id, "emission", {"run_id": e.run_id, "step": e.step, "group": e.group,
                                                 "values": dict(e.values),
                                                 "metrics": {k: m.to_dict() for k, m in e.metrics.items()}})

    def notice(self, notice: Notice) -> None:
        self._publish(notice.run_id, "status", {"run_id": notice.run_id, "kind": notice.kind, "step": notice.step,
                                                "detail": dict(notice.detail)})

    def _publish(self, run_id: str, event: str, payload: dict[str, Any]) -> None:
        with self._lock:
            log = self.messages.setdefault(run_id, [])
            log.append(f"id: {len(log) + 1}\nevent: {event}\ndata: {json.dumps(payload)}\n\n".encode())
            waiters = list(self._waiters)
        for loop, event_ in waiters:
            loop.call_soon_threadsafe(event_.set)

    def finish_run(self, run_id: str, summary: Mapping[str, float], timeout_s: float) -> str:
        return "finished"

    def delete_run(self, run_id: str) -> None:
        """Nothing kept per run beyond the messages."""

    def status(self, run_id: str) -> dict[str, Any]:
        return {}

    def close(self, timeout_s: float) -> None:
        """Nothing to release."""

    async def _events(self, run_id: str, after: int) -> AsyncIterator[bytes]:
        event = asyncio.Event()
        waiter = (asyncio.get_running_loop(), event)
        with self._lock:
            self._waiters.append(waiter)
        try:
            yield b": connected\n\n"
            while True:
                with self._lock:
                    fresh = self.messages.get(run_id, [])[after:]
                after += len(fresh)
                if fresh:
                    yield b"".join(fresh)
                try:
                    await asyncio.wait_for(event.wait(), 5.0)
                except TimeoutError:
                    yield b": heartbeat\n\n"
                event.clear()
        finally:
            with self._lock:
                self._waiters.remove(waiter)

    def install(self, app: FastAPI) -> None:
        """Add the stream route to ``app``."""

        async def stream(run_id: str, last_event_id: str | None = Header(None)) -> StreamingResponse:
            after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0
            return StreamingResponse(self._events(run_id, after), media_type="text/event-stream")

        app.add_api_route("/v1/runs/{run_id}/stream", stream, methods=["GET"])


def has_stream_route() -> bool:
    """Whether the service already serves the real stream."""
    app = create_app(Settings(durable=False, wandb_enabled=False, console_enabled=False), sinks=[])
    return "/v1/runs/{run_id}/stream" in app.openapi()["paths"]
