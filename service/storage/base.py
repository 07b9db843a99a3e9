"""The durable store as the runtime uses it: one protocol, several implementations.

A store keeps, per run, the journal of accepted commands (in order), one compact
recovery image that replaces the journal before it, and named documents (checkpoint
snapshots, restore bases). An ``append`` returns only once the command is durable: the
runtime acknowledges a delivery after it. ``service.storage.sqlite`` is the embedded
default.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class StoredRun:
    """What recovery needs of one run: its image (if any) and the commands after it.

    ``damage`` says why the run's stored data cannot be read (recovery quarantines the run
    and keeps its data as it is); image and commands are then empty.
    """

    run_id: str
    image: dict[str, Any] | None
    commands: list[tuple[int, str, dict[str, Any]]]
    damage: str | None = None


class Store(Protocol):
    """Durable state of every run. Methods raise ``StoreUnavailable`` when the store
    cannot read or write (the runtime then refuses writes with 503)."""

    def append(self, run_id: str, command: str, payload: Mapping[str, Any]) -> int:
        """Make one command durable; returns its id (increasing per store)."""

    def append_many(self, run_id: str, command: str, payloads: Sequence[Mapping[str, Any]]) -> int:
        """Make several commands durable in ONE transaction (all or none, one sync to disk);
        returns the last one's id."""

    def write_image(self, run_id: str, command_id: int, image: Mapping[str, Any]) -> None:
        """Replace the run's journal up to ``command_id`` by ``image`` (atomically)."""

    def put_blob(self, run_id: str, kind: str, key: str, value: Mapping[str, Any]) -> None:
        """Store a document under (run, kind, key), replacing any before it."""

    def get_blob(self, run_id: str, kind: str, key: str) -> dict[str, Any] | None:
        """A stored document, or None."""

    def delete_run(self, run_id: str) -> None:
        """Remove everything of a run."""

    def load(self) -> Iterator[StoredRun]:
        """Every run, in creation order, for recovery; a run that cannot be read comes with
        its ``damage`` (the other runs still come)."""

    def load_run(self, run_id: str) -> StoredRun:
        """One run's image and journal tail (StoreDamaged: a row cannot be decoded)."""

    def probe(self) -> None:
        """Prove the store can write now; raises ``StoreUnavailable`` otherwise."""

    def close(self) -> None:
        """Release the store (make the data durable in its main files first)."""
