"""Requests waiting for a checkpoint, woken when it is cut instead of polling for it.

Every rank calls ``state_dict()`` at a checkpoint and waits in
``GET /v1/runs/{run}/checkpoints/{id}?wait_s=`` until the last rank's marker is in. Polled
every 20 ms, 1,024 waiting ranks made ~50,000 checks a second (a thread hop, the run lock
and a store read each) while the service also had to ingest the markers they waited for.
Here a waiter registers before its first check; the runtime's dispatch hands this listener
the run's ``checkpoint`` notice right after the delivery that completed the cut, and the
listener wakes that checkpoint's waiters on their event loop (``call_soon_threadsafe``).
A waiter still re-checks on its own, after 50 ms and then at doubling intervals up to 5 s
(a run deleted or restored meanwhile, a cut made on another replica), and at its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi.encoders import jsonable_encoder
from fastapi.responses import JSONResponse

from service.core.emission import Emission, Notice

#: a waiter's own re-checks (the wake-up is what answers it; these cover a cut made elsewhere, e.g.
#: after another replica took the run over): 1,023 waiters re-checking every second cost the
#: service 0.35 cores, every 5 s about a fifth of that
FIRST_RECHECK_S, MAX_RECHECK_S = 0.05, 5.0
ENCODED_KEPT = 8  # checkpoints whose JSON is kept


class Waiter:
    """One waiting request: an event on its loop, set from any thread."""

    def __init__(self, run_id: str, checkpoint_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.key = (run_id, checkpoint_id)
        self._loop = loop
        self._event = asyncio.Event()
        self.recheck_s = FIRST_RECHECK_S

    def wake(self) -> None:
        """From any thread: end the current ``wait`` (nothing if its loop is gone: shutting down)."""
        with contextlib.suppress(RuntimeError):  # the loop is closed; a listener must not raise
            self._loop.call_soon_threadsafe(self._event.set)

    async def wait(self, timeout_s: float) -> bool:
        """Until woken or ``timeout_s`` passed (at most the re-check interval, which then doubles);
        True if woken."""
        try:
            await asyncio.wait_for(self._event.wait(), min(timeout_s, self.recheck_s))
        except TimeoutError:
            self.recheck_s = min(2 * self.recheck_s, MAX_RECHECK_S)
            return False
        self._event.clear()
        return True


class CheckpointWaits:
    """The registry of waiters; a runtime listener (``service.runtime.dispatch.Listener``).

    It also keeps the last few checkpoints' JSON: every rank of a run asks for the same
    snapshot at once, so it is encoded once, not once a rank (a 1,024-rank run's snapshot
    is ~90 KB of JSON).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[tuple[str, str], set[Waiter]] = {}
        self._encoded: OrderedDict[tuple[str, str], tuple[Mapping[str, Any], bytes]] = OrderedDict()

    def cached(self, run_id: str, checkpoint_id: str, snapshot: Mapping[str, Any]) -> bytes | None:
        """The JSON of this very ``snapshot`` object if it was encoded already (a checkpoint cut again
        under the same id after a restore is a new object), else None."""
        key = (run_id, checkpoint_id)
        with self._lock:
            found = self._encoded.get(key)
            if found is None or found[0] is not snapshot:
                return None
            self._encoded.move_to_end(key)
            return found[1]

    def encoded(self, run_id: str, checkpoint_id: str, snapshot: Mapping[str, Any]) -> bytes:
        """``snapshot`` as the JSON body FastAPI would send, encoded once per snapshot object."""
        known = self.cached(run_id, checkpoint_id, snapshot)
        if known is not None:
            return known
        key = (run_id, checkpoint_id)
        body = JSONResponse(jsonable_encoder(snapshot)).body
        with self._lock:
            self._encoded[key] = (snapshot, bytes(body))
            while len(self._encoded) > ENCODED_KEPT:
                self._encoded.popitem(last=False)
        return bytes(body)

    def add(self, run_id: str, checkpoint_id: str) -> Waiter:
        """Register a waiter of the running loop (before the first check: no cut can slip between)."""
        waiter = Waiter(run_id, checkpoint_id, asyncio.get_running_loop())
        with self._lock:
            self._waiters.setdefault(waiter.key, set()).add(waiter)
        return waiter

    def remove(self, waiter: Waiter) -> None:
        """Forget ``waiter`` (its request answered or gone)."""
        with self._lock:
            waiting = self._waiters.get(waiter.key)
            if waiting is not None:
                waiting.discard(waiter)
                if not waiting:
                    del self._waiters[waiter.key]

    @property
    def waiting(self) -> int:
        """Requests waiting now."""
        with self._lock:
            return sum(len(w) for w in self._waiters.values())

    def _wake(self, run_id: str, checkpoint_id: str | None) -> None:
        with self._lock:
            woken = [w for key, waiting in self._waiters.items() if key[0] == run_id
                     and checkpoint_id in (None, key[1]) for w in waiting]
        for waiter in woken:
            waiter.wake()

    # ------------------------------------------------------------ listener

    def notice(self, notice: Notice) -> None:
        """A cut checkpoint wakes its waiters; a restore wakes the run's (they check again)."""
        if notice.kind == "checkpoint":
            self._wake(notice.run_id, str(notice.detail.get("id")))
        elif notice.kind == "restore":
            self._wake(notice.run_id, None)

    def emit(self, emissions: Sequence[Emission]) -> None:
        """Emissions do not concern waiters."""

    def open_run(self, run_id: str, spec: Mapping[str, Any]) -> None:
        """Nothing to prepare."""

    def delete_run(self, run_id: str) -> None:
        """The run is gone: its waiters check again (and answer 404); its JSON is dropped."""
        with self._lock:
            for key in [k for k in self._encoded if k[0] == run_id]:
                del self._encoded[key]
        self._wake(run_id, None)
