"""The bounded queue of records waiting to be sent.

``put`` is O(1) amortised, full or not. When the queue is full, in order: the new record
merges into the latest queued record with the same key; else records that gained a
mergeable same-key neighbour are merged (``client._coalesce``: lossless), until one slot
is free; else the oldest *data* record is dropped. Control records (end_epoch, complete,
checkpoint) are never dropped and never refused: they are rare and the service's
bookkeeping depends on them.

Merging is lazy: an entry keeps its parts and ``take`` hands them out, so the caller
builds the merged record outside its lock. Keys are lazy too: while the queue is less
than half full (the normal case) ``put`` only appends. From half full on, each ``put``
keys three records, oldest first, so the index is complete by the time the queue is full
and no single ``put`` computes the keys of the whole queue. The index is kept until the
queue drains. Not thread-safe: the worker holds its lock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import NamedTuple

from client._coalesce import Key, coalesce_key, record_nbytes, record_samples
from client._fastpath import PackedBatch, Record
from client._wire import BatchEvent, ScalarEvent

MAX_RECORD_BYTES = 4 * 2**20
MAX_RECORD_SAMPLES = 16_384  # well under the service's default limit per record (65,536)
LINKS_PER_PUT = 3  # records keyed per put from half full: the backlog is gone before the queue is full


@dataclass(eq=False, slots=True)
class _Entry:
    nbytes: int
    samples: int
    parts: list[Record] = field(default_factory=list)
    barrier: int = 0  # control records queued before this one (records never merge across one)
    control: bool = False
    key: Key | None = None  # computed from half full on
    group: _Group | None = None  # the group of its key, once keyed: leaving needs no lookup
    alive: bool = True

    def can_take(self, nbytes: int, samples: int, max_bytes: int) -> bool:
        return self.nbytes + nbytes <= max_bytes and self.samples + samples <= MAX_RECORD_SAMPLES

    def take_in(self, other: _Entry) -> None:
        self.parts.extend(other.parts)
        self.nbytes += other.nbytes
        self.samples += other.samples


def _entry(event: Record, barrier: int) -> _Entry:
    if type(event) is PackedBatch:  # the common case first
        return _Entry(event.nbytes, event.layout.size, [event], barrier)
    control = not isinstance(event, BatchEvent | ScalarEvent)
    return _Entry(record_nbytes(event), record_samples(event), [event], barrier, control)


class _Group:
    """The queued records of one key, oldest first.

    ``entries[:clean]`` were compacted: none of them fits into the one before it, and only
    the last of them can still grow, so compaction resumes at ``clean``.
    """

    __slots__ = ("clean", "entries")

    def __init__(self) -> None:
        self.entries: list[_Entry] = []
        self.clean = 0


class Admission(NamedTuple):
    """What putting one record did: records merged away and records dropped for room."""

    coalesced: int = 0
    dropped: int = 0


_ADMITTED = Admission()
_DROPPED_ONE = Admission(dropped=1)  # the usual put into a full queue: the oldest record goes


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
        self._entries: deque[_Entry] = deque()  # every record in order (dead ones skipped)
        self._data: deque[_Entry] = deque()  # data records in order: the drop candidates
        self._unlinked: deque[_Entry] = deque()  # data records without a key yet, in order
        self._groups: dict[Key, _Group] = {}
        self._dirty: deque[Key] = deque()  # groups that may merge, in the order they became so
        self._dirty_set: set[Key] = set()
        self._linking = False
        self.live = 0  # queued records, a merged one counting once (len(queue) without a call)
        self._records = 0
        self._barriers = 0

    def __len__(self) -> int:
        return self.live

    @property
    def records(self) -> int:
        """Logged records held (a merged record counts each of its parts)."""
        return self._records

    def put(self, event: Record) -> Admission:
        """Queue ``event``, merging or dropping data records when full."""
        if self.live < self.max_items:
            self._append(_entry(event, self._barriers))
            if 2 * self.live >= self.max_items:
                self._link_some(LINKS_PER_PUT)
            return _ADMITTED
        # full: every call from here on (service down), so the common case calls as little as it can
        if self._unlinked or not self._linking:
            self._link_some(len(self._unlinked))
        entry = _entry(event, self._barriers)
        if not entry.control:
            entry.key = coalesce_key(event, entry.barrier)
            group = self._groups.get(entry.key)  # type: ignore[arg-type]  # a data record has a key
            if group is not None and group.entries[-1].can_take(entry.nbytes, entry.samples, self.max_record_bytes):
                group.entries[-1].take_in(entry)  # into the latest record of its key
                self._records += 1
                return Admission(coalesced=1)
        coalesced = self._compact_until_room() if self._dirty else 0
        dropped = 0
        if self.live >= self.max_items:
            dropped = self._drop_oldest_data()
            if not dropped and not entry.control:
                return Admission(coalesced, dropped=1)  # only control records queued
        self._append(entry)
        self._sweep()
        return _DROPPED_ONE if not coalesced and dropped == 1 else Admission(coalesced, dropped)

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
                taken.append(entry.parts)
                size += entry.nbytes
                self._forget(entry)
        return taken

    def clear(self) -> int:
        """Drop everything; returns the number of logged records dropped."""
        dropped = self._records
        self._reset()
        return dropped

    def _append(self, entry: _Entry) -> None:
        self._barriers += entry.control
        self._entries.append(entry)
        self.live += 1
        self._records += 1
        if entry.control:
            return
        self._data.append(entry)
        if self._linking and not self._unlinked:  # keyed in logging order: groups stay FIFO
            self._link(entry)
        else:
            self._unlinked.append(entry)

    def _link_some(self, count: int) -> None:
        """Key ``count`` of the oldest records without one; new records are keyed on arrival."""
        self._linking = True
        unlinked = self._unlinked
        for _ in range(min(count, len(unlinked))):
            self._link(unlinked.popleft())

    def _link(self, entry: _Entry) -> None:
        if entry.key is None:
            entry.key = coalesce_key(entry.parts[0], entry.barrier)
            assert entry.key is not None
        group = self._groups.get(entry.key)
        if group is None:
            group = self._groups[entry.key] = _Group()
        entry.group = group
        entries = group.entries
        if group.clean == len(entries) and not (
            entries and entries[-1].can_take(entry.nbytes, entry.samples, self.max_record_bytes)
        ):
            group.clean += 1  # nothing to merge it with: the group stays compacted
        elif entry.key not in self._dirty_set:
            self._dirty_set.add(entry.key)
            self._dirty.append(entry.key)
        entries.append(entry)

    def _compact_until_room(self) -> int:
        """Merge dirty groups, oldest first, until one slot is free or none is left."""
        merged = 0
        while self._dirty and self.live >= self.max_items:
            key = self._dirty.popleft()
            self._dirty_set.discard(key)
            group = self._groups.get(key)
            if group is not None:
                merged += self._compact(group)
        return merged

    def _compact(self, group: _Group) -> int:
        entries = group.entries
        kept = entries[: max(group.clean, 1)]
        for entry in entries[len(kept):]:
            target = kept[-1]
            if not target.can_take(entry.nbytes, entry.samples, self.max_record_bytes):
                kept.append(entry)
                continue
            target.take_in(entry)
            entry.alive, entry.parts = False, []
            self.live -= 1
        group.entries, group.clean = kept, len(kept)
        return len(entries) - len(kept)

    def _drop_oldest_data(self) -> int:
        while self._data:
            entry = self._data[0]
            if not entry.alive:
                self._data.popleft()
                continue
            dropped = len(entry.parts)
            self._forget(entry)
            entry.alive, entry.parts = False, []  # its arrays go now, not when the entry leaves
            return dropped
        return 0

    def _forget(self, entry: _Entry) -> None:
        """Unlink a live entry that leaves the queue (it is the oldest of its key)."""
        self.live -= 1
        self._records -= len(entry.parts)
        if not self.live:  # drained: back to plain appends (dead entries are left to skip)
            self._reset_index()
            return
        if entry.control:
            return
        data = self._data
        while data[0] is not entry:  # dead records merged away or dropped before it
            data.popleft()
        data.popleft()
        if entry.key is None:  # the oldest unkeyed record
            self._unlinked.popleft()
            return
        group = entry.group
        assert group is not None  # keyed entries are linked
        del group.entries[0]
        group.clean = max(group.clean - 1, 0)
        if not group.entries:
            del self._groups[entry.key]

    def _reset_index(self) -> None:
        self._data.clear()
        self._unlinked.clear()
        self._groups.clear()
        self._dirty.clear()
        self._dirty_set.clear()
        self._linking = False

    def _sweep(self) -> None:
        """Forget dead entries once they outnumber the live ones (amortised O(1))."""
        entries = self._entries
        while entries and not entries[0].alive:
            entries.popleft()
        if len(entries) > 2 * self.live + 16:
            self._entries = deque(e for e in entries if e.alive)
        if len(self._data) > 2 * self.live + 16:
            self._data = deque(e for e in self._data if e.alive)
