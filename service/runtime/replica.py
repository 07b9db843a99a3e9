"""ReplicaHost: a RunHost that shares its store with other replicas and writes only the runs it owns.

Writes (create, sessions, events, restore, finish, delete, a checkpoint not yet stored)
need the run's lease: a replica takes it when the run is free or its lease expired, and
then recovers the run from the store (latest image + journal tail) before serving it. A
run another replica owns is answered with ``NotOwner`` (the API turns it into a 307 to the
owner's URL). Losing a lease drops the run from memory at once; the store refuses any
write still in flight with the old token (``StoreFenced``), which ends the same way.

Reads of a run owned elsewhere are served from a read-only copy rebuilt from the store
for each read (latest image + journal tail): they show every acknowledged event, at the
cost of a replay. A router hashing on the run id sends reads to the owner anyway.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from service.core.emission import Sink
from service.core.errors import NotOwner, ServiceError, StoreDamaged, StoreFenced, UnknownRun
from service.core.run_commands import Run
from service.core.spec import check_run_id, parse_spec
from service.runtime.fencing import FencedStore, ReadOnlyStore, SharedStore
from service.runtime.host import Delivery, RunHost
from service.runtime.ownership import Ownership

log = logging.getLogger("linnaeus_metrics.replica")
T = TypeVar("T")


class RunRetired(StoreFenced):
    """A write came through a copy of the run that a takeover replaced while the write waited."""


class ReplicaHost(RunHost):
    """The runs this replica owns, on a store shared with other replicas.

    Args:
        sinks: outputs of the owned runs' emissions.
        store: the shared store (PostgreSQL).
        replica_id: this replica's id.
        url: this replica's advertised URL.
        ttl_s: lease time to live.
        **options: ``RunHost`` options (max_runs, history_max_points, image_every_events, new_id).
    """

    def __init__(self, sinks: Sequence[Sink], store: SharedStore, replica_id: str, url: str, ttl_s: float,
                 **options: Any) -> None:
        self.ownership = Ownership(store, replica_id, url, ttl_s, on_lost=self._retire)
        super().__init__(sinks, store=FencedStore(store, self.ownership), **options)
        self.shared = store
        self.takeovers = 0
        self._claiming = threading.Lock()
        self._recovering: set[str] = set()

    # ------------------------------------------------------------ ownership

    def holds(self, run_id: str) -> bool:
        """Whether this replica holds the run and its lease now (no I/O)."""
        return (super().holds(run_id) and run_id not in self._recovering
                and self.ownership.token(run_id) is not None)

    def get(self, run_id: str) -> Run:
        """The run, owned by this replica: taken over (and recovered) first when its lease is free.

        Raises:
            NotOwner: another replica owns it.
            UnknownRun: no such run in the store.
        """
        if not self.holds(run_id):
            check_run_id(run_id)
            self._own(run_id, creating=False)
        return super().get(run_id)

    def _own(self, run_id: str, creating: bool) -> None:
        with self._claiming:  # one takeover at a time; requests for the run wait for its recovery
            if self.holds(run_id):
                return
            before = self.ownership.last_token(run_id)
            lease = self.ownership.claim(run_id)
            if lease is None:
                raise self._elsewhere(run_id)
            log.info("run %s: lease taken by %s with token %d (before: %s)", run_id, self.ownership.replica_id,
                     lease.token, before)
            if lease.token == before and super().holds(run_id):
                return  # the same token: nobody else took the run meanwhile, the copy here is current
            self._retire(run_id)
            stored = self.shared.load_run(run_id)
            if stored.image is None and not stored.commands:
                if not creating:
                    self.ownership.release(run_id)
                    raise UnknownRun(f"run: no run {run_id!r}")
                return
            self._recovering.add(run_id)  # replay adds the run before it is complete: not served until done
            try:
                self.recover([stored])
            finally:
                self._recovering.discard(run_id)
            self.takeovers += 1
            log.info("run %s: taken over by replica %s (%d journal rows replayed)", run_id,
                     self.ownership.replica_id, len(stored.commands))

    def _retire(self, run_id: str) -> None:
        """Forget a copy that may be stale (the store has the truth), after any write in flight on it.

        Every copy is forgotten here, under its lock: a takeover's load then sees every write made
        through the old copy, and a write that gets the lock later is refused (``_append``).
        """
        old = self._runs.get(run_id)
        if old is None:
            return
        with old.lock:  # a write that gets the lock after this sees it retired (``_append``)
            self.forget(run_id)

    def _writable(self, run_id: str, run: Run) -> None:
        if self._runs.get(run_id) is not run:
            raise RunRetired(f"run {run_id!r}: this copy was replaced by a takeover; the write was not made")

    def _roll_back(self, run: Run) -> None:
        """A group applied in memory could not be journaled: forget this copy (the caller holds its
        lock); the next request takes the run over again from the store, as after a lost lease."""
        self.forget(run.spec.run_id)

    def _elsewhere(self, run_id: str) -> NotOwner:
        owner = self.ownership.owner(run_id)
        if owner is None or owner.owner == self.ownership.replica_id:
            return NotOwner(f"run {run_id!r}: its lease is changing hands; retry", None)
        return NotOwner(f"run {run_id!r} is owned by replica {owner.owner!r} at {owner.url}", owner.url)

    def _writing(self, run_id: str, write: Callable[[], T]) -> T:
        """Run a write; a refused token (the lease was lost meanwhile) drops the run and redirects."""
        try:
            try:
                return write()
            except RunRetired:
                return write()  # refused before anything changed: once more, on the current copy
        except StoreFenced as exc:
            token = self.ownership.token(run_id)
            self.ownership.lose(run_id, str(exc), token)
            self._retire(run_id)
            raise self._elsewhere(run_id) from exc

    # ------------------------------------------------------------ writes

    def create_run(self, raw: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create the run (taking its lease), or return it if it exists with the same spec."""
        run_id = parse_spec(raw).run_id
        if not self.holds(run_id):
            self._own(run_id, creating=True)
        return self._writing(run_id, lambda: super(ReplicaHost, self).create_run(raw))

    def open_session(self, run_id: str, rank: int) -> dict[str, Any]:
        """Open a session on the owned run."""
        return self._writing(run_id, lambda: super(ReplicaHost, self).open_session(run_id, rank))

    def ingest_many(self, run_id: str, deliveries: Sequence[Delivery]) -> list[dict[str, int] | ServiceError]:
        """Apply deliveries to the owned run with one journal transaction (``RunHost.ingest_many``)."""
        return self._writing(run_id, lambda: super(ReplicaHost, self).ingest_many(run_id, deliveries))

    def restore(self, run_id: str, session_id: str, snapshot: Mapping[str, Any]) -> dict[str, Any]:
        """Roll the owned run back to a snapshot's cut."""
        return self._writing(run_id, lambda: super(ReplicaHost, self).restore(run_id, session_id, snapshot))

    def finish(self, run_id: str) -> dict[str, float]:
        """Finish the owned run."""
        return self._writing(run_id, lambda: super(ReplicaHost, self).finish(run_id))

    def delete_run(self, run_id: str) -> None:
        """Delete the owned run, then give its lease up."""
        self.get(run_id)  # take it over first: the base class holds the host lock while it deletes
        self._writing(run_id, lambda: super(ReplicaHost, self).delete_run(run_id))
        self.ownership.release(run_id)

    # ------------------------------------------------------------ reads (any replica)

    def _copy(self, run_id: str) -> RunHost:
        """A read-only copy of a run owned elsewhere, rebuilt from the store."""
        check_run_id(run_id)
        copy = RunHost(store=ReadOnlyStore(self.shared, self.ownership), history_max_points=self.history_max_points)
        if copy.recover([self.shared.load_run(run_id)]) == 0:
            raise UnknownRun(f"run: no run {run_id!r}")
        return copy

    def info(self, run_id: str) -> dict[str, Any]:
        """A run's info, from this replica's copy when it owns the run, else from the store."""
        return super().info(run_id) if self.holds(run_id) else self._copy(run_id).info(run_id)

    def metrics(self, run_id: str) -> dict[str, Any]:
        """Latest values (see ``info`` for where they come from)."""
        return super().metrics(run_id) if self.holds(run_id) else self._copy(run_id).metrics(run_id)

    def history(self, run_id: str, keys: Sequence[str] | None, since_step: int | None,
                max_points: int | None) -> dict[str, Any]:
        """Series (see ``info`` for where they come from)."""
        if self.holds(run_id):
            return super().history(run_id, keys, since_step, max_points)
        return self._copy(run_id).history(run_id, keys, since_step, max_points)

    def summary(self, run_id: str) -> dict[str, Any]:
        """Best values (see ``info`` for where they come from)."""
        return super().summary(run_id) if self.holds(run_id) else self._copy(run_id).summary(run_id)

    def snapshot(self, run_id: str) -> dict[str, Any]:
        """A snapshot at every rank's current position (see ``info`` for where it comes from)."""
        return super().snapshot(run_id) if self.holds(run_id) else self._copy(run_id).snapshot(run_id)

    def checkpoint(self, run_id: str, checkpoint_id: str) -> dict[str, Any]:
        """A stored checkpoint from any replica; one still being cut from its owner."""
        if not self.holds(run_id):
            check_run_id(run_id)
            stored = self.shared.get_blob(run_id, "checkpoint", checkpoint_id)
            if stored is not None:
                return stored
        return super().checkpoint(run_id, checkpoint_id)  # ``get`` takes the run over or redirects

    def list_runs(self) -> list[dict[str, Any]]:
        """Every run in the store, owned here or elsewhere."""
        out = {row["run_id"]: row for row in super().list_runs() if self.holds(row["run_id"])}
        for run_id in sorted(set(self.shared.run_ids()) - set(out)):
            try:
                out.update((row["run_id"], row) for row in self._copy(run_id).list_runs())
            except StoreDamaged as exc:
                out[run_id] = {"run_id": run_id, "status": "damaged", "detail": str(exc)}
            except UnknownRun:
                continue  # deleted meanwhile
        return [out[run_id] for run_id in sorted(out)]
