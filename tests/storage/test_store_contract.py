"""The store contract: SQLite and PostgreSQL keep and give back exactly the same things."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.core.errors import StoreDamaged, StoreUnavailable
from tests.storage.conftest import Backend

TTL_S = 30.0


def _token(store: Any, run_id: str, owner: str = "replica-a") -> int:
    lease = store.acquire(run_id, owner, f"http://{owner}", TTL_S)
    assert lease is not None and lease.run_id == run_id and lease.owner == owner
    return int(lease.token)


def _payloads(rng: np.random.Generator, count: int) -> list[dict[str, Any]]:
    """Documents shaped like journal rows: nested maps, lists, raw bytes, big and negative ints, floats."""
    return [{"session": f"s{i}", "seq": int(i), "body": rng.bytes(int(rng.integers(0, 4096))),
             "nested": {"xs": rng.integers(-2**62, 2**62, 5).tolist(), "f": float(rng.normal())},
             "flag": bool(i % 2), "none": None} for i in range(count)]


def test_journal_reads_back_in_append_order(store: Any) -> None:
    rng = np.random.default_rng(1)
    tokens = {run: _token(store, run) for run in ("a", "b")}
    written: dict[str, list[tuple[int, str, dict[str, Any]]]] = {"a": [], "b": []}
    for i, payload in enumerate(_payloads(rng, 40)):
        run = "ab"[int(rng.integers(0, 2))]
        kind = ("create", "session", "events")[min(i, 2)]
        written[run].append((store.append(run, kind, payload, token=tokens[run]), kind, payload))
    ids = [i for rows in written.values() for i, _, _ in rows]
    assert len(set(ids)) == len(ids)
    for run in ("a", "b"):
        loaded = store.load_run(run)
        assert loaded.image is None
        assert loaded.commands == written[run]
        assert [i for i, _, _ in loaded.commands] == sorted(i for i, _, _ in loaded.commands)


def test_a_group_of_commands_is_written_all_or_none(backend: Backend, store: Any) -> None:
    """``append_many``: one transaction; its rows read back in order among single appends, and a write
    that fails in the middle of the group leaves none of its rows."""
    rng = np.random.default_rng(2)
    token = _token(store, "a")
    payloads = _payloads(rng, 9)
    first = store.append("a", "create", payloads[0], token=token)
    last = store.append_many("a", "events", payloads[1:5], token=token)
    after = store.append("a", "session", payloads[5], token=token)
    loaded = store.load_run("a").commands
    assert [(k, p) for _, k, p in loaded] == [("create", payloads[0]), *(("events", p) for p in payloads[1:5]),
                                             ("session", payloads[5])]
    ids = [i for i, _, _ in loaded]
    assert ids[0] == first and ids[4] == last and ids[5] == after and ids == sorted(set(ids))

    backend.refuse_payloads_over(10_000)
    big = {"session": "s", "seq": 99, "body": b"x" * 20_000}
    with pytest.raises(StoreUnavailable):
        store.append_many("a", "events", [payloads[6], payloads[7], big, payloads[8]], token=token)
    assert store.load_run("a").commands == loaded  # not even the rows before the refused one
    store.append_many("a", "events", payloads[6:9], token=token)  # the store still takes writes
    assert [p for _, _, p in store.load_run("a").commands][6:] == payloads[6:9]


def test_runs_load_in_creation_order_and_survive_reopening(backend: Backend, store: Any) -> None:
    for run in ("zeta", "alpha", "mid"):
        store.append(run, "create", {"spec": {"run_id": run}}, token=_token(store, run))
    store.append("alpha", "session", {"rank": 0}, token=_token(store, "alpha"))
    store.close()
    again = backend.open()
    try:
        assert again.run_ids() == ["zeta", "alpha", "mid"]
        assert [r.run_id for r in again.load()] == ["zeta", "alpha", "mid"]
        assert [k for _, k, _ in again.load_run("alpha").commands] == ["create", "session"]
    finally:
        again.close()


def test_an_image_replaces_the_journal_prefix(store: Any) -> None:
    token = _token(store, "r")
    ids = [store.append("r", "events", {"seq": i}, token=token) for i in range(6)]
    store.write_image("r", ids[2], {"generation": None, "upto": 2, "raw": b"\x00\x01"}, token=token)
    loaded = store.load_run("r")
    assert loaded.image == {"generation": None, "upto": 2, "raw": b"\x00\x01"}
    assert [(i, p["seq"]) for i, _, p in loaded.commands] == [(ids[3], 3), (ids[4], 4), (ids[5], 5)]
    store.write_image("r", ids[5], {"upto": 5}, token=token)  # a later image replaces the earlier one
    loaded = store.load_run("r")
    assert (loaded.image, loaded.commands) == ({"upto": 5}, [])
    later = store.append("r", "finish", {}, token=token)
    assert later > ids[5]
    assert store.run_ids() == ["r"]
    assert store.load_run("r").commands == [(later, "finish", {})]


def test_blobs_are_kept_per_run_kind_and_key(store: Any) -> None:
    tokens = {run: _token(store, run) for run in ("a", "b")}
    store.put_blob("a", "checkpoint", "10", {"cut": 10}, token=tokens["a"])
    store.put_blob("a", "base", "10", {"base": True}, token=tokens["a"])
    store.put_blob("b", "checkpoint", "10", {"cut": "b"}, token=tokens["b"])
    store.put_blob("a", "checkpoint", "10", {"cut": 11, "bytes": b"\xff"}, token=tokens["a"])  # replaces
    assert store.get_blob("a", "checkpoint", "10") == {"cut": 11, "bytes": b"\xff"}
    assert store.get_blob("a", "base", "10") == {"base": True}
    assert store.get_blob("b", "checkpoint", "10") == {"cut": "b"}
    assert store.get_blob("a", "checkpoint", "11") is None
    assert store.get_blob("c", "checkpoint", "10") is None


def test_delete_removes_one_run_only(store: Any) -> None:
    tokens = {run: _token(store, run) for run in ("a", "b")}
    for run in ("a", "b"):
        first = store.append(run, "create", {"run": run}, token=tokens[run])
        store.append(run, "events", {"seq": 0}, token=tokens[run])
        store.write_image(run, first, {"run": run}, token=tokens[run])
        store.put_blob(run, "checkpoint", "1", {"run": run}, token=tokens[run])
    store.delete_run("a", token=tokens["a"])
    assert store.run_ids() == ["b"]
    assert store.get_blob("a", "checkpoint", "1") is None
    assert store.load_run("a").image is None and store.load_run("a").commands == []
    assert store.get_blob("b", "checkpoint", "1") == {"run": "b"}
    assert [p for _, _, p in store.load_run("b").commands] == [{"seq": 0}]


def test_a_damaged_row_is_a_clear_error_for_that_run_only(backend: Backend, store: Any) -> None:
    for run in ("good", "bad", "late"):
        token = _token(store, run)
        store.append(run, "create", {"run": run}, token=token)
        store.append(run, "events", {"seq": 0}, token=token)
    backend.corrupt_journal("bad")
    with pytest.raises(StoreDamaged, match=r"run 'bad': journal row \d+ \(create\) cannot be decoded") as caught:
        store.load_run("bad")
    assert caught.value.run_id == "bad"
    for run in ("good", "late"):
        assert [p for _, _, p in store.load_run(run).commands] == [{"run": run}, {"seq": 0}]
    loaded = list(store.load())  # recovery goes past the damaged run, which comes with its damage
    assert [(r.run_id, r.damage is not None) for r in loaded] == [("good", False), ("bad", True), ("late", False)]
    assert "journal row" in (loaded[1].damage or "") and loaded[1].commands == []
    assert [p for _, _, p in loaded[2].commands] == [{"run": "late"}, {"seq": 0}]


def test_a_newer_schema_is_refused(backend: Backend, store: Any) -> None:
    store.close()
    backend.set_meta("schema_version", "99")
    with pytest.raises(StoreUnavailable, match="schema version 99"):
        backend.open()


def test_probe_is_a_real_write(store: Any) -> None:
    store.probe()
    store.probe()


def test_the_lease_is_held_and_writes_carry_its_token(backend: Backend, store: Any) -> None:
    lease = store.acquire("r", "replica-a", "http://a:8000", TTL_S)
    assert (lease.owner, lease.url) == ("replica-a", "http://a:8000")
    assert store.renew(lease).token == lease.token
    held = store.owner_of("r")
    assert (held.owner, held.url, held.token) == ("replica-a", "http://a:8000", lease.token)
    store.append("r", "create", {}, token=lease.token)
    store.release(lease)
    if backend.shared:
        assert store.owner_of("r") is None
