"""The shared store as one replica's runtime sees it: every write carries the replica's lease token.

``FencedStore`` puts the token of the run's lease (from ``Ownership``) on each write, so
the runtime (``RunHost``) writes exactly as it does to the embedded store, and a write for
a run whose lease this replica no longer holds is refused before it leaves the process
(and by the database if it got that far). ``ReadOnlyStore`` is what a read-only copy of a
run owned elsewhere is rebuilt from: it reads, and never writes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from service.core.errors import StoreFenced
from service.runtime.ownership import LeaseStore, Ownership
from service.storage.base import StoredRun


class SharedStore(LeaseStore, Protocol):
    """The methods of the PostgreSQL store the runtime uses."""

    def append(self, run_id: str, command: str, payload: Mapping[str, Any], *, token: int | None = None) -> int:
        """Make one command durable."""

    def append_many(self, run_id: str, command: str, payloads: Sequence[Mapping[str, Any]], *,
                    token: int | None = None) -> int:
        """Make several commands durable in one transaction."""

    def write_image(self, run_id: str, command_id: int, image: Mapping[str, Any], *,
                    token: int | None = None) -> None:
        """Replace the journal prefix by an image."""

    def put_blob(self, run_id: str, kind: str, key: str, value: Mapping[str, Any], *,
                 token: int | None = None) -> None:
        """Store a document."""

    def get_blob(self, run_id: str, kind: str, key: str) -> dict[str, Any] | None:
        """A stored document."""

    def delete_run(self, run_id: str, *, token: int | None = None) -> None:
        """Remove a run's data."""

    def load_run(self, run_id: str) -> StoredRun:
        """One run's image and journal tail."""

    def run_ids(self) -> list[str]:
        """Every stored run."""

    def probe(self) -> None:
        """A real write."""

    def close(self) -> None:
        """Close."""


class FencedStore:
    """``store`` with the writer's lease token on every write (a ``Store`` for ``RunHost``)."""

    def __init__(self, store: SharedStore, ownership: Ownership) -> None:
        self.store, self.ownership = store, ownership

    def _token(self, run_id: str) -> int:
        token = self.ownership.token(run_id)
        if token is None:
            raise StoreFenced(f"run {run_id!r}: replica {self.ownership.replica_id!r} no longer holds its lease")
        return token

    def append(self, run_id: str, command: str, payload: Mapping[str, Any]) -> int:
        """Journal one command under the run's lease."""
        return self.store.append(run_id, command, payload, token=self._token(run_id))

    def append_many(self, run_id: str, command: str, payloads: Sequence[Mapping[str, Any]]) -> int:
        """Journal several commands in one transaction under the run's lease."""
        return self.store.append_many(run_id, command, payloads, token=self._token(run_id))

    def load_run(self, run_id: str) -> StoredRun:
        """One run's image and journal tail (reads need no lease)."""
        return self.store.load_run(run_id)

    def write_image(self, run_id: str, command_id: int, image: Mapping[str, Any]) -> None:
        """Compact the run's journal under its lease."""
        self.store.write_image(run_id, command_id, image, token=self._token(run_id))

    def put_blob(self, run_id: str, kind: str, key: str, value: Mapping[str, Any]) -> None:
        """Store a document under the run's lease."""
        self.store.put_blob(run_id, kind, key, value, token=self._token(run_id))

    def get_blob(self, run_id: str, kind: str, key: str) -> dict[str, Any] | None:
        """A stored document (reads need no lease)."""
        return self.store.get_blob(run_id, kind, key)

    def delete_run(self, run_id: str) -> None:
        """Remove the run's data under its lease."""
        self.store.delete_run(run_id, token=self._token(run_id))

    def load(self) -> Iterator[StoredRun]:
        """Nothing: a replica recovers a run when it takes its lease, not at start."""
        return iter(())

    def probe(self) -> None:
        """A real write to the database."""
        self.store.probe()

    def close(self) -> None:
        """Close the database connection."""
        self.store.close()


class ReadOnlyStore(FencedStore):
    """Reads of the shared store; writes are dropped (a read-only copy never persists anything)."""

    def append(self, run_id: str, command: str, payload: Mapping[str, Any]) -> int:
        """Not kept."""
        return 0

    def append_many(self, run_id: str, command: str, payloads: Sequence[Mapping[str, Any]]) -> int:
        """Not kept."""
        return 0

    def write_image(self, run_id: str, command_id: int, image: Mapping[str, Any]) -> None:
        """Not kept."""

    def put_blob(self, run_id: str, kind: str, key: str, value: Mapping[str, Any]) -> None:
        """Not kept: the owner writes it."""

    def delete_run(self, run_id: str) -> None:
        """Not kept."""
