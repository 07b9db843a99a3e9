"""The durable store as the runtime uses it: one protocol, several implementations.

A store keeps, per run, the journal of accepted commands (in order), one compact
recovery image that replaces the journal before it, and named documents (checkpoint
snapshots, restore bases). An ``append`` returns only once the command is durable: the
runtime acknowledges a delivery after it. ``service.storage.sqlite`` is the embedded
default.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class StoredRun:
    """What recovery needs of one run: its image (if any) and the commands after it."""

    run_id: str
    image: dict[str, Any] | None
    commands: list[tuple[int, str, dict[str, Any]]]


class Store(Protocol):
    """Durable state of every run. Methods raise ``StoreUnavailable`` when the store
    cannot read or write (the runtime then refuses writes with 503)."""

    def append(self, run_id: str, command: str, payload: Mapping[str, Any]) -> int:
        """Make one command durable; returns its id (increasing per store)."""

    def write_image(self, run_id: str, command_id: int, image: Mapping[str, Any]) -> None:
        """Replace the run's journal up to ``command_id`` by ``image`` (atomically)."""

    def put_blob(self, run_id: str, kind: str, key: str, value: Mapping[str, Any]) -> None:
        """Store a document under (run, kind, key), replacing any before it."""

    def get_blob(self, run_id: str, kind: str, key: str) -> dict[str, Any] | None:
        """A stored document, or None."""

    def delete_run(self, run_id: str) -> None:
        """Remove everything of a run."""

    def load(self) -> Iterator[StoredRun]:
        """Every run, in creation order, for recovery."""

    def probe(self) -> None:
        """Prove the store can write now; raises ``StoreUnavailable`` otherwise."""

    def close(self) -> None:
        """Release the store (make the data durable in its main files first)."""
