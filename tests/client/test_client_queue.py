"""The bounded queue: lossless coalescing first, then counted drops of data records only."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pytest

from client import MetricsClient
from client._coalesce import merge
from client._queue import MAX_RECORD_SAMPLES, EventQueue
from client._wire import (
    BatchEvent,
    CheckpointEvent,
    CompleteEvent,
    EndEpochEvent,
    Event,
    ScalarEvent,
    decode_event,
    encode_event,
)
from tests.client.client_fakes import FakeService, random_batch

Make = Callable[..., MetricsClient]


def batch(
    step: int,
    size: int = 2,
    *,
    phase: str = "val",
    loss: float | None = 1.0,
    labels: list[str] | None = None,
    seed: int = 0,
) -> BatchEvent:
    rng = np.random.default_rng(seed)
    data = random_batch(rng, size)
    subsets = {}
    if labels is not None:
        vocabulary = sorted(set(labels))
        subsets["rarity"] = (vocabulary, np.array([vocabulary.index(v) for v in labels]))
    return BatchEvent(
        step=step,
        epoch=0,
        phase=phase,
        time=float(seed),
        sizes=[size],
        losses=None if loss is None else [loss],
        task_losses={"genus": [0.5 + seed]},
        subsets=subsets,
        **data,
    )


def lr(step: int, **values: float) -> ScalarEvent:
    return ScalarEvent("lr", step, 1.0, dict(values))


def drain(queue: EventQueue) -> list[Event]:
    return [merge(parts) for parts in queue.take(10**6, 10**12)]


def test_fifo_below_capacity() -> None:
    queue = EventQueue(10)
    events: list[Event] = [lr(1, a=1.0), EndEpochEvent("val", 0, 2.0), lr(1, a=2.0)]
    for event in events:
        assert queue.put(event).coalesced == 0
    assert len(queue) == 3 and queue.records == 3
    assert drain(queue) == events
    assert len(queue) == 0


def test_full_queue_merges_a_same_key_record_into_the_latest() -> None:
    queue = EventQueue(2)
    first, second, third = batch(5, 2, seed=1), batch(5, 3, seed=2), batch(5, 4, seed=3)
    queue.put(first)
    queue.put(lr(4, a=1.0))
    assert queue.put(second).coalesced == 1
    assert queue.put(third).coalesced == 1
    assert len(queue) == 2 and queue.records == 4
    merged, scalar = drain(queue)
    assert isinstance(merged, BatchEvent) and scalar == lr(4, a=1.0)
    assert merged.sizes == [2, 3, 4] and merged.losses == [1.0, 1.0, 1.0]
    assert merged.task_losses == {"genus": [1.5, 2.5, 3.5]}
    assert merged.time == 3.0
    for task in first.targets:
        expected = np.concatenate([b.targets[task] for b in (first, second, third)])
        np.testing.assert_array_equal(merged.targets[task], expected)
        assert merged.topk[task].shape == (9, 3)


def test_compaction_merges_earlier_same_key_records_before_dropping() -> None:
    queue = EventQueue(3)
    queue.put(lr(1, a=1.0, b=1.0))
    queue.put(lr(2, a=1.0))
    queue.put(lr(1, a=2.0))
    admission = queue.put(lr(3, a=1.0))
    assert (admission.coalesced, admission.dropped) == (1, 0)
    assert drain(queue) == [lr(1, a=2.0, b=1.0), lr(2, a=1.0), lr(3, a=1.0)]


def test_drops_the_oldest_data_record_never_a_control_record() -> None:
    queue = EventQueue(3)
    queue.put(CompleteEvent(0))
    queue.put(lr(1, a=1.0))
    queue.put(lr(2, a=1.0))
    assert queue.put(lr(3, a=1.0)).dropped == 1
    assert queue.put(CheckpointEvent("3")).dropped == 1
    assert drain(queue) == [CompleteEvent(0), lr(3, a=1.0), CheckpointEvent("3")]


def test_control_records_are_kept_past_capacity_and_data_is_refused() -> None:
    queue = EventQueue(2)
    for i in range(3):
        assert queue.put(CompleteEvent(i)).dropped == 0
    assert queue.put(lr(5, a=1.0)).dropped == 1
    assert drain(queue) == [CompleteEvent(0), CompleteEvent(1), CompleteEvent(2)]


def test_records_never_merge_across_a_control_record() -> None:
    queue = EventQueue(3)
    queue.put(batch(5, seed=1))
    queue.put(CheckpointEvent("5"))
    queue.put(batch(5, seed=2))
    admission = queue.put(batch(6, seed=3))
    assert (admission.coalesced, admission.dropped) == (0, 1)
    kinds = [(e.kind, getattr(e, "step", None)) for e in drain(queue)]
    assert kinds == [("checkpoint", None), ("batch", 5), ("batch", 6)]


def test_records_with_different_fields_do_not_merge() -> None:
    queue = EventQueue(1)
    queue.put(batch(5, loss=1.0))
    assert queue.put(batch(5, loss=None)).dropped == 1
    queue.put(batch(5, labels=["a", "b"]))
    assert queue.put(batch(5, loss=None)).dropped == 1


def test_merged_records_stop_growing_at_max_record_bytes() -> None:
    queue = EventQueue(1, max_record_bytes=500)
    queue.put(batch(5, 2, seed=1))
    admission = queue.put(batch(5, 50, seed=2))
    assert (admission.coalesced, admission.dropped) == (0, 1)


def test_subset_vocabularies_merge_and_codes_are_remapped() -> None:
    merged = merge(
        [
            batch(5, 3, labels=["rare", "common", "rare"], seed=1),
            batch(5, 2, labels=["very_rare", "common"], seed=2),
        ]
    )
    assert isinstance(merged, BatchEvent)
    vocabulary, codes = merged.subsets["rarity"]
    assert vocabulary == ["common", "rare", "very_rare"]
    assert [vocabulary[c] for c in codes] == ["rare", "common", "rare", "very_rare", "common"]


@pytest.mark.parametrize("binary", [True, False])
def test_a_merged_batch_survives_the_wire(binary: bool) -> None:
    merged = merge(
        [
            batch(5, 3, labels=["rare", "common", "rare"], seed=1),
            batch(5, 2, labels=["common", "common"], seed=2),
        ]
    )
    decoded = decode_event(encode_event(merged, binary))
    assert isinstance(decoded, BatchEvent)
    assert decoded.sizes == [3, 2] and decoded.losses == [1.0, 1.0]
    assert decoded.task_losses == {"genus": [1.5, 2.5]}
    vocabulary, codes = decoded.subsets["rarity"]
    assert [vocabulary[c] for c in codes] == ["rare", "common", "rare", "common", "common"]


def test_scalar_merge_keeps_later_values_and_directions() -> None:
    merged = merge(
        [
            ScalarEvent("custom", 3, 1.0, {"a": 1.0, "b": 2.0}, {"a": True}),
            ScalarEvent("custom", 3, 2.0, {"a": 5.0}, {}),
        ]
    )
    assert merged == ScalarEvent("custom", 3, 2.0, {"a": 5.0, "b": 2.0}, {"a": True})


def test_queue_full_coalescing_is_lossless_end_to_end(
    service: FakeService, make_client: Make
) -> None:
    service.down = True
    mc = make_client(max_queue_items=5)  # the merged batches, one lr per step, the flush's mark
    rng = np.random.default_rng(7)
    logged = []
    for i in range(12):
        size = int(rng.integers(1, 6))
        data = random_batch(rng, size)
        labels = list(rng.choice(["common", "rare"], size=size))
        mc.log_batch(
            40,
            epoch=1,
            phase="val",
            loss=float(i),
            task_losses={"species": 10.0 + i},
            subsets={"rarity": labels},
            **data,
        )
        logged.append((size, data, labels))
    for step in range(3):
        mc.log_lr(step, {"backbone": 0.1 * step})
        mc.log_lr(step, {"head": 0.2 * step})
    stats = mc.stats()
    assert stats["coalesced"] > 0 and stats["dropped"]["queue_full"] == 0
    service.down = False
    assert mc.flush(5)
    got = service.batches()
    assert sum(b.batch_size for b in got) == sum(size for size, _, _ in logged)
    assert [s for b in got for s in b.sizes] == [size for size, _, _ in logged]
    assert [v for b in got for v in b.losses or ()] == [float(i) for i in range(12)]
    assert [v for b in got for v in b.task_losses["species"]] == [10.0 + i for i in range(12)]
    for task in ("genus", "species"):
        expected = np.concatenate([data["targets"][task] for _, data, _ in logged])
        np.testing.assert_array_equal(np.concatenate([b.targets[task] for b in got]), expected)
    labels = [b.subsets["rarity"][0][c] for b in got for c in b.subsets["rarity"][1]]
    assert labels == [label for _, _, lab in logged for label in lab]
    lrs = {e.step: e.values for e in service.events(ScalarEvent)}
    assert lrs == {s: {"backbone": 0.1 * s, "head": 0.2 * s} for s in range(3)}
    stats = mc.stats()
    assert stats["queued"] == stats["delivered"] == 19  # 12 batches, 6 lr, 1 completion mark


def test_queue_full_drops_are_counted_and_logged_once(
    service: FakeService, make_client: Make, caplog: pytest.LogCaptureFixture
) -> None:
    service.down = True
    mc = make_client(max_queue_items=3)
    rng = np.random.default_rng(8)
    with caplog.at_level(logging.WARNING, logger="client"):
        for step in range(6):
            mc.log_batch(step, epoch=0, **random_batch(rng, 2))
        mc.end_epoch("train", 0)
    assert mc.stats()["dropped"]["queue_full"] == 4
    assert len([r for r in caplog.records if "dropping metrics records" in r.getMessage()]) == 1
    service.down = False
    assert mc.flush(5) is False  # the rest is delivered, but four records were dropped
    assert mc.stats()["pending"] == 0
    assert [b.step for b in service.batches()] == [4, 5]
    assert isinstance(service.events()[-1], EndEpochEvent)
    stats = mc.stats()
    assert stats["queued"] == stats["delivered"] + stats["dropped"]["queue_full"]


def test_merged_records_stop_growing_at_the_sample_limit() -> None:
    queue = EventQueue(1)
    queue.put(batch(5, MAX_RECORD_SAMPLES - 1, seed=1))
    assert queue.put(batch(5, 1, seed=2)).coalesced == 1
    assert queue.put(batch(5, 1, seed=3)).dropped == 2  # the full merged record of two
