"""A 1,024-rank run on one service: the service cores it needs at the client's cadence, measured.

The arithmetic in the README extrapolates from per-request costs; this plays the run. One
``linnaeus-metrics serve`` subprocess (SQLite, synchronous FULL, wandb and console off) gets
a run of ``--ranks`` ranks (1,024) with the default schedule (step windows every 100 steps)
and a session for every rank. Each rank then "trains" at 5 steps/s with batches of 256
samples (4 tasks 50/500/2k/10k classes, top-3, subsets rarity x3 + mask x2) and posts what
it has once every ``flush_interval_s``, as its sender would: at the client's default
cadence for the world size (``client._spec.default_flush_interval``: 4 s at 1,024 ranks,
so 20 records a delivery) and, side by side in the same run, at the old fixed 0.2 s (one
record a delivery). Deliveries are encoded by the client's own sender code
(``client._coalesce.encode_delivery``) and posted by ``--posters`` threads, ranks
interleaved in simulated-time order; they are posted as fast as the service takes them,
and the service's CPU time (/proc) over the simulated seconds is the cores it needs to keep
up. Afterwards the run's counters must hold every record and the step windows must have
been emitted (checked, not assumed).

Run: ``.venv/bin/python bench/ranks1024.py [--ranks 1024] [--seconds 20]``
"""

from __future__ import annotations

import argparse
import queue
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import httpx
import requests as per_request

from client._coalesce import encode_delivery
from client._fastpath import FastBatches, Record
from client._spec import default_flush_interval
from client._wire import MSGPACK_TYPE, TaskInfo, index_type, pack_body

STEPS_PER_S = 5
BATCH = 256


