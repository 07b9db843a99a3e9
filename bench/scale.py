"""Scale-out: SQLite vs PostgreSQL side by side, and failover time across replicas.

Part 1, the same workload on each store, one after the other in this run: a
``linnaeus-metrics serve`` subprocess (SQLite in a tmp data dir, or ``--store`` a fresh
PostgreSQL database on the local server) and two clients (ranks 0 and 1) of one run,
batches of 256 samples, 4 tasks, subsets. Ingest: samples/s from the first ``log_batch``
until both ``flush()`` return, over ``--steps`` steps per rank. Freshness: the last
rank's ``log_batch`` + ``flush()`` to the window visible in ``GET /metrics`` (as
bench/freshness.py), over ``--windows`` windows.

Part 2, failover: three replicas on one database (lease TTL ``--ttl-s``), one run written
by a plain HTTP writer (one small delivery at a time, following 307s, moving to the next
replica when one does not answer). ``--kills`` times: kill -9 the run's owner, then time
until the first delivery acknowledged by another replica; restart the killed replica on
the same port before the next kill.

Run: ``.venv/bin/python bench/scale.py`` (needs PostgreSQL at 127.0.0.1:5432 or
``LINNAEUS_METRICS_TEST_POSTGRES``, and the ``[postgres]`` extra).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import freshness
import httpx
import numpy as np
import psycopg

SERVER = os.environ.get("LINNAEUS_METRICS_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
BATCH = 256


@contextmanager
def fresh_database() -> Iterator[str]:
    """A new database on the server; dropped afterwards."""
    name = f"lm_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
        try:
            yield f"{SERVER.rpartition('/')[0]}/{name}"
        finally:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


# ------------------------------------------------------------ part 1: the two stores


def ingest(ranks: freshness.Ranks, steps: int) -> float:
    """samples/s for ``steps`` steps of both ranks, until both flushes return."""
    start = time.perf_counter()
    for step in range(1, steps + 1):
        ranks.log(0, step)
        ranks.log(1, step)
    assert all(mc.flush(timeout_s=120) for mc in ranks.clients), "flush failed"
    return 2 * steps * BATCH / (time.perf_counter() - start)


def measure_store(label: str, env: dict[str, str], args: argparse.Namespace, pool: list[c.Batch],
                  budget: c.Budget) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp, \
            c.ServiceProcess(Path(tmp) / "data", env) as service:
        ranks = freshness.Ranks(service.url, "scale", pool)
        try:
            rate = ingest(ranks, args.steps)
            step = args.steps + (-args.steps) % freshness.INTERVAL
            for s in range(args.steps + 1, step + 1):
                ranks.log(0, s)
                ranks.log(1, s)
            fresh = freshness.with_flush_from(ranks, step, args.windows, 0.002, budget)
        finally:
            ranks.close()
    print(f"[{budget.spent():6.1f} s] {label} done", file=sys.stderr, flush=True)
    return {"label": label, "rate": rate, **fresh}


# ------------------------------------------------------------ part 2: failover


class Writer:
    """One session of a 1-rank run, one small delivery at a time, over every replica."""

    def __init__(self, urls: list[str]) -> None:
        self.urls, self.http = urls, httpx.Client(timeout=2.0, follow_redirects=True)
        self.seq, self.step = 0, 0
        spec = {"run_id": "failover", "world_size": 1, "total_steps": 10**7,
                "tasks": [{"name": "t", "num_classes": 3, "null_index": 0}]}
        self.acked_by = self._until_ok("/v1/runs", spec)[1]
        self.session = self._until_ok("/v1/runs/failover/sessions", {"rank": 0})[0]["session"]

    def _until_ok(self, path: str, body: dict[str, Any]) -> tuple[Any, str]:
        """Try each replica in turn until one acknowledges; returns (reply body, replica URL that answered)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for url in self.urls:
                try:
                    reply = self.http.post(url + path, json=body)
                except httpx.HTTPError:
                    continue
                if reply.status_code in (200, 201):
                    return reply.json(), str(reply.url).split("/v1/")[0]
            time.sleep(0.01)  # every replica refused: pace the retries like a client's backoff
        raise RuntimeError(f"no replica acknowledged {path} within 60 s")

    def deliver(self) -> str:
        """One delivery (an LR scalar), acknowledged; returns the replica that acknowledged it."""
        self.step += 1
        body = {"session": self.session, "seq": self.seq,
                "events": [{"kind": "lr", "step": self.step, "time": float(self.step), "values": {"g": 0.1}}]}
        reply, by = self._until_ok("/v1/runs/failover/events", body)
        self.seq = int(reply["acked_seq"])
        return by


