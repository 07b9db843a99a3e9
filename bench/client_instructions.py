"""Instructions a ``log_batch`` call executes on the training thread, counted by valgrind (no VM noise).

The timing benches (client_ratio.py, client_cold.py) see this machine's speed change two-fold
from one session to the next and within a minute; an instruction count does not change with
load (callgrind counts what the CPU is asked to do, not how long it took). For each variant
(label lists or numpy str arrays; service down with room in the queue, or with the queue full
so that every call drops the oldest record) a child process logs N standard batches (256
samples, 4 tasks, top-3, two subset families) after warm-up calls, under
``valgrind --tool=callgrind --separate-threads=yes``, once with N=0 and once with N=--calls;
the difference of the main thread's totals divided by N is the cost of one call, the sender
thread excluded. ``PYTHONHASHSEED=0`` keeps the runs repeatable (within ~1 %). With
``--compare-tree DIR`` (a checkout of an earlier commit) the same counts are taken with that
tree's client. What it does not show: cache misses (a cold call costs more than its
instructions suggest: bench/client_cold.py).

Run: ``.venv/bin/python bench/client_instructions.py [--calls 400] [--compare-tree DIR]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c

VARIANTS = (("labels lists, room in the queue", "lists", False), ("labels numpy str, room in the queue", "np", False),
            ("labels lists, queue full (drops the oldest)", "lists", True),
            ("labels numpy str, queue full (drops the oldest)", "np", True))
FULL_QUEUE = 100  # records: small, so that warm-up fills it
WARMUP = 300


def child(calls: int, labels: str, full: bool) -> None:
    """Log ``calls`` batches after the warm-up (the client of ``_common.TREE``); the parent counts the instructions."""
    import gc

    from client import MetricsClient

    pool = c.batch_pool(seed=11, count=64, tasks=c.TASKS4, size=256)
    arrays = [b.subset_arrays() for b in pool]
    mc = MetricsClient(f"http://{c.LOOPBACK}:{c.free_port()}", "instructions", rank=0, world_size=1,
                       tasks=dict(c.TASKS4), total_steps=10**8, subsets=c.FAMILIES,
                       max_queue_items=FULL_QUEUE if full else 10**6)
    gc.disable()  # a collection would land in one variant's window and not the other's

    def log(i: int) -> None:
        b = pool[i % 64]
        mc.log_batch(i + 1, epoch=0, loss=b.loss, task_losses=b.task_losses, targets=b.targets, topk=b.topk,
                     subsets=arrays[i % 64] if labels == "np" else b.subsets)

    for i in range(WARMUP + calls):
        log(i)
    os._exit(0)  # no close(): its work is not a call's


def main_thread_instructions(calls: int, labels: str, full: bool, tree: Path | None, tmp: Path) -> int:
    out = tmp / f"callgrind.{labels}.{int(full)}.{calls}.{os.getpid()}.{tree.name if tree else 'this'}"
    argv = [__file__, "--child", str(calls), labels, "full" if full else "room"]
    return c.callgrind_main_thread(argv, out, timeout_s=600, tree=tree)


def per_call(calls: int, labels: str, full: bool, tree: Path | None, tmp: Path) -> float:
    with ThreadPoolExecutor(2) as pool:  # the two runs in parallel: one a core
        base, with_calls = pool.map(lambda n: main_thread_instructions(n, labels, full, tree, tmp), (0, calls))
    return (with_calls - base) / calls


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--compare-tree", type=Path, default=None, help="an earlier checkout to count as well")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        calls, labels, room_or_full = args.child
        child(int(calls), labels, room_or_full == "full")
        return 0
    if shutil.which("valgrind") is None:
        print("client_instructions: needs valgrind (apt-get install -y valgrind)", file=sys.stderr)
        return 2
    c.exit_on_sigterm()
    c.print_header("client_instructions: instructions per log_batch call on the training thread (callgrind)",
                   [f"{args.calls} calls after {WARMUP} warm-up calls, minus a run without them; main thread only; "
                    "PYTHONHASHSEED=0; service down (a closed port on 127.0.0.1)",
                    f"batch 256, 4 tasks 50/500/2k/10k classes, top-3 int64, subsets rarity x3 + mask x2; "
                    f"queue full = max_queue_items {FULL_QUEUE}",
                    "command: .venv/bin/python bench/client_instructions.py " + " ".join(sys.argv[1:])])
    trees: list[tuple[str, Path | None]] = [("this tree", None)]
    if args.compare_tree is not None:
        trees.append((str(args.compare_tree), args.compare_tree))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-client-instructions-") as tmp_name:
        for name, labels, full in VARIANTS:
            counts = [per_call(args.calls, labels, full, tree, Path(tmp_name)) for _, tree in trees]
            row = [name, *(f"{n:,.0f}" for n in counts)]
            if len(counts) == 2:
                row.append(c.ratio(counts[0], counts[1]))
            rows.append(row)
    headers = ["variant", *(f"instructions a call, {t}" for t, _ in trees)]
    if len(trees) == 2:
        headers.append("this / earlier")
    print(c.table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
