"""Run ownership of one replica: the leases it holds on the shared store, renewed in the background.

A replica writes a run only while it holds the run's lease (DESIGN §10). It takes the lease
when it creates the run or on the run's first write once the lease is free or expired, and
a thread renews every held lease three times per TTL. The replica's own view of a lease
ends at ``renewal start + TTL`` on its monotonic clock, which is never later than the
database's expiry: once that passes without a renewal (the replica was paused, the
database was cut off), the run is given up at once. The store's fencing check refuses a
write with an old token anyway; giving up early keeps a slow replica from trying.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from service.core.errors import StoreFenced, StoreUnavailable
from service.storage.lease import Lease

log = logging.getLogger("linnaeus_metrics.ownership")
RENEWALS_PER_TTL = 3


class LeaseStore(Protocol):
    """The lease half of a store (service/storage)."""

    def acquire(self, run_id: str, owner: str, url: str, ttl_s: float) -> Lease | None:
        """Take the run's lease if free or expired; None while another replica holds it."""

    def renew(self, lease: Lease) -> Lease:
        """Extend a held lease; StoreFenced once it is lost."""

    def release(self, lease: Lease) -> None:
        """Give the run up now."""

    def owner_of(self, run_id: str) -> Lease | None:
        """The run's unexpired lease, or None."""


class Ownership:
    """The runs this replica owns.

    Args:
        store: where the leases live.
        replica_id: this replica's id (unique among the replicas sharing the store).
        url: where clients reach this replica (sent to them by the other replicas).
        ttl_s: lease time to live.
        on_lost: called with a run id when its lease is lost (the run must stop writing).
        clock: a monotonic clock (tests inject one).
    """

    def __init__(self, store: LeaseStore, replica_id: str, url: str, ttl_s: float,
                 on_lost: Callable[[str], None] = lambda run_id: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.replica_id, self.url, self.ttl_s = store, replica_id, url, ttl_s
        self.on_lost = on_lost
        self._clock = clock
        self._held: dict[str, tuple[Lease, float]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def token(self, run_id: str) -> int | None:
        """The fencing token of a run this replica owns now, else None."""
        with self._lock:
            held = self._held.get(run_id)
        if held is None or self._clock() >= held[1]:
            return None
        return held[0].token

    def last_token(self, run_id: str) -> int | None:
        """The token of the run's lease as last held here, even if no longer counted on (None: never held)."""
        with self._lock:
            held = self._held.get(run_id)
        return None if held is None else held[0].token

    def claim(self, run_id: str) -> Lease | None:
        """Take the run's lease if it is free or expired (or already ours); None if another holds it."""
        started = self._clock()
        lease = self.store.acquire(run_id, self.replica_id, self.url, self.ttl_s)
        if lease is not None:
            with self._lock:
                self._held[run_id] = (lease, started + self.ttl_s)
        return lease

    def owner(self, run_id: str) -> Lease | None:
        """Whoever holds the run's lease now (this replica included), or None."""
        return self.store.owner_of(run_id)

    def release(self, run_id: str) -> None:
        """Give the run up now (it was deleted, or never existed)."""
        with self._lock:
            held = self._held.pop(run_id, None)
        if held is not None:
            self.store.release(held[0])

    def held(self) -> list[str]:
        """Runs whose lease this replica holds (as far as it knows)."""
        with self._lock:
            return sorted(self._held)

    def lose(self, run_id: str, reason: str, token: int | None = None) -> None:
        """Stop owning ``run_id`` (its lease is gone, or about to be); with ``token``, only that lease
        (a renewal that failed must not drop a lease taken again since)."""
        with self._lock:
            held = self._held.get(run_id)
            if held is None or (token is not None and held[0].token != token):
                return
            del self._held[run_id]
        if held is not None:
            log.warning("run %s: lease (token %d) lost: %s", run_id, held[0].token, reason)
            self.on_lost(run_id)

    def renew_all(self) -> None:
        """Renew every held lease once; give up those that cannot be renewed in time."""
        with self._lock:
            held = dict(self._held)
        for run_id, (lease, deadline) in held.items():
            started = self._clock()
            try:
                self.store.renew(lease)
            except StoreFenced as exc:
                self.lose(run_id, str(exc), lease.token)
                continue
            except StoreUnavailable as exc:
                if self._clock() >= deadline:
                    self.lose(run_id, f"not renewed within its TTL ({exc})", lease.token)
                continue
            with self._lock:
                if self._held.get(run_id, (None,))[0] == lease:
                    self._held[run_id] = (lease, started + self.ttl_s)

    def start(self) -> None:
        """Renew in a daemon thread until ``close``."""
        self._thread = threading.Thread(target=self._renew_loop, name="lease-renewal", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / RENEWALS_PER_TTL):
            try:
                self.renew_all()
            except Exception:  # the loop must outlive any one failure, or every lease would lapse
                log.exception("lease renewal failed")

    def close(self, release: bool = True) -> None:
        """Stop renewing; release the leases (so another replica can take the runs over at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(self.ttl_s)
        with self._lock:
            held, self._held = self._held, {}
        for lease, _ in held.values() if release else ():
            try:
                self.store.release(lease)
            except StoreUnavailable as exc:
                log.warning("run %s: lease not released (%s); it expires in %.1f s", lease.run_id, exc, self.ttl_s)
