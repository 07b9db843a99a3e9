"""Consistent cuts, restore and resume equal an uninterrupted run (DESIGN §3b)."""

from __future__ import annotations

import itertools

import pytest

from client._wire import CheckpointEvent, CompleteEvent, EndEpochEvent, Event, ScalarEvent
from service.core.errors import CheckpointPending, IncompatibleState, SnapshotVersionMismatch
from service.runtime.host import RunHost
from tests.conftest import RunData, make_run, stream_events, to_event

METRICS = {"STEP_INTERVAL": 2, "WANDB_INTERVAL": 3, "LR_INTERVAL": 2, "PIPELINE_INTERVAL": 3}
K = 10  # checkpoint step: inside epoch 1 (steps 8..14)


def _split(data: RunData, rank: int, k: int) -> tuple[list[Event], list[Event]]:
    """The rank's stream up to and including step k's records, and the rest."""
    stream = stream_events(data, rank)
    cut = max(i for i, e in enumerate(stream) if getattr(e, "step", -1) <= k and _is_train(e)) + 1
    return stream[:cut], stream[cut:]


def _is_train(event: Event) -> bool:
    return isinstance(event, ScalarEvent) or (getattr(event, "phase", None) == "train" and hasattr(event, "targets"))


class Rank:
    """A trainer process's session with its own seq."""

    def __init__(self, host: RunHost, rank: int) -> None:
        self.host, self.rank, self.seq = host, rank, 0
        self.session = host.open_session("r", rank)["session"]

    def send(self, events: list[Event]) -> dict[str, int]:
        reply = self.host.ingest("r", self.session, self.seq, events)
        self.seq += len(events)
        return reply


def _reference(data: RunData) -> dict:
    host = RunHost()
    host.create_run(data.spec("r", METRICS))
    for rank in range(data.world_size):
        Rank(host, rank).send(stream_events(data, rank))
    host.finish("r")
    return _observable(host)


def _observable(host: RunHost) -> dict:
    return {"history": host.history("r", None, None, None), "summary": host.summary("r"),
            "metrics": host.metrics("r")}


def _checkpointed_run(data: RunData) -> tuple[RunHost, dict]:
    """Run to K, checkpoint on every rank (rank 2 late), go on to the end of training."""
    host = RunHost()
    host.create_run(data.spec("r", METRICS))
    ranks = [Rank(host, r) for r in range(data.world_size)]
    parts = [_split(data, r, K) for r in range(data.world_size)]
    marker = [CompleteEvent(K), CheckpointEvent(str(K))]
    for r in (0, 1):
        ranks[r].send(parts[r][0] + marker + parts[r][1])  # they go on past the checkpoint
    with pytest.raises(CheckpointPending) as pending:
        host.checkpoint("r", str(K))
    assert pending.value.missing_ranks == [2]
    ranks[2].send(parts[2][0][:5])
    ranks[2].send(parts[2][0][5:] + marker)
    snapshot = host.checkpoint("r", str(K))
    assert [r["last_step"] for r in snapshot["cut"]["ranks"]] == [K] * 3
    return host, snapshot


@pytest.mark.parametrize(("seed", "order"), list(enumerate(itertools.permutations(range(3)), start=1)))
def test_resume_from_checkpoint_equals_uninterrupted(seed: int, order: tuple[int, ...]) -> None:
    data = make_run(seed, world_size=3, steps_per_epoch=7, epochs=2)
    want = _reference(data)
    host, snapshot = _checkpointed_run(data)
    hanging = Rank.__new__(Rank)
    hanging.host, hanging.rank, hanging.seq = host, 1, 0
    hanging.session = host.info("r")["ranks"][1]["session"]
    hanging.seq = host.info("r")["ranks"][1]["next_seq"]
    # the trainer crashed; new processes load the checkpoint in a random order and replay from K+1
    resumed = {}
    for r in order:
        resumed[r] = Rank(host, r) if r != 1 else None
    rest = {r: _split(data, r, K)[1] for r in range(3)}
    for i, r in enumerate(order):
        if r == 1:
            zombie = to_event(next(x for x in data.recs if x.phase == "val"))
            zombie.epoch = 7  # would add a val epoch if it were counted
            hanging.send([zombie, EndEpochEvent("val", 7, 0.0)])  # old process, still live
            resumed[1] = Rank(host, 1)
        host.restore("r", resumed[r].session, snapshot)
        resumed[r].send(rest[r][: 3 + i])  # ranks that resumed already go on
    for r in range(3):
        resumed[r].send(rest[r][3 + order.index(r):])
    host.finish("r")
    assert _observable(host) == want


