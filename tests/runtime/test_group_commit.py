"""Group commit (``RunHost.ingest_many``): deliveries ingested together, one journal transaction.

A group gives exactly what ingesting its deliveries one by one gives (the values, against the
independent reference, every reply and every refusal); its journal rows go in one
transaction; and when that transaction fails, the run is what the store holds: nothing of
the group stays in memory, nothing is acknowledged, and a retry or a restart comes out right.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Any

import pytest

from service.core.errors import (
    RunQuarantined,
    SequenceGap,
    ServiceError,
    SessionFenced,
    StoreUnavailable,
    UnknownSession,
)
from service.runtime.host import Delivery, RunHost
from service.sinks.memory import MemorySink
from service.storage.sqlite import SqliteStore
from tests.conftest import RunData, make_run, stream_events
from tests.reference import expected_history, expected_summary
from tests.runtime.test_host import INTERVALS, METRICS, _history


def _host(path: Path | None, sink: MemorySink | None = None) -> RunHost:
    """A host whose session ids count from 0 and whose clock stands still: two hosts given the same
    commands end in the same state, times included."""
    store = None if path is None else SqliteStore(path)
    ids = itertools.count()
    return RunHost([sink] if sink else [], store=store, image_every_events=40,  # images inside the run too
                   new_id=lambda: f"session-{next(ids)}", clock=lambda: 1_800_000_000.0)


def _open(host: RunHost, data: RunData) -> dict[int, str]:
    host.create_run(data.spec("r", METRICS))
    return {r: host.open_session("r", r)["session"] for r in range(data.world_size)}


def _chunks(data: RunData, sessions: dict[int, str], seed: int) -> list[Delivery]:
    """Every rank's stream cut into deliveries of 1-5 events, ranks interleaved at random."""
    rng = random.Random(seed)
    streams = {r: stream_events(data, r) for r in sessions}
    sent = dict.fromkeys(streams, 0)
    out: list[Delivery] = []
    while any(sent[r] < len(streams[r]) for r in streams):
        r = rng.choice([r for r in streams if sent[r] < len(streams[r])])
        n = rng.randint(1, 5)
        out.append((sessions[r], sent[r], streams[r][sent[r]:sent[r] + n], None))
        sent[r] += len(out[-1][2])
    return out


def _groups(deliveries: list[Delivery], seed: int) -> list[list[Delivery]]:
    """The deliveries in arrival order, cut into groups of 1-8 (a rank's next delivery often in the same group)."""
    rng = random.Random(seed)
    groups, at = [], 0
    while at < len(deliveries):
        n = rng.randint(1, 8)
        groups.append(deliveries[at:at + n])
        at += n
    return groups


def _state(host: RunHost) -> Any:
    info = host.info("r")
    return (info["ranks"], info["counters"], host.history("r", None, None, None), host.summary("r"),
            host.snapshot("r"))


def _outcome(result: Any) -> Any:
    return (type(result).__name__, str(result)) if isinstance(result, Exception) else result


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_groups_give_what_one_by_one_gives_and_the_reference(tmp_path: Path, seed: int) -> None:
    data = make_run(seed, world_size=3, steps_per_epoch=7, epochs=2)
    grouped_sink, single_sink = MemorySink(), MemorySink()
    grouped, single = _host(tmp_path / "g.sqlite3", grouped_sink), _host(None, single_sink)
    sessions = _open(grouped, data)
    assert _open(single, data) == sessions
    deliveries = _chunks(data, sessions, seed)
    for group in _groups(deliveries, seed):
        replies = grouped.ingest_many("r", group)
        assert replies == [single.ingest("r", *delivery) for delivery in group]
    grouped.finish("r")
    single.finish("r")

    want = expected_history(data.recs, data.tasks, INTERVALS, data.scalars, data.last_step)
    assert _history(grouped) == want  # the independent reference
    want_summary = expected_summary(data.recs, data.tasks)
    want_summary["final_custom_map"] = max(v for _, v in want["custom/map"])
    assert grouped.summary("r")["summary"] == want_summary
    assert grouped.history("r", None, None, None) == single.history("r", None, None, None)
    assert grouped.info("r")["counters"] == single.info("r")["counters"]
    assert [e.values for e in grouped_sink.of("r", "wandb")] == [e.values for e in single_sink.of("r", "wandb")]

    store = grouped.store
    assert store is not None
    store.close()
    again = RunHost(store=SqliteStore(tmp_path / "g.sqlite3"))  # a restart replays the group journal rows
    assert again.recover(again.store.load()) == 1  # type: ignore[union-attr]
    assert _history(again) == want


