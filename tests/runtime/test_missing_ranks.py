"""Ranks that never opened a session: in the run's info, and logged once after a grace period."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from client._wire import BatchEvent, ScalarEvent
from service.core.errors import InvalidInput
from service.runtime.host import RunHost
from tests.conftest import ManualClock

SPEC = {"run_id": "r", "world_size": 3, "total_steps": 10, "tasks": [{"name": "a", "num_classes": 4}]}


def test_missing_ranks_are_in_the_info_and_logged_once_after_the_grace(caplog: pytest.LogCaptureFixture) -> None:
    clock = ManualClock(0.0)
    host = RunHost(missing_rank_grace_s=30, clock=clock)
    host.create_run(SPEC)
    assert host.info("r")["missing_ranks"] == [0, 1, 2]
    session = host.open_session("r", 1)["session"]
    info = host.info("r")
    assert info["missing_ranks"] == [0, 2] and "ranks [0, 2] of 3 never opened a session" in info["note"]
    with caplog.at_level(logging.WARNING, logger="linnaeus_metrics"):
        host.ingest("r", session, 0, [ScalarEvent("lr", 1, 1.0, {"g": 0.1})])
        assert not caplog.records, "within the grace period: nothing yet"
        clock.now = 31.0
        host.ingest("r", session, 1, [ScalarEvent("lr", 2, 2.0, {"g": 0.1})])
        host.ingest("r", session, 2, [ScalarEvent("lr", 3, 3.0, {"g": 0.1})])
    assert [r.levelno for r in caplog.records] == [logging.WARNING]
    assert "ranks [0, 2] of 3 never opened a session" in caplog.records[0].getMessage()


def test_a_run_whose_ranks_all_joined_has_no_note() -> None:
    host = RunHost()
    host.create_run(SPEC)
    for rank in range(3):
        host.open_session("r", rank)
    info = host.info("r")
    assert info["missing_ranks"] == [] and "note" not in info


def _labelled(step: int, family: str, labels: list[str]) -> BatchEvent:
    size = len(labels)
    codes = np.arange(size, dtype=np.int64)
    return BatchEvent(step, 0, "train", float(step), {"a": np.zeros(size, np.int64)},
                      {"a": np.tile(np.arange(3, dtype=np.int64), (size, 1))}, [size],
                      subsets={family: (labels, codes)})


def test_labels_first_used_in_batches_are_held_to_the_per_family_limit() -> None:
    host = RunHost()
    host.create_run({**SPEC, "world_size": 1, "subsets": {"rarity": [f"l{i}" for i in range(4_000)]}})
    session = host.open_session("r", 0)["session"]
    host.ingest("r", session, 0, [_labelled(1, "rarity", [f"n{i}" for i in range(96)])])  # 4,096: the limit
    with pytest.raises(InvalidInput, match="4097 labels, more than the limit of 4096"):
        host.ingest("r", session, 1, [_labelled(2, "rarity", ["one-more"])])
    with pytest.raises(InvalidInput, match="65 families"):
        host.ingest("r", session, 1, [_labelled(2, f"f{i}", ["x"]) for i in range(64)])
    assert host.info("r")["counters"]["events"] == 1, "refusals change nothing"
