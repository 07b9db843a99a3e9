"""The live stream of each run: a ring buffer of recent messages and its readers.

Publishers are the runtime's dispatch threads (emissions, status changes, alerts); readers
are SSE connections on the event loop. A publisher never waits for a reader: it takes the
run's channel lock for a few O(1) steps (number the message, append it to the ring buffer
and to each reader's queue) and wakes a reader with ``call_soon_threadsafe`` only when that
reader is not already awake. A reader whose queue is full is dropped (its connection is
closed and the drop counted); it reconnects with ``Last-Event-ID`` and the ring buffer
replays what it missed. Messages are JSON-encoded once, by the first reader that sends
them, not by the publisher.

Ids start at the channel's creation time in microseconds and grow by one per message, so
they increase per run across service restarts too: a reader that comes back after a
restart presents an id older than the new buffer and gets a ``resync`` first.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from service.core.emission import Emission, Notice

MESSAGE_TYPES = ("emission", "status", "alert", "resync")


class Message:
    """One SSE message; its wire text is built once, when first needed."""

    __slots__ = ("_text", "event", "id", "payload")

    def __init__(self, id_: int, event: str, payload: Mapping[str, Any] | Emission) -> None:
        self.id = id_
        self.event = event
        self.payload = payload
        self._text: bytes | None = None

    def encode(self) -> bytes:
        """``id:``, ``event:`` and a one-line JSON ``data:`` field, then the blank line."""
        if self._text is None:
            data = emission_payload(self.payload) if isinstance(self.payload, Emission) else self.payload
            line = json.dumps(data, separators=(",", ":"), allow_nan=False, default=_jsonable)
            self._text = f"id: {self.id}\nevent: {self.event}\ndata: {line}\n\n".encode()
        return self._text


def emission_payload(emission: Emission) -> dict[str, Any]:
    """The ``emission`` message's data (DESIGN §11): this emission's own values (not the ones a
    wandb row carries from an earlier emission) with their metric identity."""
    values = {k: v for k, v in emission.values.items() if math.isfinite(v)}
    return {"run_id": emission.run_id, "step": emission.step, "group": emission.group, "values": values,
            "metrics": {k: m.to_dict() for k, m in emission.metrics.items() if k in values}}


def _jsonable(value: Any) -> Any:
    """Values the JSON encoder does not know: numpy scalars (``item()``) and sets."""
    if hasattr(value, "item"):
        return value.item()
    if isinstance(value, set | frozenset):
        return sorted(value)
    raise TypeError(f"stream: cannot encode {type(value).__name__} {value!r}")


class Reader:
    """One connected reader: a bounded queue the publishers fill and the event loop drains."""

    def __init__(self, run_id: str, loop: asyncio.AbstractEventLoop, max_queued: int) -> None:
        self.run_id = run_id
        self.max_queued = max_queued
        self.dropped = False
        self.behind = False  # dropped for falling behind (not closed by the service)
        self.backlog: list[Message] = []  # replay and resync, sent before anything queued
        self._queue: deque[Message] = deque()
        self._loop = loop
        self._wake = asyncio.Event()
        self._awake = False
        self.gone = asyncio.Event()  # set on the loop once the reader is dropped

    def offer(self, message: Message) -> None:
        """Queue ``message`` (caller holds the channel lock); drop the reader when full."""
        if self.dropped:
            return
        if len(self._queue) >= self.max_queued:
            self.dropped = self.behind = True
            self._signal(self.gone.set)
        else:
            self._queue.append(message)
        if not self._awake:
            self._awake = True
            self._signal(self._wake.set)

    def drop(self) -> None:
        """Close this reader from any thread (its run was deleted, the service stops)."""
        self.dropped = True
        self._signal(self._wake.set)
        self._signal(self.gone.set)

    def _signal(self, callback: Callable[[], None]) -> None:
        try:
            self._loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the reader's loop is closed (service stopping): it reads no more
            self.dropped = True

    async def take(self, timeout_s: float) -> list[Message] | None:
        """Messages ready to send, waiting up to ``timeout_s``; None when none came (heartbeat).

        Returns an empty list once the reader is dropped: the connection ends.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self._pending():
            # a wake-up can be stale (its message was taken by the previous call): wait again
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                return None
            self._wake.clear()
        # clear the flag before draining: a publisher appending after this wakes us again
        self._awake = False
        self._wake.clear()
        if self.dropped:
            return []
        out, self.backlog = self.backlog, []
        while self._queue:
            out.append(self._queue.popleft())
        return out

    def _pending(self) -> bool:
        return bool(self.backlog or self._queue or self.dropped)


class _Channel:
    def __init__(self, first_id: int, max_buffered: int) -> None:
        self.lock = threading.Lock()
        self.ring: deque[Message] = deque(maxlen=max_buffered)
        self.last_id = first_id - 1
        self.readers: set[Reader] = set()
        self.published = 0
        self.dropped = 0


