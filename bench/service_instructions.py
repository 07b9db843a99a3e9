"""Instructions the service executes to ingest a delivery, counted by valgrind (no VM noise).

bench/ranks1024.py measures the service's CPU per request through HTTP, and its figure moves
with the machine (1.00-1.06 cores on one VM, 0.76-0.88 on another for the same tree). This
counts instructions instead, in one process and one thread, for what a worker thread does
per delivery: ``decode_delivery`` (msgpack, pydantic, the columnar blocks) and
``RunHost.ingest_many`` (check, journal row in a real SQLite file, statistics, the per-row state
machine, windows and epochs, recovery images as configured by default). The HTTP stack is
left out (bench/requests.py has it). The deliveries are what ranks1024.py posts: ``--ranks``
ranks (32) each sending ``--deliveries`` (6) deliveries of 20 records (the default cadence of
a 1,024-rank run), 256 samples a record, 4 tasks 50/500/2k/10k classes, top-3, subsets
rarity x3 + mask x2, encoded by the client's own sender code, ranks interleaved; 120 steps, so
the step-100 window fires. A child process builds everything and then ingests the deliveries
(or not); under ``valgrind --tool=callgrind`` the difference of the two totals divided by
the deliveries is the cost of one. ``PYTHONHASHSEED=0``. With ``--compare-tree DIR`` (a
checkout of an earlier commit) the same count is taken with that tree's service. What it
does not show: cache misses, lock waits and the fsync's time.

``--group N`` ingests N deliveries together, as the fast path does with deliveries that find
their run busy (one journal transaction; its fsync, a system call, is not counted).

Run: ``.venv/bin/python bench/service_instructions.py [--ranks 32] [--deliveries 6] [--group 1] [--compare-tree DIR]``
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

RECORDS = 20  # a delivery's records at a 1,024-rank run's default cadence (4 s at 5 steps/s)


def child(ranks: int, deliveries: int, play: bool, data_dir: str, group: int) -> None:
    """Build the run and its deliveries (the client and service of ``_common.TREE``); ingest them when
    ``play``, as the fast path does: in groups of ``group`` through ``ingest_group`` (a tree without
    group commit: one by one through ``ingest_delivery``). The parent counts instructions."""
    from ranks1024 import Deliveries

    from client._wire import MSGPACK_TYPE
    from service.api.routes import ingest
    from service.runtime.host import RunHost
    from service.settings import Settings
    from service.storage.sqlite import SqliteStore

    settings = Settings(data_dir=Path(data_dir))
    store = SqliteStore(Path(data_dir) / "metrics.sqlite3", settings.sqlite_synchronous)
    host = RunHost(store=store, history_max_points=settings.history_max_points,
                   image_every_events=settings.snapshot_every_events)
    spec = {"run_id": "instructions", "world_size": ranks, "total_steps": 10**6,
            "tasks": [{"name": n, "num_classes": k, "null_index": 0} for n, k in c.TASKS4.items()],
            "subsets": c.FAMILIES}
    host.create_run(spec)
    sessions = [host.open_session("instructions", r)["session"] for r in range(ranks)]
    bodies = [body for _, body in Deliveries(sessions, RECORDS, RECORDS * deliveries)]
    if play:
        grouped = getattr(ingest, "ingest_group", None)
        for at in range(0, len(bodies), group):
            if grouped is None:
                for body in bodies[at:at + group]:
                    ingest.ingest_delivery(host, settings, "instructions", body, MSGPACK_TYPE)
                continue
            results = grouped(host, settings, "instructions", [(b, MSGPACK_TYPE) for b in bodies[at:at + group]])
            refused = [r for r in results if isinstance(r, Exception)]
            if refused:
                raise RuntimeError(f"a delivery was refused: {refused[0]}")
        state = host.get("instructions").state  # checked, not assumed: every rank's steps went in
        if min(r.completed for r in state.ranks) != RECORDS * deliveries - 1:  # the last one completes later
            raise RuntimeError("the deliveries were not all applied")
    os._exit(0)  # no teardown: its work is not a delivery's


def total_instructions(ranks: int, deliveries: int, play: bool, tree: Path | None, tmp: Path, group: int) -> int:
    tag = f"{int(play)}.{os.getpid()}.{tree.name if tree else 'this'}.{group}"
    out, data = tmp / f"callgrind.{tag}", tmp / f"data.{tag}"
    data.mkdir()
    argv = [__file__, "--child", str(ranks), str(deliveries), "play" if play else "build", str(data), str(group)]
    return c.callgrind_main_thread(argv, out, timeout_s=1800, tree=tree)


def per_delivery(ranks: int, deliveries: int, tree: Path | None, tmp: Path, group: int) -> float:
    with ThreadPoolExecutor(2) as pool:  # the two runs in parallel: one a core
        base, played = pool.map(lambda play: total_instructions(ranks, deliveries, play, tree, tmp, group),
                                (False, True))
    return (played - base) / (ranks * deliveries)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=32)
    parser.add_argument("--deliveries", type=int, default=6, help="a rank's deliveries of 20 records each")
    parser.add_argument("--compare-tree", type=Path, default=None, help="an earlier checkout to count as well")
    parser.add_argument("--group", type=int, default=1,
                        help="deliveries ingested together (group commit), as when they find their run busy")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        ranks, deliveries, mode, data_dir, group = args.child
        child(int(ranks), int(deliveries), mode == "play", data_dir, int(group))
        return 0
    if shutil.which("valgrind") is None:
        print("service_instructions: needs valgrind (apt-get install -y valgrind)", file=sys.stderr)
        return 2
    c.exit_on_sigterm()
    c.print_header("service_instructions: instructions to decode and ingest one delivery (callgrind, in-process)",
                   [f"{args.ranks} ranks x {args.deliveries} deliveries of {RECORDS} records (256 samples, 4 tasks "
                    "50/500/2k/10k classes, top-3, subsets rarity x3 + mask x2), minus building them; main thread; "
                    "PYTHONHASHSEED=0; SQLite FULL, default image interval; no HTTP; "
                    f"ingested as the fast path does, in groups of {args.group} (a tree without group commit: one by "
                    "one)",
                    "command: .venv/bin/python bench/service_instructions.py " + " ".join(sys.argv[1:])])
    trees: list[tuple[str, Path | None]] = [("this tree", None)]
    if args.compare_tree is not None:
        trees.append((str(args.compare_tree), args.compare_tree))
    with tempfile.TemporaryDirectory(prefix="bench-service-instructions-") as tmp_name:
        counts = [per_delivery(args.ranks, args.deliveries, tree, Path(tmp_name), args.group) for _, tree in trees]
    row = [f"{n:,.0f}" for n in counts]
    headers = [f"instructions a delivery, {t}" for t, _ in trees]
    if len(counts) == 2:
        row.append(c.ratio(counts[0], counts[1]))
        headers.append("this / earlier")
    row.append(f"{counts[0] / (RECORDS * 256):,.0f}")
    headers.append("a sample, this tree")
    print(c.table(headers, [row]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
