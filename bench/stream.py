"""Stream readers and ingest: does a stalled SSE reader slow the trainers down?

A ``linnaeus-metrics serve`` subprocess on 127.0.0.1; one run per scenario (world size 1,
STEP_INTERVAL 1 and LR/PIPELINE every step, so every delivery emits several messages);
the same deliveries (``--steps-per-delivery`` train steps of 64 samples, 4 tasks, LR and
pipeline scalars) are POSTed one after the other, timing each POST. Scenarios:

- ``no reader``: nobody streams.
- ``stalled reader``: one client opens ``GET /stream`` with a 4 KiB receive buffer and never
  reads; the service must drop it (counted in ``linnaeus_stream_dropped_readers``) and
  ingest must go on as before.
- ``4 live readers``: four threads read the stream as fast as they can.

The scenarios run in interleaved rounds (``--rounds``) so drift hits them alike; the table
gives each scenario's median deliveries/s and POST latency over all rounds, and the ratio to
``no reader`` in the same run.

Run: ``.venv/bin/python bench/stream.py [--deliveries 300] [--rounds 3]``
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import httpx
import numpy as np

from client._wire import MSGPACK_TYPE, BatchEvent, ScalarEvent, encode_event, pack_body

TASKS = {"L50": 50, "L500": 500, "L2000": 2_000, "L10000": 10_000}
METRICS = {"STEP_INTERVAL": 1, "WANDB_INTERVAL": 1, "LR_INTERVAL": 1, "PIPELINE_INTERVAL": 1, "CONSOLE_INTERVAL": 0}


def deliveries(count: int, steps: int, seed: int = 0) -> list[bytes]:
    """``count`` msgpack bodies of ``steps`` train steps each (seq filled in by the sender)."""
    rng = np.random.default_rng(seed)
    bodies = []
    for d in range(count):
        events: list[Any] = []
        for s in range(d * steps + 1, (d + 1) * steps + 1):
            targets = {t: rng.integers(0, n, 64) for t, n in TASKS.items()}
            topk = {t: np.stack([rng.permutation(n)[:3] for _ in range(64)]) for t, n in TASKS.items()}
            events.append(BatchEvent(step=s, epoch=0, phase="train", time=float(s), targets=targets, topk=topk,
                                     sizes=[64], losses=[float(rng.uniform(0.5, 2))]))
            events.append(ScalarEvent("lr", s, float(s), {"backbone": 1e-3, "head": 1e-2}))
            events.append(ScalarEvent("pipeline", s, float(s), {"queue_depths/batch_index_q": float(s % 7)}))
        bodies.append([encode_event(e, True) for e in events])
    return [pack_body({"session": "", "seq": 0, "events": b}, True) for b in bodies]


def stalled_reader(url: str, run_id: str) -> socket.socket:
    """Opens the stream with a tiny receive window and never reads."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(f"GET /v1/runs/{run_id}/stream HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    return sock


def live_readers(url: str, run_id: str, count: int, stop: threading.Event) -> list[threading.Thread]:
    """Threads that read the stream as fast as they can until ``stop``."""
    def read() -> None:
        with httpx.stream("GET", f"{url}/v1/runs/{run_id}/stream", timeout=30) as response:
            for _ in response.iter_bytes():
                if stop.is_set():
                    return
    threads = [threading.Thread(target=read, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def ingest(url: str, run_id: str, bodies: list[bytes], steps: int) -> list[float]:
    """POST every body in order; returns each POST's seconds."""
    import msgpack

    times = []
    with httpx.Client(base_url=url, timeout=30) as http:
        session = http.post(f"/v1/runs/{run_id}/sessions", json={"rank": 0}).json()["session"]
        for index, body in enumerate(bodies):
            doc = msgpack.unpackb(body, raw=False)
            doc["session"], doc["seq"] = session, index * steps * 3
            started = time.perf_counter()
            reply = http.post(f"/v1/runs/{run_id}/events", content=msgpack.packb(doc, use_bin_type=True),
                              headers={"content-type": MSGPACK_TYPE})
            times.append(time.perf_counter() - started)
            assert reply.status_code == 200, reply.text
    return times


def scenario(name: str, url: str, run_id: str, bodies: list[bytes], steps: int) -> list[float]:
    """One scenario on a fresh run; returns the POST times."""
    spec = {"run_id": run_id, "world_size": 1, "total_steps": 10**7, "config": {"METRICS": METRICS},
            "tasks": [{"name": t, "num_classes": n} for t, n in TASKS.items()]}
    assert httpx.post(f"{url}/v1/runs", json=spec, timeout=30).status_code == 201
    stop = threading.Event()
    cleanup: Callable[[], None] = lambda: None  # noqa: E731
    if name == "stalled reader":
        sock = stalled_reader(url, run_id)
        cleanup = sock.close
    elif name == "4 live readers":
        threads = live_readers(url, run_id, 4, stop)
        def stop_readers() -> None:
            stop.set()
            for thread in threads:
                thread.join(10)
        cleanup = stop_readers
    try:
        return ingest(url, run_id, bodies, steps)
    finally:
        cleanup()


def figure(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--deliveries", type=int, default=300)
    parser.add_argument("--steps-per-delivery", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    c.print_header("stream readers vs ingest")
    bodies = deliveries(args.deliveries, args.steps_per_delivery)
    names = ("no reader", "stalled reader", "4 live readers")
    times: dict[str, list[float]] = {n: [] for n in names}
    rates: dict[str, list[float]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp, c.ServiceProcess(Path(tmp) / "data") as service:
        for round_ in range(args.rounds):
            for index, name in enumerate(names):
                took = scenario(name, service.url, f"r{round_}-{index}", bodies, args.steps_per_delivery)
                times[name] += took
                rates[name].append(len(took) / sum(took))
        text = service.prometheus()
    base = statistics.median(rates["no reader"])
    print(f"{'scenario':<16} {'deliveries/s':>13} {'POST p50 ms':>12} {'POST p99 ms':>12} {'rate / no reader':>17}")
    for name in names:
        rate = statistics.median(rates[name])
        p50, p99 = np.percentile(np.array(times[name]) * 1e3, [50, 99])
        print(f"{name:<16} {rate:>13,.0f} {p50:>12.2f} {p99:>12.2f} {rate / base:>16.3f}x")
    print(f"stream messages published: {figure(text, 'linnaeus_stream_messages_total'):,.0f}; "
          f"readers dropped: {figure(text, 'linnaeus_stream_dropped_readers_total'):,.0f} "
          f"(the stalled reader of each of {args.rounds} rounds)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
