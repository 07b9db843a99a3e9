"""A replica's leases: claimed, renewed in time, given up once they cannot be (PostgreSQL store)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from service.core.errors import StoreUnavailable
from service.runtime.ownership import Ownership
from service.storage.lease import Lease
from service.storage.postgres import PostgresStore
from tests.conftest import ManualClock
from tests.postgres_db import fresh_database


class Flaky:
    """A lease store whose database can be made unreachable."""

    def __init__(self, store: PostgresStore) -> None:
        self.store, self.down = store, False

    def acquire(self, run_id: str, owner: str, url: str, ttl_s: float) -> Lease | None:
        return self.store.acquire(run_id, owner, url, ttl_s)

    def renew(self, lease: Lease) -> Lease:
        if self.down:
            raise StoreUnavailable("store: connection refused")
        return self.store.renew(lease)

    def release(self, lease: Lease) -> None:
        self.store.release(lease)

    def owner_of(self, run_id: str) -> Lease | None:
        return self.store.owner_of(run_id)


@pytest.fixture
def stores() -> Iterator[tuple[PostgresStore, PostgresStore]]:
    with fresh_database() as url:
        a, b = PostgresStore(url), PostgresStore(url)
        yield a, b
        a.close()
        b.close()


def test_a_claimed_run_has_a_token_until_the_local_deadline(stores: tuple[PostgresStore, PostgresStore]) -> None:
    clock, lost = ManualClock(), []
    a = Ownership(stores[0], "a", "http://a", 30.0, lost.append, clock)
    b = Ownership(stores[1], "b", "http://b", 30.0, clock=clock)
    lease = a.claim("r")
    assert lease is not None and a.token("r") == lease.token and a.held() == ["r"]
    assert b.claim("r") is None and b.token("r") is None
    owner = b.owner("r")
    assert owner is not None and (owner.owner, owner.url) == ("a", "http://a")
    clock.now += 29.9
    assert a.token("r") == lease.token
    clock.now += 0.1  # no renewal for a whole TTL: the replica no longer counts on the lease
    assert a.token("r") is None and lost == []


def test_renewal_moves_the_deadline_and_a_lost_lease_is_given_up(stores: tuple[PostgresStore, PostgresStore]) -> None:
    clock, lost = ManualClock(), []
    a = Ownership(stores[0], "a", "http://a", 0.5, lost.append, clock)
    lease = a.claim("r")
    assert lease is not None
    clock.now += 0.4
    a.renew_all()
    clock.now += 0.4
    assert a.token("r") == lease.token  # 0.8 s after the claim, 0.4 s after the renewal
    deadline = time.monotonic() + 10
    while stores[1].owner_of("r") is not None:  # the database's clock: the lease lapses there too
        assert time.monotonic() < deadline
        threading.Event().wait(0.02)
    taken = stores[1].acquire("r", "b", "http://b", 30.0)
    assert taken is not None and taken.token == lease.token + 1
    a.renew_all()
    assert lost == ["r"] and a.held() == [] and a.token("r") is None


def test_an_unreachable_store_keeps_the_lease_only_until_its_deadline(
        stores: tuple[PostgresStore, PostgresStore]) -> None:
    clock, lost = ManualClock(), []
    flaky = Flaky(stores[0])
    a = Ownership(flaky, "a", "http://a", 30.0, lost.append, clock)
    assert a.claim("r") is not None
    flaky.down = True
    clock.now += 20
    a.renew_all()
    assert lost == [] and a.held() == ["r"]
    clock.now += 10
    a.renew_all()
    assert lost == ["r"] and a.held() == []


def test_closing_releases_so_another_replica_takes_over_at_once(
        stores: tuple[PostgresStore, PostgresStore]) -> None:
    a = Ownership(stores[0], "a", "http://a", 30.0)
    b = Ownership(stores[1], "b", "http://b", 30.0)
    first = a.claim("r")
    a.start()
    a.close()
    second = b.claim("r")
    assert first is not None and second is not None and second.token == first.token + 1
