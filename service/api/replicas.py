"""The service as one replica of several on a shared PostgreSQL store (DESIGN §10).

A replica owns runs by lease (``service.runtime.replica``); it is ready once the database
takes a real write, and stays so only while it does: the probe runs every third of the
lease TTL even without traffic. On shutdown it writes final images of the runs it owns,
then gives their leases up so another replica takes them over at once.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from typing import Any, cast

import anyio

from service.api.readiness import Readiness
from service.core.emission import Sink
from service.core.errors import StoreError
from service.runtime.fencing import SharedStore
from service.runtime.replica import ReplicaHost
from service.settings import Settings
from service.storage.base import Store

log = logging.getLogger("linnaeus_metrics")


def open_shared_store(settings: Settings) -> Store:
    """The PostgreSQL store; it connects on first use, so a replica may start before its database."""
    from service.storage.postgres import PostgresStore

    assert settings.store is not None
    return PostgresStore(settings.store, settings.store_connect_timeout_s, connect=False)


def make_replica(settings: Settings, sinks: list[Sink], store: Store, options: dict[str, Any]) -> ReplicaHost:
    """The replica's host: runs are taken over (and recovered) when first used."""
    shared = cast("SharedStore", store)
    replica_id = settings.replica_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
    return ReplicaHost(sinks, shared, replica_id, advertised_url(settings), settings.lease_ttl_s, **options)


def advertised_url(settings: Settings) -> str:
    """Where other replicas send clients for this one's runs (the bind address unless set)."""
    if settings.advertised_url:
        return settings.advertised_url.rstrip("/")
    host = socket.gethostname() if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


def start(host: ReplicaHost, readiness: Readiness) -> None:
    """Ready once the database takes a write; renew leases from now on."""
    readiness.store = host.shared
    readiness.recovered = True  # nothing to recover up front: runs are recovered when taken over
    readiness.probe_now()
    host.ownership.start()
    log.info("replica %s (%s) on %s", host.ownership.replica_id, host.ownership.url,
             getattr(host.shared, "where", "the shared store"))


async def probe_regularly(readiness: Readiness, interval_s: float) -> None:
    """Readiness follows the database even while no request comes."""
    while True:
        await anyio.sleep(interval_s)
        await readiness.refresh(force=True)


def stop(host: ReplicaHost) -> None:
    """Last images of the owned runs, then give their leases up so other replicas take over at once."""
    try:
        host.write_images()
    except StoreError as exc:
        log.warning("final images not written: %s", exc)
    host.ownership.close(release=True)
    host.shared.close()

