"""Issue 5's figures: snapshot size and time, and recovery time, for a 100k-step run.

The run is fed straight into ``service.core.host.RunHost`` with a
``service.storage.sqlite.SqliteStore`` (durable, synchronous=FULL) in a tmp dir, bypassing
HTTP: events are the wire's decoded dataclasses (``client._wire.BatchEvent`` ...), as the
service's ingest route would hand them over, delivered per rank in chunks of 64 events
with the host's exactly-once ``ingest(run, session, seq, events)``.

Run: 100,000 steps, 2 ranks, batches of 32 samples, 3 tasks (10/100/1,000 classes, null
class 0), one subset family (rarity, 3 labels); each rank logs its learning rate (2 param
groups) every step; schedule STEP_INTERVAL 10, WANDB_INTERVAL 100, LR_INTERVAL 100; a
train epoch and one validation epoch (4 val batches per rank) every 10,000 steps.

Fed twice: with the default image interval (settings ``snapshot_every_events=5000`` ->
``RunHost(image_every_events=5000)``) and with no images (journal only). Reported:
``len(json.dumps(host.snapshot(run)))``, its msgpack size, the SQLite file size, the
time to take a snapshot, and the time for a new host to ``recover(store.load())``.

Run: ``.venv/bin/python bench/recovery.py [--steps 100000]``
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import msgpack
import numpy as np

from client._wire import BatchEvent, CompleteEvent, EndEpochEvent, Event, ScalarEvent
from service.runtime.host import RunHost
from service.storage.base import StoredRun
from service.storage.sqlite import SqliteStore

RUN_ID = "issue5"
TASKS3 = {"genus": 10, "species": 100, "taxon": 1_000}
RARITY = {"rarity": ["common", "rare", "very_rare"]}
WORLD = 2
BATCH = 32
VAL_BATCHES = 4
EPOCH_STEPS = 10_000
CHUNK = 64
POOL = 64
NO_IMAGES = 10**15
DEFAULT_IMAGES = 5_000


def spec(total_steps: int) -> dict[str, Any]:
    return {"run_id": RUN_ID, "world_size": WORLD, "total_steps": total_steps,
            "tasks": [{"name": n, "num_classes": k, "null_index": 0} for n, k in TASKS3.items()],
            "subsets": RARITY,
            "config": c.metrics_config(step_interval=10, wandb_interval=100, lr_interval=100)}


def event_pool(seed: int) -> list[BatchEvent]:
    """Read-only batch templates (arrays shared between steps, so made immutable)."""
    out = []
    for b in c.batch_pool(seed=seed, count=POOL, tasks=TASKS3, size=BATCH, families=RARITY):
        vocab = sorted(RARITY["rarity"])
        codes = np.array([vocab.index(v) for v in b.subsets["rarity"]], dtype=np.int64)
        for array in (*b.targets.values(), *b.topk.values(), codes):
            array.flags.writeable = False
        out.append(BatchEvent(step=0, epoch=0, phase="train", time=0.0, targets=b.targets, topk=b.topk,
                              sizes=[BATCH], losses=[b.loss], task_losses={k: [v] for k, v in b.task_losses.items()},
                              subsets={"rarity": (vocab, codes)}))
    return out


def batch(template: BatchEvent, step: int, epoch: int, phase: str, t: float) -> BatchEvent:
    return BatchEvent(step=step, epoch=epoch, phase=phase, time=t, targets=template.targets, topk=template.topk,
                      sizes=template.sizes, losses=template.losses, task_losses=template.task_losses,
                      subsets=template.subsets)


def rank_stream(rank: int, steps: int) -> Iterator[Event]:
    """One rank's records in logging order."""
    pool = event_pool(seed=40 + rank)
    for step in range(1, steps + 1):
        epoch = (step - 1) // EPOCH_STEPS
        t = 1_000.0 + step * 0.25 + rank * 0.01
        yield batch(pool[step % POOL], step, epoch, "train", t)
        yield ScalarEvent("lr", step, t, {"backbone": 1e-4 / (1 + step * 1e-4), "heads": 1e-3})
        if step % EPOCH_STEPS == 0:
            yield EndEpochEvent("train", epoch, t)
            for v in range(VAL_BATCHES):
                yield batch(pool[(step + v) % POOL], step, epoch, "val", t + 0.01 * (v + 1))
            yield EndEpochEvent("val", epoch, t + 0.1)
    yield CompleteEvent(steps)


