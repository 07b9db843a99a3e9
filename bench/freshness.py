"""Freshness: how soon a closed step window shows in ``GET /v1/runs/{run}/metrics``.

A ``linnaeus-metrics serve`` subprocess on 127.0.0.1 and two clients (rank 0 and 1, each
with its own sender thread) in this process; STEP_INTERVAL 10; batches of 256 samples,
4 tasks (50/500/2,000/10,000 classes), top-3, subsets rarity x3 + mask x2.

A window closes when the last rank completes it. Per window, rank 0 logs its 10 steps
and flushes; rank 1 logs 9 steps, then the clock starts and rank 1 logs the window's
last step and calls ``flush()`` (the call that completes the window), and this process
polls ``GET /metrics`` (every ``--poll-ms``, bounded by a 5 s deadline per window) until
``train/loss`` carries the window's last step. Reported: from the completing call, and
from ``flush()``'s return (the POST ack) to visibility.

Informational second mode, "no flush": the trainer just keeps logging; the window's last
step is completed by rank 1's next ``log_batch`` and reaches the service with the sender
thread's next delivery (``flush_interval_s``, default 0.2 s).

Run: ``.venv/bin/python bench/freshness.py [--windows 200]``
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import httpx
import numpy as np

BATCH = 256
INTERVAL = 10
WARMUP_WINDOWS = 10
KEY = "train/loss"


class Ranks:
    """Two clients of one run; ``step`` is the next step both will log."""

    def __init__(self, url: str, run_id: str, pool: list[c.Batch]) -> None:
        from client import MetricsClient

        self.pool = pool
        self.clients = [MetricsClient(url, run_id, rank=r, world_size=2, tasks=dict(c.TASKS4), total_steps=10**7,
                                      config=c.metrics_config(step_interval=INTERVAL, wandb_interval=50),
                                      subsets=c.FAMILIES, max_queue_items=100_000) for r in (0, 1)]
        self.http = httpx.Client(base_url=url, timeout=10)
        self.run_id = run_id

    def log(self, rank: int, step: int) -> None:
        b = self.pool[(step + rank) % len(self.pool)]
        self.clients[rank].log_batch(step, epoch=0, loss=b.loss, task_losses=b.task_losses, targets=b.targets,
                                     topk=b.topk, subsets=b.subsets)

    def visible_step(self) -> int:
        body = self.http.get(f"/v1/runs/{self.run_id}/metrics").json()
        entry = body.get("metrics", {}).get(KEY)
        return int(entry["step"]) if entry else -1

    def wait_visible(self, step: int, poll_s: float, deadline_s: float = 5.0) -> tuple[float, int]:
        """Poll until ``step`` shows (bounded); returns (perf_counter at sight, polls)."""
        end = time.perf_counter() + deadline_s
        polls = 0
        while True:
            polls += 1
            if self.visible_step() >= step:
                return time.perf_counter(), polls
            if time.perf_counter() > end:
                raise TimeoutError(f"window ending at step {step} not visible within {deadline_s} s")
            time.sleep(poll_s)

    def close(self) -> None:
        for mc in self.clients:
            mc.close(timeout_s=10)
        self.http.close()


def with_flush(ranks: Ranks, windows: int, poll_s: float, budget: c.Budget) -> dict[str, Any]:
    return with_flush_from(ranks, 0, windows, poll_s, budget)


def with_flush_from(ranks: Ranks, step: int, windows: int, poll_s: float, budget: c.Budget) -> dict[str, Any]:
    """``windows`` windows (after the warm-up ones) from ``step``, a window boundary both ranks reached."""
    call, ack, polls = [], [], []
    for w in range(windows + WARMUP_WINDOWS):
        if budget.left() < 10:
            break
        end = step + INTERVAL
        for s in range(step + 1, end + 1):
            ranks.log(0, s)
        ranks.clients[0].flush(timeout_s=30)
        for s in range(step + 1, end):
            ranks.log(1, s)
        start = time.perf_counter()
        ranks.log(1, end)
        ranks.clients[1].flush(timeout_s=30)
        acked = time.perf_counter()
        seen, n = ranks.wait_visible(end, poll_s)
        if w >= WARMUP_WINDOWS:
            call.append(seen - start)
            ack.append(seen - acked)
            polls.append(n)
        step = end
    return {"call": np.array(call), "ack": np.array(ack), "polls": np.array(polls), "last_step": step}


def without_flush(ranks: Ranks, first_step: int, windows: int, poll_s: float, budget: c.Budget) -> dict[str, Any]:
    call = []
    step = first_step
    for _ in range(windows):
        if budget.left() < 10:
            break
        end = step + INTERVAL
        for s in range(step + 1, end + 1):
            ranks.log(0, s)
            ranks.log(1, s)
        ranks.log(0, end + 1)  # rank 0 completes the window first ...
        start = time.perf_counter()
        ranks.log(1, end + 1)  # ... rank 1's next step completes it for everyone
        seen, _ = ranks.wait_visible(end, poll_s)
        call.append(seen - start)
        step = end + 1
        # realign on a window boundary: the next window's steps follow on from end + 1
        while step % INTERVAL:
            step += 1
            ranks.log(0, step)
            ranks.log(1, step)
    return {"call": np.array(call)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=200)
    parser.add_argument("--no-flush-windows", type=int, default=40)
    parser.add_argument("--poll-ms", type=float, default=2.0)
    parser.add_argument("--budget-s", type=float, default=120.0)
    args = parser.parse_args()
    c.exit_on_sigterm()
    budget = c.Budget(args.budget_s)
    pool = c.batch_pool(seed=21, count=8, tasks=c.TASKS4, size=BATCH)
    poll_s = args.poll_ms / 1e3
    with tempfile.TemporaryDirectory(prefix="bench-freshness-") as tmp, \
            c.ServiceProcess(Path(tmp) / "service-data") as service:
        ranks = Ranks(service.url, "freshness", pool)
        try:
            flushed = with_flush(ranks, args.windows, poll_s, budget)
            print(f"[{budget.spent():6.1f} s] with flush done", file=sys.stderr, flush=True)
            steady = without_flush(ranks, flushed["last_step"], args.no_flush_windows, poll_s, budget)
            get_ms = time_get(ranks)
            stats = [mc.stats() for mc in ranks.clients]
        finally:
            ranks.close()
    report(flushed, steady, get_ms, stats, args.poll_ms)
    return 0


def time_get(ranks: Ranks, n: int = 50) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        ranks.visible_step()
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


def report(flushed: dict[str, Any], steady: dict[str, Any], get_ms: float, stats: list[dict[str, Any]],
           poll_ms: float) -> None:
    c.print_header("freshness: completing client call -> new window visible in GET /v1/runs/{run}/metrics",
                   [f"2 ranks (2 clients, 1 process) -> service subprocess on 127.0.0.1; STEP_INTERVAL {INTERVAL}; "
                    f"batches of {BATCH} samples, 4 tasks, subsets rarity x3 + mask x2",
                    f"poll every {poll_ms} ms (one GET /metrics takes {get_ms:.1f} ms median at the end); "
                    f"{WARMUP_WINDOWS} warm-up windows not counted"])
    rows = []
    for name, values in (("log + flush() of the last rank -> visible", flushed["call"]),
                         ("flush() returned (POST ack) -> visible", flushed["ack"]),
                         ("no flush: next log_batch -> visible (info)", steady["call"])):
        if len(values):
            ms = values * 1e3
            rows.append([name, len(values), f"{c.pct(ms, 50):.1f}", f"{c.pct(ms, 99):.1f}", f"{ms.max():.1f}"])
        else:
            rows.append([name, 0, "n/a", "n/a", "n/a"])
    print(c.table(["measure", "windows", "p50 ms", "p99 ms", "max ms"], rows))
    dropped = sum(sum(s["dropped"].values()) for s in stats)
    print(f"polls per window (median): {float(np.median(flushed['polls'])) if len(flushed['polls']) else 0:.0f}; "
          f"client drops: {dropped}")
    print("\ntargets:")
    if len(flushed["call"]) >= 200:
        p99 = c.pct(flushed["call"] * 1e3, 99)
        print(f"  p99 (log + flush -> visible) <= 200 ms over >= 200 windows: {p99:.1f} ms -> "
              f"{c.verdict(p99 <= 200)}")
    else:
        print(f"  p99 over >= 200 windows: n/a (only {len(flushed['call'])} windows measured)")


if __name__ == "__main__":
    sys.exit(main())
