"""The bounded queue of records waiting to be sent.

``put`` is O(1) until the queue is full. Then, in order: the new record merges into the
latest queued record with the same key; else records that gained a same-key neighbour
since the last compaction are merged (``client._coalesce``: lossless); else the oldest
*data* record is dropped. Control records (end_epoch, complete, checkpoint) are never
dropped and never refused: they are rare and the service's bookkeeping depends on them.

Merging is lazy: an entry keeps its parts and ``take`` hands them out, so the caller
builds the merged record outside its lock. Keys are lazy too: while the queue has room
(the normal case) ``put`` only appends; the first time it is full, every queued record's
key is computed and the index is kept until the queue drains. Not thread-safe: the worker
holds its lock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from client._coalesce import Key, coalesce_key, record_nbytes, record_samples
from client._fastpath import PackedBatch, Record
from client._wire import BatchEvent, ScalarEvent

MAX_RECORD_BYTES = 4 * 2**20
MAX_RECORD_SAMPLES = 16_384  # well under the service's default limit per record (65,536)


@dataclass(eq=False, slots=True)
class _Entry:
    nbytes: int
    samples: int
    parts: list[Record] = field(default_factory=list)
    barrier: int = 0  # control records queued before this one (records never merge across one)
    control: bool = False
    key: Key | None = None  # computed once the queue is indexed
    alive: bool = True

    def can_take(self, nbytes: int, samples: int, max_bytes: int) -> bool:
        return self.nbytes + nbytes <= max_bytes and self.samples + samples <= MAX_RECORD_SAMPLES

    def take_in(self, parts: list[Record], nbytes: int, samples: int) -> None:
        self.parts.extend(parts)
        self.nbytes += nbytes
        self.samples += samples


@dataclass(frozen=True)
class Admission:
    """What putting one record did: records merged away and records dropped for room."""

    coalesced: int = 0
    dropped: int = 0


_ADMITTED = Admission()

class EventQueue:
    """A FIFO of at most ``max_items`` records (merged records count once).

    Args:
        max_items: capacity in queued (possibly merged) records.
        max_record_bytes: a merged record stops growing past this estimated size.
    """

    def __init__(self, max_items: int, max_record_bytes: int = MAX_RECORD_BYTES) -> None:
        self.max_items = max_items
        self.max_record_bytes = max_record_bytes
        self._reset()

    def _reset(self) -> None:
        self._entries: deque[_Entry] = deque()
        self._by_key: dict[Key, list[_Entry]] = {}
        self._dirty: set[Key] = set()
        self._indexed = False
        self._live = 0
        self._records = 0
        self._barriers = 0

    def __len__(self) -> int:
        return self._live

    @property
    def records(self) -> int:
        """Logged records held (a merged record counts each of its parts)."""
        return self._records

    def put(self, event: Record) -> Admission:
        """Queue ``event``, merging or dropping data records when full."""
        if self._live < self.max_items:
            self._append(event)
            return _ADMITTED
        self._index()
        key = coalesce_key(event, self._barriers)
        if key is not None and self._absorb(key, event):
            return Admission(coalesced=1)
        coalesced = self._compact()
        dropped = 0
        if self._live >= self.max_items:
            dropped = self._drop_oldest_data()
            if not dropped and key is not None:
                return Admission(coalesced, dropped=1)  # only control records queued
        self._append(event)
        return Admission(coalesced, dropped)

    def take(self, max_events: int, max_bytes: int) -> list[list[Record]]:
        """Remove up to ``max_events`` records (at least one if any) of about ``max_bytes``."""
        taken: list[list[Record]] = []
        size = 0
        while self._entries and len(taken) < max_events:
            entry = self._entries[0]
            if entry.alive and taken and size + entry.nbytes > max_bytes:
                break
            self._entries.popleft()
            if entry.alive:
                self._forget(entry)
                taken.append(entry.parts)
                size += entry.nbytes
        return taken

    def clear(self) -> int:
        """Drop everything; returns the number of logged records dropped."""
        dropped = self._records
        self._reset()
        return dropped

    def _append(self, event: Record) -> None:
        control = not isinstance(event, BatchEvent | PackedBatch | ScalarEvent)
        entry = _Entry(record_nbytes(event), record_samples(event), [event], self._barriers, control)
        self._barriers += control
        self._entries.append(entry)
        self._live += 1
        self._records += 1
        if self._indexed:
            self._link(entry)

    def _index(self) -> None:
        """Compute the keys of every queued record (once, when the queue first fills up)."""
        if self._indexed:
            return
        self._indexed = True
        for entry in self._entries:
            if entry.alive:
                self._link(entry)

    def _link(self, entry: _Entry) -> None:
        if entry.control:
            return
        entry.key = coalesce_key(entry.parts[0], entry.barrier)
        assert entry.key is not None
        same = self._by_key.setdefault(entry.key, [])
        if same:
            self._dirty.add(entry.key)
        same.append(entry)

    def _absorb(self, key: Key, event: Record) -> bool:
        same = self._by_key.get(key)
        nbytes, samples = record_nbytes(event), record_samples(event)
        if not same or not same[-1].can_take(nbytes, samples, self.max_record_bytes):
            return False
        same[-1].take_in([event], nbytes, samples)
        self._records += 1
        return True

    def _compact(self) -> int:
        merged = sum(self._compact_key(key) for key in self._dirty)
        self._dirty.clear()
        if len(self._entries) > 2 * self._live + 16:
            self._entries = deque(e for e in self._entries if e.alive)
        return merged

    def _compact_key(self, key: Key) -> int:
        survivors: list[_Entry] = []
        for entry in self._by_key.get(key, ()):
            target = survivors[-1] if survivors else None
            if target is None or not target.can_take(
                entry.nbytes, entry.samples, self.max_record_bytes
            ):
                survivors.append(entry)
                continue
            target.take_in(entry.parts, entry.nbytes, entry.samples)
            entry.alive = False
            self._live -= 1
        merged = len(self._by_key.get(key, ())) - len(survivors)
        if survivors:
            self._by_key[key] = survivors
        return merged

    def _drop_oldest_data(self) -> int:
        for entry in self._entries:
            if entry.alive and not entry.control:
                entry.alive = False
                self._forget(entry)
                return len(entry.parts)
        return 0

    def _forget(self, entry: _Entry) -> None:
        """Unlink a live entry that leaves the queue (it is the oldest of its key)."""
        self._live -= 1
        self._records -= len(entry.parts)
        if not self._live:  # drained: back to plain appends
            self._by_key.clear()
            self._dirty.clear()
            self._indexed = False
        if entry.key is None or not self._indexed:
            return
        same = self._by_key[entry.key]
        same.remove(entry)
        if not same:
            del self._by_key[entry.key]