def feed(host: RunHost, steps: int) -> tuple[float, int]:
    """Deliver both ranks' streams chunk by chunk, alternating ranks; returns (seconds, events)."""
    host.create_run(spec(steps))
    sessions = [host.open_session(RUN_ID, r)["session"] for r in range(WORLD)]
    streams = [rank_stream(r, steps) for r in range(WORLD)]
    seqs = [0] * WORLD
    events = 0
    start = time.perf_counter()
    live = set(range(WORLD))
    while live:
        for rank in sorted(live):
            chunk = [e for _, e in zip(range(CHUNK), streams[rank], strict=False)]
            if not chunk:
                live.discard(rank)
                continue
            host.ingest(RUN_ID, sessions[rank], seqs[rank], chunk)
            seqs[rank] += len(chunk)
            events += len(chunk)
    return time.perf_counter() - start, events


def file_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


class TeeStore:
    """The host's store, whose journal is also copied into a second, image-free store.

    One feed then yields both stores: ``primary`` gets images every ``image_every_events``
    (which delete the journal before them), ``journal`` keeps every command, exactly the
    store a host without images would have written. Time spent copying is measured so
    it can be taken out of the ingest time.
    """

    def __init__(self, primary: SqliteStore, journal: SqliteStore) -> None:
        self.primary, self.journal = primary, journal
        self.copy_s = 0.0

    def append(self, run_id: str, command: str, payload: Any) -> int:
        return self.append_many(run_id, command, [payload])  # as the stores themselves do

    def append_many(self, run_id: str, command: str, payloads: Any) -> int:
        command_id = self.primary.append_many(run_id, command, payloads)
        start = time.perf_counter()
        self.journal.append_many(run_id, command, payloads)
        self.copy_s += time.perf_counter() - start
        return command_id

    def load_run(self, run_id: str) -> Any:
        return self.primary.load_run(run_id)

    def write_image(self, run_id: str, command_id: int, image: Any) -> None:
        self.primary.write_image(run_id, command_id, image)

    def put_blob(self, run_id: str, kind: str, key: str, value: Any) -> None:
        self.primary.put_blob(run_id, kind, key, value)
        start = time.perf_counter()
        self.journal.put_blob(run_id, kind, key, value)
        self.copy_s += time.perf_counter() - start

    def get_blob(self, run_id: str, kind: str, key: str) -> dict[str, Any] | None:
        return self.primary.get_blob(run_id, kind, key)

    def delete_run(self, run_id: str) -> None:
        self.primary.delete_run(run_id)
        self.journal.delete_run(run_id)

    def load(self) -> Iterator[StoredRun]:
        return self.primary.load()

    def probe(self) -> None:
        self.primary.probe()
        self.journal.probe()

    def close(self) -> None:
        self.primary.close()
        self.journal.close()


def feed_both(steps: int, tmp: Path) -> tuple[dict[str, Any], dict[int, Path], dict[str, Any]]:
    """Feed the run once (images every 5,000 events, journal teed); returns figures, stores, metrics."""
    paths = {DEFAULT_IMAGES: tmp / "images" / "metrics.sqlite3", NO_IMAGES: tmp / "journal" / "metrics.sqlite3"}
    tee = TeeStore(SqliteStore(paths[DEFAULT_IMAGES], "FULL"), SqliteStore(paths[NO_IMAGES], "FULL"))
    host = RunHost([], store=tee, image_every_events=DEFAULT_IMAGES)
    out: dict[str, Any] = {}
    total_s, out["events"] = feed(host, steps)
    out["ingest_s"] = total_s - tee.copy_s
    out["image_writes"], out["image_write_s"] = host.image_writes, host.image_seconds
    snap_times, json_times = [], []
    for _ in range(5):
        start = time.perf_counter()
        snapshot = host.snapshot(RUN_ID)
        snap_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        text = json.dumps(snapshot)
        json_times.append(time.perf_counter() - start)
    out["snapshot_s"], out["json_s"] = float(np.median(snap_times)), float(np.median(json_times))
    out["json_bytes"] = len(text)
    out["msgpack_bytes"] = len(msgpack.packb(snapshot, use_bin_type=True))
    out["sqlite_live"] = {k: file_bytes(p) for k, p in paths.items()}
    expected = host.metrics(RUN_ID)
    out["keys"] = len(expected["metrics"])
    tee.close()
    out["sqlite_closed"] = {k: file_bytes(p) for k, p in paths.items()}
    return out, paths, expected


