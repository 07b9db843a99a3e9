"""Which ranks of the run never opened a session (DESIGN §7: ranks that split into two runs).

Ranks started with different run ids (e.g. an id made from the time in each process)
each wait forever for the others, and no metric is ever emitted. After a grace period,
``flush()`` and ``close()`` ask the service once for the run's ``missing_ranks`` and log
a warning naming them; the answer is kept for ``stats()["missing_ranks"]``.
"""

from __future__ import annotations

import logging
import threading

from client._errors import ClientError
from client._transport import Transport

log = logging.getLogger(__name__)

LOOKUP_TIMEOUT_S = 2.0  # it may run in close() at interpreter exit: never hold that up long


class Roster:
    """Looks up the run's missing ranks, until it saw none or warned once.

    Args:
        transport: the connection to the service.
        run_id: the run.
        world_size: ranks of the run (a single rank never waits for another).
        grace_s: age of the client before the first look.
    """

    def __init__(self, transport: Transport, run_id: str, world_size: int, grace_s: float) -> None:
        self._transport = transport
        self._path = f"/v1/runs/{run_id}"
        self._run_id = run_id
        self._grace_s = grace_s
        self._done = world_size == 1
        self._lock = threading.Lock()
        self.missing: list[int] = []

    def check(self, age_s: float) -> None:
        """Look once the client is ``grace_s`` old; warn when ranks are missing."""
        with self._lock:
            if self._done or age_s < self._grace_s:
                return
            self._done = True  # one look per client: this runs inside flush() and close()
        missing = self._fetch()
        if missing:
            self.missing = missing
            log.warning(
                "run %s: ranks %s never opened a session, so no step metric of this run can be computed "
                "(were they started with another run id? every rank must use the same one)",
                self._run_id, missing,
            )

    def _fetch(self) -> list[int]:
        try:
            reply = self._transport.request("GET", self._path, timeout_s=LOOKUP_TIMEOUT_S)
        except ClientError:
            return []
        body = reply.payload if reply.ok and isinstance(reply.payload, dict) else {}
        ranks = body.get("missing_ranks")
        return [r for r in ranks if isinstance(r, int)] if isinstance(ranks, list) else []
