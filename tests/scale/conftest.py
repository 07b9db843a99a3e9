"""Several real replicas (``linnaeus-metrics serve`` processes) on one fresh PostgreSQL database."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.e2e.conftest import ServiceProcess, free_port
from tests.postgres_db import fresh_database, server_address, with_port
from tests.tcp_proxy import TcpProxy

TTL_S = 1.5  # short, so a failover takes seconds; the renewal thread runs every TTL/3


class Replica(ServiceProcess):
    """A replica process (up once its port answers and /readyz says ready, as every service)."""


@dataclass
class Cluster:
    """Replicas ``r0``, ``r1``, ... sharing the database ``db_url`` (the store URL may go through a proxy)."""

    db_url: str
    store_url: str
    tmp: Path
    replicas: list[Replica] = field(default_factory=list)

    def start(self, count: int) -> Cluster:
        for i in range(count):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            self.replicas.append(Replica(self.tmp / f"r{i}", port, env={
                "LINNAEUS_METRICS_STORE": self.store_url, "LINNAEUS_METRICS_REPLICA_ID": f"r{i}",
                "LINNAEUS_METRICS_ADVERTISED_URL": url, "LINNAEUS_METRICS_LEASE_TTL_S": str(TTL_S),
                "LINNAEUS_METRICS_STORE_CONNECT_TIMEOUT_S": "2", "LINNAEUS_METRICS_SNAPSHOT_EVERY_EVENTS": "40"}))
        starting = [threading.Thread(target=r.start) for r in self.replicas]
        for thread in starting:
            thread.start()
        for thread in starting:
            thread.join(90)
        assert all(r.proc is not None and r.proc.poll() is None for r in self.replicas), self.log()
        return self

    @property
    def urls(self) -> list[str]:
        return [r.url for r in self.replicas]

    def owner(self, run_id: str) -> Replica | None:
        """The replica holding the run's unexpired lease (read from the database)."""
        with psycopg.connect(self.db_url, autocommit=True) as db:
            row = db.execute("SELECT owner FROM leases WHERE run_id = %s AND expires_at > clock_timestamp() "
                             "AND owner <> ''", (run_id,)).fetchone()
        return None if row is None else self.replicas[int(str(row[0])[1:])]

    def token(self, run_id: str) -> int:
        with psycopg.connect(self.db_url, autocommit=True) as db:
            row = db.execute("SELECT token FROM leases WHERE run_id = %s", (run_id,)).fetchone()
        return 0 if row is None else int(row[0])

    def log(self) -> str:
        return "\n".join(f"--- {r.url}\n{''.join(r.lines)}" for r in self.replicas)


def until(condition: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it is truthy (the state of other processes cannot be waited on directly)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        threading.Event().wait(0.02)
    raise AssertionError(f"{what} not met within {timeout_s} s")


def rotated(urls: list[str], first: int) -> list[str]:
    """The replica list starting at replica ``first`` (where the client goes first)."""
    return urls[first:] + urls[:first]


def finish_and_read(urls: list[str], run_id: str) -> list[dict[str, Any]]:
    """Finish the run (through any replica: redirects followed), then every read from every replica."""
    reply = httpx.post(f"{urls[0]}/v1/runs/{run_id}/finish", timeout=60, follow_redirects=True)
    assert reply.status_code == 200, reply.text
    reads = []
    for url in urls:
        got = {path: httpx.get(f"{url}/v1/runs/{run_id}{path}", timeout=30).json()
               for path in ("/metrics", "/history", "/summary")}
        got["list"] = [r for r in httpx.get(f"{url}/v1/runs", timeout=30).json()["runs"] if r["run_id"] == run_id]
        reads.append(got)
    return reads


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Replicas to start on a fresh database (killed after the test)."""
    with fresh_database() as url:
        try:
            yield Cluster(url, url, tmp_path)
        finally:
            ServiceProcess.reap()


@pytest.fixture
def proxied_cluster(tmp_path: Path) -> Iterator[tuple[Cluster, TcpProxy]]:
    """Replicas to start on a fresh database they reach through a proxy the test controls."""
    with fresh_database() as url, TcpProxy(*server_address(url)) as proxy:
        try:
            yield Cluster(url, with_port(url, proxy.port), tmp_path), proxy
        finally:
            ServiceProcess.reap()


def check_reference(reads: list[dict[str, Any]], data: Any) -> None:
    """Every replica's reads are identical and equal the reference of the uninterrupted run."""
    from tests.e2e.test_end_to_end import INTERVALS
    from tests.reference import expected_history, expected_summary

    assert all(r == reads[0] for r in reads[1:]), "replicas disagree"
    want = expected_history(data.recs, data.tasks, INTERVALS, data.scalars, data.last_step)
    series = reads[0]["/history"]["series"]
    assert {k: list(zip(series[k]["steps"], series[k]["values"], strict=True)) for k in want} == want
    summary = expected_summary(data.recs, data.tasks)
    summary["final_custom_map"] = max(v for _, v in want["custom/map"])
    assert reads[0]["/summary"]["summary"] == summary
    latest = reads[0]["/metrics"]["metrics"]
    for key, points in want.items():
        assert latest[key]["value"] == max(points)[1], key
    assert reads[0]["list"][0]["status"] == "finished"