def test_each_delivery_of_a_group_gets_its_own_answer() -> None:
    """Fresh, resent, gapped, unknown and fenced deliveries, and one that needs its neighbour before it,
    all in one group: each gets the reply or the error it gets alone, one after another."""
    data = make_run(5, world_size=2, steps_per_epoch=4, epochs=1)
    hosts = [_host(None), _host(None)]
    for host in hosts:
        host.create_run(data.spec("r", METRICS))
        s0, old1, s1 = (host.open_session("r", rank)["session"] for rank in (0, 1, 1))  # s1 fences old1
    e0, e1 = stream_events(data, 0), stream_events(data, 1)
    group: list[Delivery] = [
        (s0, 0, e0[:3], None),
        (s0, 3, e0[3:5], None),  # needs the one before it
        (s0, 0, e0[:3], None),  # a resend: acknowledged, ignored
        (s0, 9, e0[9:10], None),  # a gap
        ("nope", 0, e1[:1], None),  # unknown session
        (old1, 0, e1[:2], None),  # fenced
        (s1, 0, e1[:4], None),
        (s0, 5, e0[5:7], None),
    ]
    grouped = hosts[0].ingest_many("r", group)
    alone: list[Any] = []
    for delivery in group:
        try:
            alone.append(hosts[1].ingest("r", *delivery))
        except ServiceError as exc:
            alone.append(exc)
    assert [_outcome(r) for r in grouped] == [_outcome(r) for r in alone]
    kinds = [type(r) for r in grouped]
    assert kinds == [dict, dict, dict, SequenceGap, UnknownSession, SessionFenced, dict, dict]
    assert grouped[1] == {"acked_seq": 5, "applied": 2, "ignored": 0}
    assert _state(hosts[0]) == _state(hosts[1])


def test_a_group_is_one_journal_transaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_run(7, world_size=2, steps_per_epoch=4, epochs=1)
    host = _host(tmp_path / "j.sqlite3")
    sessions = _open(host, data)
    store = host.store
    calls: list[tuple[str, int]] = []
    many, one = store.append_many, store.append  # type: ignore[union-attr]
    monkeypatch.setattr(store, "append_many", lambda *a: calls.append(("many", len(a[2]))) or many(*a))
    monkeypatch.setattr(store, "append", lambda *a: calls.append(("one", 1)) or one(*a))
    deliveries = _chunks(data, sessions, 7)[:5]
    host.ingest_many("r", deliveries)
    assert calls == [("many", 5)]
    host.ingest_many("r", deliveries[:2])  # resends only: nothing to journal
    assert calls == [("many", 5)]
    rows = [c for c in store.load_run("r").commands if c[1] == "events"]  # type: ignore[union-attr]
    assert [(p["session"], p["seq"]) for _, _, p in rows] == [(d[0], d[1]) for d in deliveries]


def test_a_group_whose_journal_write_fails_leaves_the_run_as_the_store_has_it(tmp_path: Path) -> None:
    data = make_run(9, world_size=2, steps_per_epoch=6, epochs=2, batch=(200, 400))
    path = tmp_path / "f.sqlite3"
    sink = MemorySink()
    host = _host(path, sink)
    sessions = _open(host, data)
    deliveries = _chunks(data, sessions, 9)
    head, group, tail = deliveries[:6], deliveries[6:12], deliveries[12:]
    host.ingest_many("r", head)
    before, emitted = _state(host), len(sink.of("r"))
    store = host.store
    assert isinstance(store, SqliteStore)
    journal = store.load_run("r")

    db = store._db  # a full disk: the store can take no new page
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    with pytest.raises(StoreUnavailable, match="full"):
        host.ingest_many("r", group)
    assert _state(host) == before  # nothing of the group stayed in memory
    assert len(sink.of("r")) == emitted  # and nothing of it reached a sink
    assert store.load_run("r") == journal

    db.execute("PRAGMA max_page_count = 1073741823")
    reference = _host(None)
    assert _open(reference, data) == sessions
    for delivery in head:
        reference.ingest("r", *delivery)
    retried = host.ingest_many("r", group)  # the clients' retry, once the disk has room again
    assert retried == [reference.ingest("r", *delivery) for delivery in group]
    assert all(reply["applied"] == len(d[2]) for reply, d in zip(retried, group, strict=True))
    assert host.ingest_many("r", tail) == [reference.ingest("r", *delivery) for delivery in tail]
    for which in (host, reference):
        which.finish("r")
    want = expected_history(data.recs, data.tasks, INTERVALS, data.scalars, data.last_step)
    assert _history(host) == _history(reference) == want
    store.close()
    again = RunHost(store=SqliteStore(path))
    assert again.recover(again.store.load()) == 1  # type: ignore[union-attr]
    assert _history(again) == want


def test_a_run_the_store_cannot_give_back_after_a_failed_group_is_quarantined(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = make_run(11, world_size=1, steps_per_epoch=5, epochs=1)
    path = tmp_path / "q.sqlite3"
    host = _host(path)
    sessions = _open(host, data)
    deliveries = _chunks(data, sessions, 11)
    host.ingest_many("r", deliveries[:2])
    durable = _state(host)
    store = host.store
    assert isinstance(store, SqliteStore)

    def down(*_: Any) -> Any:
        raise StoreUnavailable("store: disk I/O error")

    monkeypatch.setattr(store, "append_many", down)
    monkeypatch.setattr(store, "load_run", down)
    with pytest.raises(StoreUnavailable, match="disk I/O error"):
        host.ingest_many("r", deliveries[2:4])
    assert "disk I/O error" in host.quarantined()["r"]
    with pytest.raises(RunQuarantined):  # refused, loudly, rather than served with unjournaled state
        host.metrics("r")
    with pytest.raises(RunQuarantined):
        host.ingest_many("r", deliveries[2:4])
    monkeypatch.undo()
    store.close()
    again = RunHost(store=SqliteStore(path))  # a restart brings back what was durable
    assert again.recover(again.store.load()) == 1  # type: ignore[union-attr]
    assert _state(again) == durable