def test_resume_twice_from_one_checkpoint() -> None:
    data = make_run(8, world_size=3, steps_per_epoch=7, epochs=2)
    want = _reference(data)
    host, snapshot = _checkpointed_run(data)
    rest = {r: _split(data, r, K)[1] for r in range(3)}
    first = [Rank(host, r) for r in range(3)]
    for rank in first:
        host.restore("r", rank.session, snapshot)
        rank.send(rest[rank.rank][:6])  # the first resume gets a bit further, then dies
    second = []
    for r in (2, 0, 1):
        rank = Rank(host, r)
        host.restore("r", rank.session, snapshot)
        rank.send(rest[r][:2])
        second.append(rank)
    for rank in second:
        rank.send(rest[rank.rank][2:])
    host.finish("r")
    assert _observable(host) == want
    assert host.info("r")["counters"]["resets"] == 1


def test_snapshot_round_trip_is_identical() -> None:
    data = make_run(9, world_size=2, steps_per_epoch=5, epochs=2)
    host = RunHost()
    host.create_run(data.spec("r", METRICS))
    ranks = [Rank(host, r) for r in range(2)]
    for r in range(2):
        ranks[r].send(_split(data, r, 7)[0])
    first = host.snapshot("r")
    fresh = RunHost()  # a service with an empty data dir
    fresh.create_run(data.spec("r", METRICS))
    session = fresh.open_session("r", 0)["session"]
    fresh.restore("r", session, first)
    again = fresh.snapshot("r")
    assert again == first
    assert fresh.history("r", None, None, None) == host.history("r", None, None, None)


def test_bad_snapshots_are_refused_and_change_nothing() -> None:
    data = make_run(10, world_size=2, steps_per_epoch=4, epochs=1)
    host = RunHost()
    host.create_run(data.spec("r", METRICS))
    rank = Rank(host, 0)
    rank.send(_split(data, 0, 2)[0])
    good = host.snapshot("r")
    before = host.snapshot("r")
    other = RunHost()
    other.create_run({**data.spec("r", METRICS), "total_steps": 99})
    foreign = other.snapshot("r")
    cases = [
        ({**good, "version": 99}, SnapshotVersionMismatch, "version"),
        ({**good, "format": "x"}, SnapshotVersionMismatch, "format"),
        (foreign, IncompatibleState, "spec"),
        ({**good, "run_id": "q"}, IncompatibleState, "run_id"),
        ({**good, "state": {**good["state"], "watermark": 5}}, IncompatibleState, "damaged"),
    ]
    for snapshot, error, needle in cases:
        with pytest.raises(error, match=needle):
            host.restore("r", rank.session, snapshot)
    assert host.snapshot("r") == before


def _redigest(snapshot: dict) -> dict:
    from service.core.snapshot import _digest

    return {**snapshot, "snapshot_id": _digest({"spec": snapshot["spec"], "state": snapshot["state"]})}


@pytest.mark.parametrize("damage", [
    lambda st: st.update(ranks=st["ranks"][:1]),
    lambda st: st["book"].update(latest=[]),
    lambda st: st["windows"]["step"]["acc"].update(c1=[1, 2]),
    lambda st: st.update(layout=[]),
    lambda st: st["windows"].pop("console"),
    lambda st: st.update(pending=[[1, None, {"bogus": {}}]]),
    lambda st: st["epochs"].append(["train", 0, {"n": "x"}]),
])
def test_snapshots_with_a_valid_digest_but_a_bad_state_are_refused(damage) -> None:  # type: ignore[no-untyped-def]
    import copy

    data = make_run(12, world_size=2, steps_per_epoch=4, epochs=1)
    host = RunHost()
    host.create_run(data.spec("r", METRICS))
    rank = Rank(host, 0)
    rank.send(_split(data, 0, 2)[0])
    bad = copy.deepcopy(host.snapshot("r"))
    damage(bad["state"])
    before = host.snapshot("r")
    with pytest.raises(IncompatibleState):
        host.restore("r", rank.session, _redigest(bad))
    assert host.snapshot("r") == before