def recover(path: Path, image_every: int, repeats: int, expected: dict[str, Any]) -> tuple[float, bool]:
    """Median time for a new host to recover from the store at ``path``; and whether it matches."""
    times, same = [], True
    for _ in range(repeats):
        store = SqliteStore(path, "FULL")
        fresh = RunHost([], store=store, image_every_events=image_every)
        start = time.perf_counter()
        fresh.recover(store.load())
        times.append(time.perf_counter() - start)
        same = same and fresh.metrics(RUN_ID) == expected
        store.close()
    return float(np.median(times)), same


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    args = parser.parse_args()
    c.exit_on_sigterm()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        fed, paths, expected = feed_both(args.steps, Path(tmp))
        print(f"[{time.monotonic() - started:6.1f} s] fed", file=sys.stderr, flush=True)
        recovered = {DEFAULT_IMAGES: recover(paths[DEFAULT_IMAGES], DEFAULT_IMAGES, 3, expected),
                     NO_IMAGES: recover(paths[NO_IMAGES], NO_IMAGES, 1, expected)}
        print(f"[{time.monotonic() - started:6.1f} s] recovered", file=sys.stderr, flush=True)
    report(fed, recovered, args.steps)
    return 0


def report(fed: dict[str, Any], recovered: dict[int, tuple[float, bool]], steps: int) -> None:
    c.print_header("recovery (issue 5): snapshot size/time and recovery time, RunHost + SqliteStore direct",
                   [f"{steps:,} steps, {WORLD} ranks, batches of {BATCH}, 3 tasks (10/100/1,000 classes), subsets "
                    "rarity x3, LR every step; STEP_INTERVAL 10, WANDB_INTERVAL 100, LR_INTERVAL 100; "
                    f"val epoch every {EPOCH_STEPS:,} steps",
                    f"delivered in chunks of {CHUNK} events per rank; SQLite synchronous=FULL; fed once, the "
                    "journal teed into a second, image-free store",
                    f"ingest: {fed['events']:,} events in {fed['ingest_s']:.1f} s "
                    f"({fed['events'] / fed['ingest_s']:,.0f} events/s, {steps * WORLD * BATCH / fed['ingest_s']:,.0f} "
                    f"train samples/s), of which {fed['image_writes']} image writes took {fed['image_write_s']:.1f} s"])
    print(f"snapshot of the run at step {steps:,} ({fed['keys']} metric keys):")
    print(c.table(["figure", "value"], [
        ["len(json.dumps(host.snapshot(run)))", f"{fed['json_bytes']:,} B ({fed['json_bytes'] / 2**20:.2f} MiB)"],
        ["msgpack size of the snapshot", f"{fed['msgpack_bytes']:,} B ({fed['msgpack_bytes'] / 2**20:.2f} MiB)"],
        ["host.snapshot(run) time (median of 5)", f"{fed['snapshot_s'] * 1e3:.1f} ms"],
        ["json.dumps of the snapshot (median of 5)", f"{fed['json_s'] * 1e3:.1f} ms"],
    ]))
    print()
    rows = []
    labels = ((DEFAULT_IMAGES, "default: image every 5,000 events"), (NO_IMAGES, "no images (journal only)"))
    for every, label in labels:
        seconds, same = recovered[every]
        rows.append([label, f"{fed['sqlite_live'][every] / 2**20:.1f}", f"{fed['sqlite_closed'][every] / 2**20:.1f}",
                     f"{seconds:.3f}", same])
    print(c.table(["store", "SQLite MiB (live, +WAL)", "SQLite MiB (closed)", "recover s", "same metrics after"],
                  rows))
    a, b = recovered[DEFAULT_IMAGES][0], recovered[NO_IMAGES][0]
    print(f"\nrecovery with images is {c.ratio(b, a)} faster than journal replay ({a:.3f} s vs {b:.3f} s)")


if __name__ == "__main__":
    sys.exit(main())
