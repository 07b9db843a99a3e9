"""Hands a run's emissions and notices to the sinks outside the run lock, in order.

Producers append to the run's outbox while they hold the run lock, so the outbox is in
the order the run produced things. Whoever holds the outbox's dispatch turn empties it;
a thread that finds the turn taken leaves its items to that thread and returns at once,
so a slow sink delays only the thread already dispatching, never the run lock.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from service.core.emission import Emission, Notice

log = logging.getLogger("linnaeus_metrics.dispatch")
Item = Emission | Notice


class Listener(Protocol):
    """What dispatch hands items to: every sink, and listeners such as the live stream."""

    def open_run(self, run_id: str, spec: Mapping[str, Any]) -> None:
        """A run was created or recovered."""

    def emit(self, emissions: Sequence[Emission]) -> None:
        """Emissions of one run, in order; must neither block nor raise."""

    def notice(self, notice: Notice) -> None:
        """A status change of a run; must neither block nor raise."""

    def delete_run(self, run_id: str) -> None:
        """The run was deleted."""


class Outbox:
    """One run's items waiting for the sinks."""

    def __init__(self) -> None:
        self._items: deque[Item] = deque()
        self._turn = threading.Lock()

    def put(self, items: Sequence[Item]) -> None:
        """Queue items (call under the run lock, so order follows the run)."""
        self._items.extend(items)

    def dispatch(self, sinks: Sequence[Listener]) -> None:
        """Deliver queued items unless another thread is already doing it."""
        while self._items:
            if not self._turn.acquire(blocking=False):
                return  # the thread holding the turn re-checks the queue before it leaves
            try:
                self._drain(sinks)
            finally:
                self._turn.release()

    def settle(self, sinks: Sequence[Listener]) -> None:
        """Deliver every queued item now, waiting for a thread that is delivering (sinks' calls
        never block, so the wait is short): afterwards nothing is between the run and the sinks."""
        with self._turn:
            self._drain(sinks)

    def _drain(self, sinks: Sequence[Listener]) -> None:
        """Deliver until the queue is empty (caller holds the turn)."""
        while self._items:
            taken = []
            while self._items:
                taken.append(self._items.popleft())
            _deliver(taken, sinks)


def _deliver(items: list[Item], sinks: Sequence[Listener]) -> None:
    run: list[Emission] = []
    for item in items:
        if isinstance(item, Emission):
            run.append(item)
            continue
        _emit(run, sinks)
        run = []
        for sink in sinks:
            _call(sink, "notice", item)
    _emit(run, sinks)


def _emit(emissions: list[Emission], sinks: Sequence[Listener]) -> None:
    if emissions:
        for sink in sinks:
            _call(sink, "emit", emissions)


def _call(sink: Listener, method: str, arg: object) -> None:
    try:
        getattr(sink, method)(arg)
    except Exception:  # a sink must not raise; if one does, the others still get the item
        log.exception("sink %s: %s raised", getattr(sink, "name", sink), method)