def owner_url(db: str) -> str:
    with psycopg.connect(db, autocommit=True) as conn:
        row = conn.execute("SELECT url FROM leases WHERE run_id = 'failover' AND expires_at > clock_timestamp()"
                           ).fetchone()
    return "" if row is None else str(row[0])


def failover(args: argparse.Namespace, budget: c.Budget) -> list[float]:
    times: list[float] = []
    with fresh_database() as db, tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp:
        replicas = [c.ServiceProcess(Path(tmp) / f"r{i}") for i in range(3)]
        for i, r in enumerate(replicas):
            r.env.update({"LINNAEUS_METRICS_STORE": db, "LINNAEUS_METRICS_REPLICA_ID": f"r{i}",
                          "LINNAEUS_METRICS_ADVERTISED_URL": r.url, "LINNAEUS_METRICS_LEASE_TTL_S": str(args.ttl_s)})
            r.start()
        try:
            writer = Writer([r.url for r in replicas])
            for _ in range(args.kills):
                if budget.left() < 30:
                    break
                for _ in range(20):
                    writer.deliver()
                victim = next(r for r in replicas if r.url == owner_url(db))
                os.kill(victim.pid, signal.SIGKILL)
                victim.proc.wait(10)  # type: ignore[union-attr]
                killed = time.perf_counter()
                by = writer.deliver()
                times.append(time.perf_counter() - killed)
                assert by != victim.url, "acknowledged by the dead owner"
                victim.start()
        finally:
            for r in replicas:
                r.stop()
    print(f"[{budget.spent():6.1f} s] failover done", file=sys.stderr, flush=True)
    return times


# ------------------------------------------------------------ report


def report(stores: list[dict[str, Any]], kills: list[float], args: argparse.Namespace) -> None:
    c.print_header("scale-out: SQLite vs PostgreSQL store (same workload, same run), failover across replicas",
                   [f"2 ranks -> one service subprocess; {args.steps} steps x 2 ranks x {BATCH} samples "
                    f"(4 tasks, subsets); freshness over {args.windows} windows (STEP_INTERVAL {freshness.INTERVAL})",
                    f"PostgreSQL: {SERVER.rpartition('@')[2].rpartition('/')[0]} (local server, default settings)"])
    base = stores[0]
    rows = []
    for s in stores:
        ms = s["call"] * 1e3
        rows.append([s["label"], f"{s['rate']:,.0f}", c.ratio(s["rate"], base["rate"]), f"{c.pct(ms, 50):.1f}",
                     f"{c.pct(ms, 99):.1f}", c.ratio(c.pct(ms, 50), c.pct(base["call"] * 1e3, 50))])
    print(c.table(["store", "ingest samples/s", "vs SQLite", "flush->visible p50 ms", "p99 ms", "p50 vs SQLite"],
                  rows))
    if kills:
        k = np.array(kills)
        print(f"\nfailover (kill -9 of the owner -> first acknowledged write on another replica), lease TTL "
              f"{args.ttl_s} s, 3 replicas, {len(k)} kills:")
        print(f"  median {np.median(k):.2f} s, max {k.max():.2f} s, min {k.min():.2f} s "
              f"(all: {' '.join(f'{v:.2f}' for v in k)})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--windows", type=int, default=100)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--ttl-s", type=float, default=2.0)
    parser.add_argument("--budget-s", type=float, default=400.0)
    args = parser.parse_args()
    c.exit_on_sigterm()
    budget = c.Budget(args.budget_s)
    pool = c.batch_pool(seed=21, count=8, tasks=c.TASKS4, size=BATCH)
    stores = [measure_store("SQLite (FULL)", {}, args, pool, budget)]
    with fresh_database() as db:
        stores.append(measure_store("PostgreSQL", {"LINNAEUS_METRICS_STORE": db}, args, pool, budget))
    report(stores, failover(args, budget), args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
