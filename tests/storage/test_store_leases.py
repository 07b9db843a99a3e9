"""Run ownership on PostgreSQL: leases on the database's clock, fencing tokens checked by every write."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from service.core.errors import StoreFenced, StoreUnavailable
from service.storage.lease import Lease
from service.storage.postgres import PostgresStore
from tests.postgres_db import fresh_database, server_address, with_port

SHORT_S = 0.4


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_database() as made:
        yield made


@pytest.fixture
def replicas(url: str) -> Iterator[tuple[PostgresStore, PostgresStore]]:
    """Two replicas' stores on one database."""
    a, b = PostgresStore(url), PostgresStore(url)
    yield a, b
    a.close()
    b.close()


def _until(condition: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """Poll ``condition`` until it returns something truthy (the lease clock is the database's)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        threading.Event().wait(0.01)
    raise AssertionError(f"condition not met within {timeout_s} s")


def _take(store: PostgresStore, owner: str, ttl_s: float = 30.0, run_id: str = "r") -> Lease:
    lease = store.acquire(run_id, owner, f"http://{owner}:8000", ttl_s)
    assert lease is not None
    return lease


def _every_write(store: PostgresStore, token: int) -> list[Callable[[], Any]]:
    return [lambda: store.append("r", "events", {"late": True}, token=token),
            lambda: store.append_many("r", "events", [{"late": True}, {"late": 2}], token=token),
            lambda: store.write_image("r", 10**9, {"late": True}, token=token),
            lambda: store.put_blob("r", "checkpoint", "late", {"late": True}, token=token),
            lambda: store.delete_run("r", token=token)]


def test_a_held_lease_is_not_granted_to_another(replicas: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = replicas
    lease = _take(a, "a")
    assert b.acquire("r", "b", "http://b:8000", 30.0) is None
    seen = b.owner_of("r")
    assert seen is not None and (seen.owner, seen.url, seen.token) == ("a", "http://a:8000", lease.token)
    assert _take(a, "a").token == lease.token  # the holder asking again keeps its token
    assert _take(b, "b", run_id="other").token == 1  # leases are per run


def test_after_expiry_a_takeover_raises_the_token_and_fences_every_write(
        replicas: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = replicas
    old = _take(a, "a", SHORT_S)
    first = a.append("r", "create", {"spec": 1}, token=old.token)
    a.put_blob("r", "checkpoint", "1", {"cut": 1}, token=old.token)
    _until(lambda: a.owner_of("r") is None)
    for write in _every_write(a, old.token):  # expired: refused even before anyone took it over
        with pytest.raises(StoreFenced, match=rf"token {old.token} refused: the lease is token {old.token} \(expired"):
            write()
    new = _take(b, "b")
    assert new.token == old.token + 1
    for write in _every_write(a, old.token):
        with pytest.raises(StoreFenced, match=rf"{old.token} refused: the lease is token {new.token} \(held, 'b'"):
            write()
    with pytest.raises(StoreFenced):
        a.renew(old)
    loaded = b.load_run("r")
    assert (loaded.image, loaded.commands) == (None, [(first, "create", {"spec": 1})])
    assert b.get_blob("r", "checkpoint", "1") == {"cut": 1} and b.get_blob("r", "checkpoint", "late") is None
    assert b.append("r", "events", {"seq": 0}, token=new.token) > first


def test_a_released_lease_is_taken_at_once_and_the_old_token_refused(
        replicas: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = replicas
    old = _take(a, "a")
    a.append("r", "create", {}, token=old.token)
    a.delete_run("r", token=old.token)
    a.release(old)
    new = _take(b, "b")
    assert new.token == old.token + 1  # the lease row outlives the run's data: tokens never repeat
    with pytest.raises(StoreFenced):
        a.append("r", "create", {}, token=old.token)
    a.release(old)  # releasing a lease already taken over leaves the new owner's alone
    assert b.owner_of("r") is not None


def test_a_write_without_a_token_or_with_a_made_up_one_is_refused(
        replicas: tuple[PostgresStore, PostgresStore]) -> None:
    a, _ = replicas
    with pytest.raises(StoreFenced, match="needs the run's lease token"):
        a.append("r", "create", {})
    with pytest.raises(StoreFenced, match="nobody holds the run's lease"):
        a.append("r", "create", {}, token=1)
    lease = _take(a, "a")
    with pytest.raises(StoreFenced, match=f"token {lease.token + 5} refused"):
        a.append("r", "create", {}, token=lease.token + 5)
    assert a.run_ids() == []


def test_renewal_extends_the_lease_on_the_database_clock(replicas: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = replicas
    lease = _take(a, "a", 1.0)
    _until(lambda: (held := a.owner_of("r")) is not None and held.ttl_s < 0.5)
    a.renew(lease)
    held = b.owner_of("r")
    assert held is not None and held.ttl_s > 0.8 and held.token == lease.token


def test_a_takeover_sees_every_write_acknowledged_under_the_old_token(
        replicas: tuple[PostgresStore, PostgresStore]) -> None:
    a, b = replicas
    old = _take(a, "a", SHORT_S)
    acked: list[int] = []

    def write_until_fenced() -> None:
        try:
            while True:
                acked.append(a.append("r", "events", {"n": len(acked)}, token=old.token))
        except StoreFenced:
            return

    writer = threading.Thread(target=write_until_fenced)
    writer.start()
    new = _until(lambda: b.acquire("r", "b", "http://b:8000", 30.0))
    loaded = [i for i, _, _ in b.load_run("r").commands]  # read at once, while the old writer may still try
    writer.join(10)
    assert not writer.is_alive() and new.token == old.token + 1
    assert acked and loaded == acked
    assert [i for i, _, _ in b.load_run("r").commands] == acked


def test_a_lost_connection_is_unavailable_then_reopened(url: str) -> None:
    store = PostgresStore(url)
    lease = _take(store, "a")
    store.append("r", "create", {}, token=lease.token)
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                      "WHERE datname = current_database() AND pid <> pg_backend_pid()")
    with pytest.raises(StoreUnavailable, match=r"store postgresql \S+/lm_test_"):
        store.append("r", "events", {"seq": 0}, token=lease.token)
    store.append("r", "events", {"seq": 1}, token=lease.token)
    assert [p for _, _, p in store.load_run("r").commands] == [{}, {"seq": 1}]
    store.close()


def test_an_unreachable_database_is_unavailable() -> None:
    with pytest.raises(StoreUnavailable, match=r"store postgresql 127\.0\.0\.1:1/none"):
        PostgresStore("postgresql://postgres@127.0.0.1:1/none", connect_timeout_s=1)


def test_a_database_cut_off_is_unavailable_until_it_returns(url: str) -> None:
    from tests.tcp_proxy import TcpProxy

    with TcpProxy(*server_address(url)) as proxy:
        store = PostgresStore(with_port(url, proxy.port), connect_timeout_s=2)
        lease = _take(store, "a")
        store.append("r", "create", {}, token=lease.token)
        proxy.cut()
        for _ in range(2):  # the broken connection, then a refused reconnect
            with pytest.raises(StoreUnavailable):
                store.append("r", "events", {"lost": True}, token=lease.token)
        with pytest.raises(StoreUnavailable):
            store.probe()
        proxy.restore()
        store.probe()
        store.append("r", "events", {"seq": 0}, token=lease.token)
        assert [p for _, _, p in store.load_run("r").commands] == [{}, {"seq": 0}]
        store.close()
