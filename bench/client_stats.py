"""Sufficient statistics made by the sender thread instead of per-sample predictions on the wire: service vs trainer.

Issue 17 asks whether exact sufficient statistics computed by each rank's sender thread
(counts add exactly) would win clearly for very large runs, and what they would cost the
training thread. The statistics of a record are what the service computes today from its
samples (``service.core.state.Accumulator``: per-task top-1/top-3 counts, chain and partial
chain, null breakdowns, per subset label the same, exact loss sums). Measured in one process,
alternating blocks, on the standard batch (256 samples, 4 tasks 50..10k classes, top-3, two
subset families):

- *service today*: the statistics of a 20-record block as the service computes them per
  request (``Accumulator.of_block`` on the block decoded from the client's wire bytes), per record;
- *service with client statistics*: merging one record's statistics into a window
  (``Accumulator.merge``), what would remain per record;
- *sender thread*: the same statistics for one record at a time (``Accumulator.of_batches``
  on the unpacked record), what each rank's sender would pay per record;
- *training thread*: ``log_batch`` (label lists, service down, large queue) alone, and with a
  second thread computing one record's statistics after each call (the sender's share of the
  GIL), median and p99.

The service's CPU for a whole 20-record request (decode, journal, state machine) is in
bench/requests.py; the arithmetic is in the README's Performance section.

Run: ``.venv/bin/python bench/client_stats.py [--rounds 10] [--block 200]``
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import msgpack
import numpy as np

from client import MetricsClient
from client._coalesce import encode_delivery
from client._fastpath import FastBatches, unpacked
from client._wire import BatchBlock, BatchEvent, TaskInfo, decode_events, index_type
from service.core.state import Accumulator, Layout

RECORDS = 20  # a delivery at the client's default cadence for 1,024 ranks
POOL = 64


def fixtures() -> tuple[Layout, BatchBlock, list[BatchEvent], list[c.Batch]]:
    tasks = [TaskInfo(n, k) for n, k in c.TASKS4.items()]
    fast, index_types = FastBatches(tasks), {t.name: index_type(t.num_classes) for t in tasks}
    pool = c.batch_pool(seed=13, count=POOL, tasks=c.TASKS4, size=256)
    records = []
    for step, b in enumerate(pool):
        record = fast.build(step, 0, "train", 1_000.0 + step, b.loss, b.task_losses, b.targets, b.topk, b.subsets)
        assert record is not None
        records.append(record)
    _, encoded = encode_delivery([[r] for r in records[:RECORDS]], True, index_types)
    (block,) = decode_events(msgpack.unpackb(msgpack.packb(encoded), raw=False))
    assert isinstance(block, BatchBlock) and block.rows == RECORDS
    events = [unpacked(r) for r in records]
    assert all(isinstance(e, BatchEvent) for e in events)
    return Layout(tuple(tasks), c.FAMILIES), block, events, pool  # type: ignore[return-value]


def timed(fn: Callable[[int], object], calls: int) -> np.ndarray:
    out = np.empty(calls, dtype=np.int64)
    clock = time.perf_counter_ns
    for i in range(calls):
        t0 = clock()
        fn(i)
        out[i] = clock() - t0
    return out


class Sender(threading.Thread):
    """Computes the statistics of ``records`` records each time it is asked (a delivery's worth)."""

    def __init__(self, layout: Layout, events: list[BatchEvent], records: int) -> None:
        super().__init__(daemon=True)
        self.layout, self.events, self.records = layout, events, records
        self.ready = threading.Semaphore(0)
        self.idle = threading.Condition()
        self.asked = self.done = 0

    def ask(self) -> None:
        self.asked += 1
        self.ready.release()

    def run(self) -> None:
        while True:
            self.ready.acquire()
            first = self.done * self.records % POOL
            Accumulator.of_batches(self.layout, self.events[first:first + self.records])
            with self.idle:
                self.done += 1
                self.idle.notify_all()

    def wait_idle(self) -> None:
        """Until every record asked for is done: its backlog must not run into the next block."""
        with self.idle:
            if not self.idle.wait_for(lambda: self.done >= self.asked, timeout=60):
                raise RuntimeError("the sender thread fell behind by more than a minute")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--block", type=int, default=200)
    args = parser.parse_args()
    c.exit_on_sigterm()
    layout, block, events, pool = fixtures()
    window = Accumulator(layout)
    singles = Accumulator.of_batches(layout, events)
    client = MetricsClient(f"http://{c.LOOPBACK}:{c.free_port()}", "client-stats", rank=0, world_size=1,
                           tasks=dict(c.TASKS4), total_steps=10**8, subsets=c.FAMILIES, max_queue_items=10**6)
    one, delivery = Sender(layout, events, 1), Sender(layout, events, RECORDS)
    one.start()
    delivery.start()
    step = [0]

    def log(i: int) -> None:
        b = pool[i % POOL]
        step[0] += 1
        client.log_batch(step[0], epoch=0, loss=b.loss, task_losses=b.task_losses, targets=b.targets,
                         topk=b.topk, subsets=b.subsets)

    def log_with_sender(i: int) -> None:
        log(i)
        one.ask()

    def log_with_delivery_sender(i: int) -> None:
        log(i)
        if i % RECORDS == RECORDS - 1:
            delivery.ask()

    per_block = max(1, args.block // RECORDS)
    work: dict[str, tuple[Callable[[int], object], int, int]] = {  # name: (call, calls a block, records a call)
        "service today: statistics of a 20-record block": (lambda i: Accumulator.of_block(layout, block),
                                                            per_block, RECORDS),
        "service with client statistics: merge a record's": (lambda i: window.merge(singles[i % POOL]),
                                                             args.block, 1),
        "sender thread: statistics of one record": (lambda i: Accumulator.of_batches(layout, [events[i % POOL]]),
                                                    args.block, 1),
        "sender thread: statistics of 20 records at once": (
            lambda i: Accumulator.of_batches(layout, events[i % 3 * RECORDS:(i % 3 + 1) * RECORDS]),
            per_block, RECORDS),
        "training thread: log_batch alone": (log, args.block, 1),
        "training thread: log_batch, sender: each record": (log_with_sender, args.block, 1),
        "training thread: log_batch, sender: 20 at once": (log_with_delivery_sender, args.block, 1),
    }
    times: dict[str, list[np.ndarray]] = {name: [] for name in work}
    names = list(work)
    for r in range(args.rounds + 1):  # round 0: untimed
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, calls, records = work[name]
            ns = timed(fn, calls) / records
            one.wait_idle()
            delivery.wait_idle()
            if r:
                times[name].append(ns)
        client._worker._queue.clear()  # the down client's queue: keep it from growing without end
    client.close(timeout_s=0)
    c.print_header("client_stats: sufficient statistics on the sender thread vs per-sample predictions on the wire",
                   [f"{args.rounds} rounds of alternating blocks ({args.block} calls; the 20-record block "
                    f"{per_block} times), after one untimed round; one process",
                    "batch 256, 4 tasks 50/500/2k/10k classes, top-3, subsets rarity x3 + mask x2",
                    "command: .venv/bin/python bench/client_stats.py " + " ".join(sys.argv[1:])])
    medians = {name: float(np.median(np.concatenate(ts))) for name, ts in times.items()}
    rows = [[name, c.us(medians[name]), c.us(c.pct(np.concatenate(ts), 99))] for name, ts in times.items()]
    print(c.table(["what (per record)", "median us", "p99 us"], rows))
    today, merged = medians[names[0]], medians[names[1]]
    alone = medians[names[4]]
    print(f"\nservice, statistics per record: {c.us(today)} us today -> {c.us(merged)} us with client statistics "
          f"(saves {c.us(today - merged)} us a record)")
    for sender, training in ((names[2], names[5]), (names[3], names[6])):
        print(f"{sender}: {c.us(medians[sender])} us a record of the trainer's CPU; log_batch {c.us(alone)} -> "
              f"{c.us(medians[training])} us median beside it ({c.ratio(medians[training], alone)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
