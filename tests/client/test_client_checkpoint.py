"""state_dict() / load_state_dict(): consistent cuts and restores against the fake service."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from client import (
    STATE_FORMAT,
    CheckpointTimeout,
    ClientError,
    InvalidStateDict,
    MetricsClient,
    ServiceUnavailable,
    SessionFenced,
    StepAlreadyCompleted,
)
from tests.client.client_fakes import FakeService, random_batch

Make = Callable[..., MetricsClient]


def log_steps(mc: MetricsClient, steps: range) -> None:
    rng = np.random.default_rng(0)
    for step in steps:
        mc.log_batch(step, epoch=0, loss=1.0, **random_batch(rng, 2))
        mc.log_lr(step, {"backbone": 0.1})


def only_builtins(value: Any) -> bool:
    if isinstance(value, dict):
        return all(isinstance(k, str) and only_builtins(v) for k, v in value.items())
    if isinstance(value, list):
        return all(only_builtins(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


def test_state_dict_returns_the_snapshot_at_this_ranks_marker(
    service: FakeService, make_client: Make
) -> None:
    mc = make_client()
    log_steps(mc, range(4))
    sd = mc.state_dict(timeout_s=5)
    assert {k: sd[k] for k in ("format", "version", "run_id", "rank")} == {
        "format": STATE_FORMAT,
        "version": 1,
        "run_id": "exp",
        "rank": 0,
    }
    assert sd["snapshot"]["checkpoint"] == "3"
    assert sd["snapshot"]["cut"]["ranks"] == [{"rank": 0, "completed": 3, "last_step": 3}]
    assert only_builtins(sd) and json.loads(json.dumps(sd)) == sd
    with pytest.raises(StepAlreadyCompleted):
        mc.log_lr(3, {"backbone": 0.1})


def test_every_rank_gets_the_same_snapshot_after_a_pending_reply(
    service: FakeService, make_client: Make
) -> None:
    service.pending_replies = 1  # the first GET answers 408 at once
    ranks = [make_client(rank=r, world_size=2) for r in range(2)]
    for mc in ranks:
        log_steps(mc, range(3))
    results: dict[int, dict[str, Any]] = {}
    other = threading.Thread(target=lambda: results.setdefault(1, ranks[1].state_dict(timeout_s=5)))
    other.start()
    results[0] = ranks[0].state_dict(timeout_s=5)
    other.join(5)
    assert results[0]["snapshot"] == results[1]["snapshot"]
    assert [r["rank"] for r in results[0]["snapshot"]["cut"]["ranks"]] == [0, 1]
    assert results[1]["rank"] == 1 and service.pending_replies == 0


def test_a_missing_rank_makes_state_dict_time_out_naming_it(
    service: FakeService, make_client: Make
) -> None:
    mc = make_client(rank=0, world_size=3)
    log_steps(mc, range(2))
    started = time.monotonic()
    with pytest.raises(CheckpointTimeout) as caught:
        mc.state_dict(timeout_s=0.3)
    assert time.monotonic() - started < 2.0
    assert caught.value.missing_ranks == [1, 2] and caught.value.checkpoint_id == "1"
    assert "[1, 2]" in str(caught.value)
    assert isinstance(caught.value, ClientError)


def test_state_dict_times_out_when_its_own_marker_cannot_be_delivered(
    service: FakeService, make_client: Make
) -> None:
    service.down = True
    mc = make_client()
    with pytest.raises(CheckpointTimeout) as caught:
        mc.state_dict(timeout_s=0.1, checkpoint_id="epoch-1")
    assert caught.value.missing_ranks == [0] and caught.value.checkpoint_id == "epoch-1"


def test_a_fenced_client_cannot_take_a_checkpoint(service: FakeService, make_client: Make) -> None:
    old = make_client()
    old.log_lr(0, {"backbone": 0.1})
    assert old.flush(5)
    new = make_client()
    new.log_lr(0, {"backbone": 0.1})
    assert new.flush(5)
    with pytest.raises(SessionFenced):
        old.state_dict(timeout_s=1)


def test_load_state_dict_restores_and_rewinds_the_step_bookkeeping(
    service: FakeService, make_client: Make
) -> None:
    mc = make_client()
    log_steps(mc, range(6))
    sd = mc.state_dict(timeout_s=5)
    log_steps(mc, range(6, 9))
    mc.load_state_dict(sd, timeout_s=5)
    (restore,) = service.restores
    assert restore["session"] == service.latest[("exp", 0)]
    assert restore["snapshot"] == sd["snapshot"]
    assert (mc.last_step, mc.completed_step) == (5, 5)
    with pytest.raises(StepAlreadyCompleted):
        mc.log_batch(5, epoch=0, **random_batch(np.random.default_rng(1), 2))
    mc.log_batch(6, epoch=0, **random_batch(np.random.default_rng(1), 2))
    assert mc.flush(5)


def test_a_resumed_process_loads_the_state_dict(service: FakeService, make_client: Make) -> None:
    first = make_client()
    log_steps(first, range(3))
    sd = json.loads(json.dumps(first.state_dict(timeout_s=5)))  # as stored in a checkpoint
    first.close()
    resumed = make_client()
    resumed.load_state_dict(sd, timeout_s=5)
    assert (resumed.last_step, resumed.completed_step) == (2, 2)
    assert service.restores[-1]["session"] == service.latest[("exp", 0)]


@pytest.mark.parametrize(
    ("state", "error", "fragment"),
    [
        ([1, 2], TypeError, "state_dict: expected the dict"),
        (
            {"format": "torch", "version": 1, "run_id": "exp", "snapshot": {}},
            InvalidStateDict,
            "'format'",
        ),
        (
            {"format": STATE_FORMAT, "version": 2, "run_id": "exp", "snapshot": {}},
            InvalidStateDict,
            "'version'",
        ),
        (
            {"format": STATE_FORMAT, "version": 1, "run_id": "other", "snapshot": {}},
            InvalidStateDict,
            "'other'",
        ),
        (
            {"format": STATE_FORMAT, "version": 1, "run_id": "exp", "snapshot": []},
            InvalidStateDict,
            "'snapshot'",
        ),
    ],
)
def test_load_state_dict_validates_the_state(
    make_client: Make, state: Any, error: type[Exception], fragment: str
) -> None:
    mc = make_client()
    with pytest.raises(error, match=fragment) as caught:
        mc.load_state_dict(state)
    assert isinstance(caught.value, ValueError | TypeError)


def test_load_state_dict_raises_when_the_service_is_unreachable(
    service: FakeService, make_client: Make
) -> None:
    service.down = True
    mc = make_client()
    sd = {"format": STATE_FORMAT, "version": 1, "run_id": "exp", "rank": 0, "snapshot": {"cut": {}}}
    started = time.monotonic()
    with pytest.raises(ServiceUnavailable):
        mc.load_state_dict(sd, timeout_s=0.2)
    assert time.monotonic() - started < 2.0
