"""The full queue's overflow path: exact counts, no loss before the bound, order kept, O(1) work."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

import client._queue as queue_module
from client._coalesce import Key, coalesce_key, merge
from client._fastpath import Record
from client._queue import LINKS_PER_PUT, EventQueue
from client._wire import BatchEvent, CheckpointEvent, EndEpochEvent, Event, ScalarEvent
from tests.client.test_client_queue import batch

Logged = list[Event]


def record(step: int, ident: int) -> ScalarEvent:
    """A data record whose value names it, so every merged part can be traced back."""
    return ScalarEvent("custom", step, float(ident), {f"id{ident}": float(ident)})


def idents(event: Event) -> list[int]:
    assert isinstance(event, ScalarEvent)
    return [int(v) for v in event.values.values()]


def put_all(queue: EventQueue, events: Sequence[Event]) -> tuple[int, int]:
    coalesced = dropped = 0
    for event in events:
        admission = queue.put(event)
        coalesced, dropped = coalesced + admission.coalesced, dropped + admission.dropped
    return coalesced, dropped


def random_stream(rng: np.random.Generator, count: int, steps: int, controls: float) -> Logged:
    events: Logged = []
    for ident in range(count):
        if rng.random() < controls:
            events.append(CheckpointEvent(f"c{ident}"))
        else:
            events.append(record(int(rng.integers(0, steps)), ident))
    return events


@pytest.mark.parametrize("seed", range(4))
def test_distinct_keys_within_capacity_never_drop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    capacity, steps = 64, 40  # fewer distinct keys than slots: merging always makes room
    events = [record(int(rng.integers(0, steps)), i) for i in range(5_000)]
    queue = EventQueue(capacity)
    coalesced, dropped = put_all(queue, events)
    assert dropped == 0 and len(queue) <= capacity and queue.records == len(events)
    got = [merge(parts) for parts in queue.take(10**9, 10**15)]
    assert coalesced == len(events) - len(got)
    by_step: dict[int, list[int]] = {}
    for event in events:
        assert isinstance(event, ScalarEvent)
        by_step.setdefault(event.step, []).extend(idents(event))
    got_by_step: dict[int, list[int]] = {}
    for merged in got:
        assert isinstance(merged, ScalarEvent)
        got_by_step.setdefault(merged.step, []).extend(idents(merged))
    assert got_by_step == by_step


def test_distinct_records_drop_the_oldest_and_keep_the_newest_in_order() -> None:
    capacity = 100
    events: Logged = [record(step, step) for step in range(1_000)]
    queue = EventQueue(capacity)
    coalesced, dropped = put_all(queue, events)
    assert (coalesced, dropped) == (0, 900) and queue.records == 100
    assert [idents(merge(p))[0] for p in queue.take(10**9, 10**15)] == list(range(900, 1_000))


def test_control_records_stay_and_drops_skip_them() -> None:
    queue = EventQueue(10)
    events: Logged = []
    for step in range(50):
        events.append(record(step, step))
        if step % 10 == 0:
            events.append(EndEpochEvent("val", step, 0.0))
    coalesced, dropped = put_all(queue, events)
    kept = [merge(p) for p in queue.take(10**9, 10**15)]
    controls = [e for e in kept if isinstance(e, EndEpochEvent)]
    data = [idents(e)[0] for e in kept if isinstance(e, ScalarEvent)]
    assert [e.epoch for e in controls] == [0, 10, 20, 30, 40]
    assert data == list(range(45, 50)) and (coalesced, dropped) == (0, 45)


@pytest.mark.parametrize("seed", range(6))
def test_random_overflow_counts_exactly_and_keeps_order(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    events = random_stream(rng, 6_000, steps=int(rng.integers(5, 400)), controls=0.01)
    queue, delivered, dropped = EventQueue(int(rng.integers(1, 300))), [], 0
    bound = queue.max_items + sum(isinstance(e, CheckpointEvent) for e in events)
    for event in events:
        dropped += queue.put(event).dropped
        assert len(queue) <= bound
        if rng.random() < 0.02:  # the sender takes a delivery now and then
            delivered += [p for parts in queue.take(int(rng.integers(1, 50)), 10**15) for p in parts]
    delivered += [p for parts in queue.take(10**9, 10**15) for p in parts]
    assert len(delivered) + dropped == len(events)
    assert [e for e in delivered if isinstance(e, CheckpointEvent)] == [
        e for e in events if isinstance(e, CheckpointEvent)
    ]
    check_order(events, delivered)


def check_order(logged: Logged, delivered: Sequence[Record]) -> None:
    """Same-key records arrive in logging order and none crosses a control record."""
    barrier_of: dict[int, float] = {}
    barrier = 0.0
    for event in logged:
        if isinstance(event, CheckpointEvent):
            barrier += 1
            barrier_of[id(event)] = barrier - 0.5
        else:
            barrier_of[id(event)] = barrier
    order = [barrier_of[id(e)] for e in delivered]
    assert order == sorted(order)
    last: dict[Key, int] = {}
    for part in delivered:
        if isinstance(part, ScalarEvent):
            key, ident = (barrier_of[id(part)], part.step), idents(part)[0]
            assert ident > last.get(key, -1)
            last[key] = ident


def test_merged_batches_keep_their_arrays_in_logging_order() -> None:
    queue = EventQueue(4)
    logged = [batch(step % 3, 2, seed=step) for step in range(30)]
    coalesced, dropped = put_all(queue, logged)
    taken = queue.take(10**9, 10**15)
    assert dropped == 0 and coalesced == len(logged) - len(taken)
    got: dict[int, list[BatchEvent]] = {}
    for parts in taken:
        merged = merge(parts)
        assert isinstance(merged, BatchEvent)
        got.setdefault(merged.step, []).append(merged)
    for step, merged_batches in got.items():
        expected = [b for b in logged if b.step == step]
        assert [t for m in merged_batches for t in m.task_losses["genus"]] == [
            b.task_losses["genus"][0] for b in expected
        ]
        for task in expected[0].targets:
            np.testing.assert_array_equal(
                np.concatenate([m.targets[task] for m in merged_batches]),
                np.concatenate([b.targets[task] for b in expected]),
            )


def test_no_put_keys_more_than_a_few_records(monkeypatch: pytest.MonkeyPatch) -> None:
    """The overflow path never walks the queue: keys computed per put stay bounded."""
    calls = [0]
    real = coalesce_key

    def counting(event: object, barrier: int) -> Key | None:
        calls[0] += 1
        return real(event, barrier)  # type: ignore[arg-type]

    monkeypatch.setattr(queue_module, "coalesce_key", counting)
    queue, most = EventQueue(2_000), 0
    for ident in range(10_000):
        before = calls[0]
        queue.put(record(ident // 2, ident))  # two records a step: merges as well as drops
        most = max(most, calls[0] - before)
    assert most <= LINKS_PER_PUT + 1
    assert len(queue) == 2_000


def test_a_record_that_drops_the_last_of_its_key_starts_that_key_anew() -> None:
    """The drop can empty the group the new record's key found: the next same-key record merges into the new one."""
    big = ScalarEvent("custom", 7, 0.0, {f"v{i}": float(i) for i in range(10)})  # too big to take another
    second, third = record(7, 1), record(7, 2)
    queue = EventQueue(1, max_record_bytes=400)  # the two small ones fit together, the big one with neither
    assert queue.put(big).dropped == 0
    assert queue.put(second).dropped == 1  # the big one goes: it was the only queued record of the key
    assert queue.put(third).coalesced == 1  # into the second one, which holds the key now
    assert [[idents(p)[0] for p in parts] for parts in queue.take(10, 10**9)] == [[1, 2]]
    assert queue.records == 0 and len(queue) == 0
