"""The SQLite journal: recovery equals the live state, compaction, damaged files."""

from __future__ import annotations

from pathlib import Path

import pytest

from client._wire import CheckpointEvent, CompleteEvent
from service.core.errors import StoreUnavailable
from service.runtime.host import RunHost
from service.storage.sqlite import SqliteStore
from tests.conftest import make_run, stream_events
from tests.runtime.test_checkpoints import METRICS, Rank, _observable, _reference, _split


def _host(path: Path, image_every: int) -> RunHost:
    return RunHost(store=SqliteStore(path), image_every_events=image_every)


def _recovered(path: Path, image_every: int) -> RunHost:
    host = _host(path, image_every)
    assert host.store is not None
    host.recover(host.store.load())  # type: ignore[attr-defined]
    return host


@pytest.mark.parametrize("image_every", [1_000_000, 7])
def test_recovery_continues_exactly(tmp_path: Path, image_every: int) -> None:
    data = make_run(3, world_size=3, steps_per_epoch=7, epochs=2)
    want = _reference(data)
    path = tmp_path / "m.sqlite3"
    live = _host(path, image_every)
    live.create_run(data.spec("r", METRICS))
    ranks = [Rank(live, r) for r in range(3)]
    parts = [_split(data, r, 10) for r in range(3)]
    for r in range(3):
        ranks[r].send(parts[r][0][:-2])
    ranks[0].send(parts[0][0][-2:] + [CompleteEvent(10), CheckpointEvent("10")])  # rank 0 is held behind its marker
    ranks[0].send(parts[0][1][:4])
    before = live.snapshot("r"), live.info("r")["ranks"]
    # the service dies here (no close); a new process opens the same file
    again = _recovered(path, image_every)
    assert (again.snapshot("r"), again.info("r")["ranks"]) == before
    moved = [Rank.__new__(Rank) for _ in range(3)]
    for r, rank in enumerate(moved):
        rank.host, rank.rank, rank.session, rank.seq = again, r, ranks[r].session, ranks[r].seq
    for r in (1, 2):
        moved[r].send(parts[r][0][-2:] + [CompleteEvent(10), CheckpointEvent("10")])
    assert again.checkpoint("r", "10")["cut"]["watermark"] == 10
    moved[0].send(parts[0][1][4:])
    for r in (1, 2):
        moved[r].send(parts[r][1])
    again.finish("r")
    assert _observable(again) == want
    third = _recovered(path, image_every)  # and once more, after the finish
    assert _observable(third) == want
    assert third.checkpoint("r", "10") == again.checkpoint("r", "10")


def test_restore_survives_recovery_with_compaction(tmp_path: Path) -> None:
    data = make_run(4, world_size=2, steps_per_epoch=5, epochs=2)
    path = tmp_path / "m.sqlite3"
    live = _host(path, 3)
    live.create_run(data.spec("r", METRICS))
    for r in range(2):
        Rank(live, r).send(stream_events(data, r)[:9])
    snapshot = live.snapshot("r")
    rank = Rank(live, 0)
    live.restore("r", rank.session, snapshot)
    rank.send(_split(data, 0, snapshot["cut"]["ranks"][0]["last_step"])[1][:3])
    again = _recovered(path, 3)
    assert again.snapshot("r") == live.snapshot("r")
    assert again.info("r")["generation"] == snapshot["snapshot_id"]


def test_delete_removes_the_run_from_the_store(tmp_path: Path) -> None:
    data = make_run(5, world_size=1, steps_per_epoch=3, epochs=1)
    path = tmp_path / "m.sqlite3"
    live = _host(path, 2)
    live.create_run(data.spec("r", METRICS))
    Rank(live, 0).send(stream_events(data, 0))
    live.delete_run("r")
    assert _recovered(path, 2).run_ids() == []


def test_damaged_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "m.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreUnavailable, match="cannot open"):
        SqliteStore(path)


def test_disk_full_refuses_the_write_and_applies_nothing(tmp_path: Path) -> None:
    from service.core.errors import StoreUnavailable as Full

    # batches large enough that the delivery needs new pages (64 KiB each), not just free space in old ones
    data = make_run(6, world_size=1, steps_per_epoch=6, epochs=1, batch=(2000, 2000))
    path = tmp_path / "m.sqlite3"
    live = _host(path, 1_000_000)
    live.create_run(data.spec("r", METRICS))
    rank = Rank(live, 0)
    events = stream_events(data, 0)
    rank.send(events[:2])
    before = live.snapshot("r"), live.info("r")["ranks"]
    store = live.store
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]  # type: ignore[attr-defined]
    store._db.execute(f"PRAGMA max_page_count = {pages}")  # type: ignore[attr-defined]  # the disk is full now
    with pytest.raises(Full, match="database or disk is full"):
        live.ingest("r", rank.session, rank.seq, events[2:])
    assert (live.snapshot("r"), live.info("r")["ranks"]) == before
    store._db.execute("PRAGMA max_page_count = 1073741823")  # type: ignore[attr-defined]  # space again
    rank.send(events[2:])
    again = _recovered(path, 1_000_000)
    assert again.snapshot("r") == live.snapshot("r")