class Deliveries:
    """Every rank's deliveries in simulated-time order, encoded as its sender would."""

    def __init__(self, sessions: list[str], records: int, steps: int) -> None:
        tasks = [TaskInfo(n, k) for n, k in c.TASKS4.items()]
        self.fast = FastBatches(tasks)
        self.index_types = {t.name: index_type(t.num_classes) for t in tasks}
        self.pool = c.batch_pool(seed=3, count=16, tasks=c.TASKS4, size=BATCH)
        self.sessions, self.records, self.steps = sessions, records, steps

    def __iter__(self) -> Iterator[tuple[int, bytes]]:
        for k in range(self.steps // self.records):  # k-th delivery of every rank, ranks interleaved
            for rank, session in enumerate(self.sessions):
                first = k * self.records + 1
                parts: list[list[Record]] = []
                for step in range(first, first + self.records):
                    b = self.pool[(rank + step) % len(self.pool)]
                    record = self.fast.build(step, 0, "train", 1_000.0 + step / STEPS_PER_S, b.loss, b.task_losses,
                                             b.targets, b.topk, b.subsets)
                    assert record is not None
                    parts.append([record])
                _, encoded = encode_delivery(parts, True, self.index_types)
                yield rank, pack_body({"session": session, "seq": k, "events": encoded}, True)


def play(url: str, pid: int, run_id: str, ranks: int, records: int, seconds: float, posters: int) -> dict[str, float]:
    """Create the run, open every rank's session, post the simulated seconds; the service's CPU and checks."""
    spec = {"run_id": run_id, "world_size": ranks, "total_steps": 10**6,
            "tasks": [{"name": n, "num_classes": k, "null_index": 0} for n, k in c.TASKS4.items()],
            "subsets": c.FAMILIES}
    steps = int(seconds * STEPS_PER_S)
    with httpx.Client(timeout=120) as http:
        http.post(f"{url}/v1/runs", json=spec).raise_for_status()
        sessions = [http.post(f"{url}/v1/runs/{run_id}/sessions", json={"rank": r}).json()["session"]
                    for r in range(ranks)]
    # a rank's deliveries always go through the same thread: its sequence stays in order
    queues: list[queue.Queue[bytes | None]] = [queue.Queue(maxsize=16) for _ in range(posters)]
    failures: list[str] = []

    def poster(bodies: queue.Queue[bytes | None]) -> None:
        with httpx.Client(timeout=120) as http:
            while (body := bodies.get()) is not None:
                reply = http.post(f"{url}/v1/runs/{run_id}/events", content=body,
                                  headers={"content-type": MSGPACK_TYPE})
                if reply.status_code != 200:
                    failures.append(f"{reply.status_code} {reply.text[:200]}")

    threads = [threading.Thread(target=poster, args=(q,), daemon=True) for q in queues]
    for thread in threads:
        thread.start()
    cpu0, wall0 = per_request.cpu_seconds(pid), time.monotonic()
    for rank, body in Deliveries(sessions, records, steps):
        queues[rank % posters].put(body)
    for q in queues:
        q.put(None)
    for thread in threads:
        thread.join()
    cpu, wall = per_request.cpu_seconds(pid) - cpu0, time.monotonic() - wall0
    if failures:
        raise RuntimeError(f"{len(failures)} deliveries refused, first: {failures[0]}")
    info = httpx.get(f"{url}/v1/runs/{run_id}", timeout=60).json()
    metrics = httpx.get(f"{url}/v1/runs/{run_id}/metrics", timeout=60).json()
    want = ranks * steps
    if info["counters"]["records"] != want:
        raise RuntimeError(f"the run holds {info['counters']['records']} records, expected {want}")
    # every rank completed all but its last step: the last step window before it is out
    window = 100 * ((steps - 1) // 100)
    emitted = metrics["metrics"].get("train/loss", {}).get("step", 0)
    if emitted != window:
        raise RuntimeError(f"the last train/loss window is at step {emitted}, expected {window}")
    return {"cpu_s": cpu, "wall_s": wall, "requests": ranks * (steps // records), "records": want,
            "step_windows": float(emitted), "group": journal_group(url),
            "simulated_s": steps / STEPS_PER_S}


def journal_group(url: str) -> float:
    """Deliveries per journal commit, from the service's own metrics (0: a service that does not count them)."""
    figures = {"linnaeus_journal_commits_total": 0.0, "linnaeus_journal_committed_deliveries_total": 0.0}
    for line in httpx.get(f"{url}/metrics", timeout=60).text.splitlines():
        name, _, value = line.partition(" ")
        if name in figures:
            figures[name] = float(value)
    commits = figures["linnaeus_journal_commits_total"]
    return figures["linnaeus_journal_committed_deliveries_total"] / commits if commits else 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=1024)
    parser.add_argument("--seconds", type=float, default=24.0,
                        help="simulated training seconds at the default cadence (120 steps: the step-100 window)")
    parser.add_argument("--old-seconds", type=float, default=4.0,
                        help="simulated seconds at the fixed 0.2 s cadence (one record a request: slow to play)")
    parser.add_argument("--posters", type=int, default=4, help="threads posting deliveries")
    args = parser.parse_args()
    c.exit_on_sigterm()
    interval = default_flush_interval(args.ranks)
    records = round(interval * STEPS_PER_S)
    c.print_header(f"ranks1024: a {args.ranks:,}-rank run at {STEPS_PER_S} steps/s x {BATCH} samples on one service",
                   [f"default cadence {interval:g} s ({records} records a delivery) for {args.seconds:g} simulated s; "
                    f"fixed 0.2 s (1 record) for {args.old_seconds:g} simulated s; {args.posters} posting threads",
                    "4 tasks 50/500/2k/10k classes, top-3, subsets rarity x3 + mask x2; default schedule (step windows "
                    "every 100 steps); SQLite FULL; deliveries encoded by the client's sender code",
                    "command: .venv/bin/python bench/ranks1024.py " + " ".join(sys.argv[1:])])
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        for name, every, seconds in ((f"default ({interval:g} s)", records, args.seconds),
                                     ("fixed 0.2 s", 1, args.old_seconds)):
            service = c.ServiceProcess(Path(tmp_dir) / f"data-{len(rows)}", {}).start()
            try:
                got = play(service.url, service.pid, f"r{every}", args.ranks, every, seconds, args.posters)
            finally:
                service.stop()
            cores = got["cpu_s"] / got["simulated_s"]
            rows.append([name, every, f"{got['requests']:,}", f"{got['records']:,}", f"{got['simulated_s']:g}",
                         f"{got['cpu_s']:.1f}", f"{got['wall_s']:.1f}",
                         f"{got['cpu_s'] / got['requests'] * 1e3:.2f}",
                         f"{got['records'] * BATCH / got['cpu_s']:,.0f}", f"{cores:.2f}",
                         f"{int(got['step_windows'])}", f"{got['group']:.2f}" if got["group"] else "-"])
            print(f"[{name} done]", file=sys.stderr, flush=True)
    print(c.table(["cadence", "records/request", "requests", "records", "simulated s", "service CPU s",
                   "wall s", "CPU ms/request", "samples/service CPU-s", "service cores needed",
                   "last train/loss step", "deliveries/commit"], rows))
    print("\n(service cores needed = service CPU seconds / simulated seconds: what keeps up with the run in real "
          "time; every record was counted by the run and the step windows emitted, checked; deliveries/commit: "
          "deliveries made durable by one journal commit, from the service's /metrics, '-' for a service without "
          "group commit)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