class StreamHub:
    """Per-run streams with bounded replay and bounded readers.

    The runtime hands it every emission and notice like a sink (``emit``, ``notice``,
    ``open_run``, ``delete_run``), but it is not one of the run's sinks: it has nothing to
    finish and no per-run status.

    Args:
        max_buffered: messages kept per run for ``Last-Event-ID`` replay.
        max_queued: messages a reader may have waiting before it is dropped.
        id_base: the first id of a new run's stream (default: now, in microseconds).
    """

    def __init__(self, max_buffered: int = 10_000, max_queued: int = 1_000,
                 id_base: Callable[[], int] = lambda: time.time_ns() // 1000) -> None:
        self.max_buffered = max_buffered
        self.max_queued = max_queued
        self._id_base = id_base
        self._channels: dict[str, _Channel] = {}
        self._lock = threading.Lock()
        self._retired = {"published": 0, "dropped_readers": 0}

    def _channel(self, run_id: str) -> _Channel:
        channel = self._channels.get(run_id)
        if channel is None:
            with self._lock:
                channel = self._channels.setdefault(run_id, _Channel(self._id_base() + 1, self.max_buffered))
        return channel

    # ------------------------------------------------------------ publishing (any thread)

    def publish(self, run_id: str, event: str, payload: Mapping[str, Any] | Emission) -> int:
        """Append one message to the run's stream; returns its id. Never waits for readers."""
        channel = self._channel(run_id)
        with channel.lock:
            channel.last_id += 1
            message = Message(channel.last_id, event, payload)
            channel.ring.append(message)
            for reader in channel.readers:
                reader.offer(message)
            channel.published += 1
            self._count_drops(channel)
        return message.id

    def emit(self, emissions: Sequence[Emission]) -> None:
        """One ``emission`` message per emission, in order (the runtime's dispatch calls this)."""
        for emission in emissions:
            self.publish(emission.run_id, "emission", emission)

    def notice(self, notice: Notice) -> None:
        """An ``alert`` message for an alert notice, else a ``status`` message."""
        if notice.kind == "alert":
            self.publish(notice.run_id, "alert", {"run_id": notice.run_id, **notice.detail})
        else:
            self.publish(notice.run_id, "status", {"run_id": notice.run_id, "kind": notice.kind,
                                                   "step": notice.step, "detail": dict(notice.detail)})

    def open_run(self, run_id: str, spec: Mapping[str, Any]) -> None:
        """Nothing to prepare: a run's stream starts with its first message or reader."""

    def delete_run(self, run_id: str) -> None:
        """The run was deleted: close its readers and free its buffer."""
        self.close_run(run_id)

    def _count_drops(self, channel: _Channel) -> None:
        dropped = [r for r in channel.readers if r.dropped]
        if dropped:
            channel.readers.difference_update(dropped)
            channel.dropped += len(dropped)

    def close_run(self, run_id: str) -> None:
        """Forget a deleted run: its readers are closed and its buffer freed."""
        with self._lock:
            channel = self._channels.pop(run_id, None)
        if channel is not None:
            with channel.lock:
                readers, channel.readers = list(channel.readers), set()
                self._retired["published"] += channel.published
                self._retired["dropped_readers"] += channel.dropped
            for reader in readers:
                reader.drop()

    def close(self) -> None:
        """Close every reader (the service is stopping)."""
        for run_id in list(self._channels):
            self.close_run(run_id)

    # ------------------------------------------------------------ reading (event loop)

    def subscribe(self, run_id: str, last_id: int | None) -> Reader:
        """A reader of ``run_id`` from now on, first replaying what came after ``last_id``.

        When ``last_id`` is no longer in the buffer (or was never issued) the reader first
        gets a ``resync`` message and then the whole buffer.
        """
        reader = Reader(run_id, asyncio.get_running_loop(), self.max_queued)
        channel = self._channel(run_id)
        with channel.lock:  # replay and registration together: nothing missed, nothing twice
            if last_id is not None:
                reader.backlog = self._replay(run_id, channel, last_id)
            channel.readers.add(reader)
        return reader

    def _replay(self, run_id: str, channel: _Channel, last_id: int) -> list[Message]:
        oldest = channel.ring[0].id if channel.ring else channel.last_id + 1
        if oldest - 1 <= last_id <= channel.last_id:
            return list(itertools.islice(channel.ring, last_id - oldest + 1, None))
        reason = "unknown_id" if last_id > channel.last_id else "buffer_exceeded"
        resync = Message(oldest - 1, "resync", {"run_id": run_id, "reason": reason})
        return [resync, *channel.ring]

    def unsubscribe(self, reader: Reader) -> None:
        """Forget a reader whose connection ended."""
        channel = self._channels.get(reader.run_id)
        if channel is not None:
            with channel.lock:
                channel.readers.discard(reader)

    def figures(self) -> dict[str, int]:
        """Totals for /metrics: readers connected, messages published, readers dropped."""
        channels = list(self._channels.values())
        return {"readers": sum(len(c.readers) for c in channels),
                "published": self._retired["published"] + sum(c.published for c in channels),
                "dropped_readers": self._retired["dropped_readers"] + sum(c.dropped for c in channels)}


def stream_lines(messages: Iterable[Message]) -> bytes:
    """The wire text of several messages."""
    return b"".join(m.encode() for m in messages)
