"""Delivery: run creation, sessions, encodings, retries, fencing, lost runs, rejections."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import httpx
import numpy as np
import pytest

from client import MetricsClient
from client._wire import (
    JSON_TYPE,
    MSGPACK_TYPE,
    BatchEvent,
    CheckpointEvent,
    CompleteEvent,
    EndEpochEvent,
    ScalarEvent,
)
from client._worker import MAX_DELIVERY_BYTES
from tests.client.client_fakes import TASKS, FakeService, random_batch

Make = Callable[..., MetricsClient]


def test_creates_the_run_and_opens_a_session(service: FakeService, make_client: Make) -> None:
    mc = make_client(
        config={"METRICS": {"STEP_INTERVAL": 10}}, subsets={"rarity": ["rare", "common"]}
    )
    mc.log_lr(0, {"backbone": 0.1})
    assert mc.flush(5)
    assert service.runs["exp"] == {
        "run_id": "exp",
        "world_size": 1,
        "total_steps": 100,
        "tasks": [
            {"name": "genus", "num_classes": 5, "null_index": 0},
            {"name": "species", "num_classes": 10, "null_index": 0},
        ],
        "subsets": {"rarity": ["rare", "common"]},
        "config": {"METRICS": {"STEP_INTERVAL": 10}},
    }
    session = service.latest[("exp", 0)]
    assert service.sessions[session].next_seq == 2  # the lr record and the flush's complete mark


@pytest.mark.parametrize("binary", [True, False], ids=["msgpack", "json"])
def test_batches_arrive_equal_to_what_was_logged(
    service: FakeService, make_client: Make, binary: bool
) -> None:
    mc = make_client(binary=binary)
    rng = np.random.default_rng(1)
    logged = []
    for step in range(3):
        batch = random_batch(rng, 4 + step)
        labels = rng.choice(["common", "rare", "very_rare"], size=4 + step)
        losses = rng.random(4 + step)
        mc.log_batch(
            step,
            epoch=0,
            loss=0.5 + step,
            task_losses={"genus": 0.25, "species": 1.5},
            subsets={"rarity": labels},
            sample_losses=losses,
            **batch,
        )
        logged.append((batch, labels, losses))
    assert mc.flush(5)
    assert set(service.content_types) == {MSGPACK_TYPE if binary else JSON_TYPE}
    got = service.batches()
    assert [b.step for b in got] == [0, 1, 2]
    for event, (batch, labels, losses) in zip(got, logged, strict=True):
        assert event.sizes == [len(labels)] and event.phase == "train" and event.epoch == 0
        assert event.losses == [0.5 + event.step]
        assert event.task_losses == {"genus": [0.25], "species": [1.5]}
        for task in TASKS:
            np.testing.assert_array_equal(event.targets[task], batch["targets"][task])
            np.testing.assert_array_equal(event.topk[task], batch["topk"][task])
        vocabulary, codes = event.subsets["rarity"]
        assert [vocabulary[c] for c in codes] == list(labels)
        np.testing.assert_array_equal(event.sample_losses, losses)
        assert event.time > 1_000


def test_scalars_and_control_records_arrive_in_order(
    service: FakeService, make_client: Make
) -> None:
    mc = make_client()
    mc.log_lr(1, {"backbone": 1e-4, "head": 1e-3})
    mc.log_pipeline(1, {"cache/size": 12, "queue_depths/batch_index_q": 3})
    mc.log_gradnorm(2, {"avg_norm": 0.5, "weight/genus": 1.2})
    mc.log_custom(2, {"my_score": 0.75}, higher_is_better={"my_score": True})
    mc.end_epoch("train", 0)
    mc.end_epoch("val", 0)
    assert mc.flush(5)
    events = service.events()
    assert [e.kind for e in events] == [
        "lr",
        "pipeline",
        "gradnorm",
        "custom",
        "end_epoch",
        "end_epoch",
    ]
    assert events[1].values == {"cache/size": 12.0, "queue_depths/batch_index_q": 3.0}
    assert events[3].higher_is_better == {"my_score": True}
    assert isinstance(events[4], EndEpochEvent) and events[4].phase == "train"
    assert mc.completed_step == 2  # the train epoch end completed the last logged step


def test_flush_completes_the_last_logged_step(service: FakeService, make_client: Make) -> None:
    mc = make_client()
    mc.log_lr(7, {"backbone": 0.1})
    assert mc.flush(5)
    assert service.events()[-1] == CompleteEvent(through_step=7)
    assert mc.flush(5)  # nothing new to complete
    assert len(service.events(CompleteEvent)) == 1


def test_retries_keep_seq_and_apply_nothing_twice(service: FakeService, make_client: Make) -> None:
    service.failures.extend(["503", "connect", "drop_ack", "503", "drop_ack"])
    mc = make_client(max_batch_events=3)
    rng = np.random.default_rng(2)
    for step in range(10):
        mc.log_batch(step, epoch=0, loss=1.0, **random_batch(rng, 2))
    assert mc.flush(5)
    assert [b.step for b in service.batches()] == list(range(10))
    stats = mc.stats()
    assert stats["retries"] >= 5
    assert stats["delivered"] == 11 and stats["pending"] == 0  # 10 batches and the flush's complete mark
    # events are what the service's sequence counts: blocks of batches, so fewer than the records
    assert stats["acked_events"] == sum(s.next_seq for s in service.sessions.values()) < 11
    assert stats["sent_events"] > stats["acked_events"]


def test_service_down_at_construction_then_up_delivers_everything(
    service: FakeService, make_client: Make
) -> None:
    service.down = True
    mc = make_client()  # must neither block nor raise
    rng = np.random.default_rng(3)
    for step in range(5):
        mc.log_batch(step, epoch=0, **random_batch(rng, 3))
    assert not mc.flush(0.1)
    assert mc.stats()["pending"] == 6  # five batches and the completion mark
    service.down = False
    assert mc.flush(5)
    assert [b.step for b in service.batches()] == list(range(5))
    assert mc.stats()["retries"] > 0


def test_flush_reports_unacknowledged_records_on_its_deadline(
    service: FakeService, make_client: Make, caplog: pytest.LogCaptureFixture
) -> None:
    service.down = True
    mc = make_client()
    mc.log_custom(0, {"x": 1.0})
    with caplog.at_level(logging.WARNING):
        assert mc.flush(0.05) is False
    assert mc.stats()["pending"] == 2
    assert "2 records still unacknowledged" in caplog.text
    with caplog.at_level(logging.WARNING):
        mc.close(timeout_s=0.05)
    assert mc.stats()["dropped"]["closed"] == 2
    assert "records lost" in caplog.text


def test_log_never_blocks_while_the_service_hangs(make_client: Make) -> None:
    release = threading.Event()
    entered = threading.Event()

    def hanging(request: httpx.Request) -> httpx.Response:
        entered.set()
        release.wait(5)
        return httpx.Response(503, json={"type": "unavailable", "detail": "slow"})

    mc = make_client(transport=httpx.MockTransport(hanging), max_queue_items=50)
    assert entered.wait(5)  # the sender thread is stuck in a request
    for step in range(200):
        mc.log_lr(step, {"backbone": 0.1})
    assert mc.stats()["queued"] == 200
    release.set()
    mc.close(timeout_s=0.05)


def test_a_lost_run_is_created_again_and_unacked_records_resent(
    service: FakeService, make_client: Make
) -> None:
    mc = make_client()
    mc.log_lr(0, {"backbone": 0.1})
    assert mc.flush(5)
    first_session = service.latest[("exp", 0)]
    service.failures.append("lose_run")
    mc.log_lr(1, {"backbone": 0.2})
    assert mc.flush(5)
    assert "exp" in service.runs
    new_session = service.latest[("exp", 0)]
    assert new_session != first_session and service.sessions[new_session].next_seq == 2
    assert [e.step for e in service.events(ScalarEvent)] == [0, 1]


def test_a_sequence_gap_resends_from_the_expected_seq(
    service: FakeService, make_client: Make
) -> None:
    mc = make_client()
    for step in range(3):
        mc.log_lr(step, {"backbone": 0.1})
    assert mc.flush(5)
    session = service.sessions[service.latest[("exp", 0)]]
    session.next_seq -= 2  # the service lost two acknowledged records
    mc.log_lr(3, {"backbone": 0.1})
    assert mc.flush(5) is False  # delivered, but two earlier records are gone: not everything is durable
    assert mc.stats()["pending"] == 0
    assert mc.stats()["lost_after_ack"] == 2
    assert service.events()[-1] == CompleteEvent(through_step=3)


def test_rejected_deliveries_are_dropped_counted_and_logged_once(
    service: FakeService, make_client: Make, caplog: pytest.LogCaptureFixture
) -> None:
    mc = make_client()
    service.failures.extend(["reject", "reject"])
    with caplog.at_level(logging.ERROR, logger="client"):
        mc.log_lr(0, {"backbone": 0.1})
        assert mc.flush(5) is False
        mc.log_lr(1, {"backbone": 0.1})
        assert mc.flush(5) is False
    assert mc.stats()["dropped"]["rejected"] == 4  # two scalars, two completion marks
    messages = [r.getMessage() for r in caplog.records if "rejected" in r.getMessage()]
    assert len(messages) == 1 and "injected reject" in messages[0]
    assert all(r.levelno == logging.ERROR for r in caplog.records if "rejected" in r.getMessage())
    mc.log_lr(2, {"backbone": 0.1})
    assert mc.flush(5) is False  # delivered now, but the earlier loss stays visible
    assert mc.stats()["pending"] == 0
    assert [e.step for e in service.events(ScalarEvent)] == [2]


def test_a_fenced_client_drops_and_counts_without_raising(
    service: FakeService, make_client: Make
) -> None:
    old = make_client()
    old.log_lr(0, {"backbone": 0.1})
    assert old.flush(5)
    new = make_client()  # same rank: its session fences the old one
    new.log_lr(0, {"backbone": 0.2})
    assert new.flush(5)
    old.log_lr(1, {"backbone": 0.1})
    old.log_batch(2, epoch=0, **random_batch(np.random.default_rng(4), 2))
    assert old.flush(5) is False  # nothing left unacknowledged, but the records were dropped
    assert old.stats()["pending"] == 0
    old.log_lr(3, {"backbone": 0.1})  # still no raise
    dropped = old.stats()["dropped"]["fenced"]
    assert dropped == 4  # two records and a completion mark, then one more record
    assert service.sessions[service.latest[("exp", 0)]].next_seq == 2


def test_deliveries_hold_at_most_max_batch_events(service: FakeService, make_client: Make) -> None:
    mc = make_client(max_batch_events=4, flush_interval_s=5.0)
    for step in range(10):
        mc.log_lr(step, {"backbone": 0.1})
    assert mc.flush(5)
    assert service.events_posts == 3
    assert [e.step for e in service.events(ScalarEvent)] == list(range(10))


def test_checkpoint_marker_follows_the_completion_mark(
    service: FakeService, make_client: Make
) -> None:
    mc = make_client()
    mc.log_batch(3, epoch=0, **random_batch(np.random.default_rng(5), 2))
    mc.state_dict(timeout_s=5)
    assert service.events()[-2:] == [CompleteEvent(3), CheckpointEvent("3")]
    assert isinstance(service.events()[0], BatchEvent)


@pytest.mark.parametrize("binary", [True, False], ids=["msgpack", "json"])
def test_a_backlog_goes_in_deliveries_that_stay_under_the_delivery_budget(
    service: FakeService, make_client: Make, binary: bool
) -> None:
    """Record sizes are estimated as binary: a JSON delivery gets a smaller budget, so a backlog of
    large batches never makes a body the service would refuse as too large (its records lost)."""
    mc = make_client(binary=binary, flush_interval_s=60.0, max_batch_events=10_000)
    rng = np.random.default_rng(4)
    batch = random_batch(rng, 2048)
    for step in range(120):  # about 14 MiB of records queued before the sender wakes
        mc.log_batch(step, epoch=0, loss=1.0, **batch)
    assert mc.flush(30)
    assert mc.stats()["delivered"] == 121 and len(service.batches()) == 120
    assert max(service.body_sizes) <= MAX_DELIVERY_BYTES
    if not binary:  # the same records in JSON take several deliveries
        assert len(service.body_sizes) >= 2
