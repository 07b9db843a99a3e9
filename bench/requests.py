"""Per-request cost: service CPU per delivery of 1, 5 and 256 records, next to a bare uvicorn app.

A trainer rank's sender posts what it has every ``flush_interval_s`` (0.2 s): at 5 steps/s
a delivery holds one record, so a 1,024-rank run makes ~5,000 requests a second and the
cost of a request, not of a sample, decides how many cores the service needs. This script
posts deliveries of the standard batch (256 samples, 4 tasks, top-3, two subset families),
encoded by the client's own sender code (``client._coalesce.encode_delivery``: blocks), to a
real ``linnaeus-metrics serve`` subprocess one after another, and reads the service's CPU
time (user + system, /proc) per request. Side by side, in the same run: a bare uvicorn app
(``uvloop``, ``httptools``, the same flags) that only reads the same bodies and answers, the
floor any ASGI service on this machine pays for the request. It prints the ratio and, for
each delivery size, the cores a 1,024-rank run at 5 steps/s would need at that size (the
size a sender's ``flush_interval_s`` gives: 0.2 s -> 1 record, 1 s -> 5 records, 4 s -> 20 records,
the client's default cadence at 1,024 ranks).

Run: ``.venv/bin/python bench/requests.py [--rounds 3]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import httpx
import numpy as np

from client._coalesce import encode_delivery
from client._fastpath import FastBatches, Record
from client._spec import default_flush_interval
from client._wire import MSGPACK_TYPE, TaskInfo, index_type, pack_body

RUN_ID = "requests"
BARE_APP = textwrap.dedent('''
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        while True:
            message = await receive()
            if not message.get("more_body"):
                break
        body = b'{"acked_seq":1,"applied":1,"ignored":0}'
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
''')
SIZES = ((1, 300), (5, 150), (20, 60), (256, 12))  # records per delivery, deliveries per round


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bodies(session: str, records: int, count: int, first_seq: int, first_step: int) -> tuple[list[bytes], int]:
    """``count`` deliveries of ``records`` standard batches each, as the client's sender encodes them,
    and the sequence number after them."""
    tasks = [TaskInfo(n, k) for n, k in c.TASKS4.items()]
    fast, index_types = FastBatches(tasks), {t.name: index_type(t.num_classes) for t in tasks}
    pool = c.batch_pool(seed=7, count=8, tasks=c.TASKS4, size=256)
    out, step, seq = [], first_step, first_seq
    for _ in range(count):
        parts: list[list[Record]] = []
        for _ in range(records):
            b = pool[step % len(pool)]
            record = fast.build(step, 0, "train", 1_000.0 + step, b.loss, b.task_losses, b.targets, b.topk,
                                b.subsets)
            assert record is not None
            parts.append([record])
            step += 1
        _, encoded = encode_delivery(parts, True, index_types)
        out.append(pack_body({"session": session, "seq": seq, "events": encoded}, True))
        seq += len(encoded)
    return out, seq


def post_all(url: str, pid: int, path: str, payloads: list[bytes]) -> float:
    """Service CPU seconds per request over ``payloads`` posted one after another."""
    with httpx.Client(timeout=60) as http:
        before = cpu_seconds(pid)
        for body in payloads:
            reply = http.post(url + path, content=body, headers={"content-type": MSGPACK_TYPE})
            reply.raise_for_status()
        return (cpu_seconds(pid) - before) / len(payloads)


def start_bare(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    (tmp / "bare_app.py").write_text(BARE_APP)
    port = c.free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "bare_app:app", "--host", c.LOOPBACK, "--port",
                             str(port), "--loop", "uvloop", "--http", "httptools", "--log-level", "warning",
                             "--no-access-log"], cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://{c.LOOPBACK}:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return proc, url
        except httpx.HTTPError:
            time.sleep(0.05)  # a benchmark's bounded wait for its own server
    proc.kill()
    raise RuntimeError("the bare uvicorn app did not start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each posting every size to both servers")
    parser.add_argument("--warmup", type=int, default=600,
                        help="one-record deliveries posted untimed first (a fresh service's first few hundred "
                             "requests cost more)")
    args = parser.parse_args()
    c.exit_on_sigterm()
    c.print_header("requests: service CPU per delivery (client-encoded, blocks) next to a bare uvicorn app",
                   ["standard batch: 256 samples, 4 tasks 50/500/2k/10k classes, top-3, subsets rarity x3 + mask x2",
                    f"{args.rounds} rounds; each posts {', '.join(f'{n} deliveries of {r}' for r, n in SIZES)} "
                    "record(s) to the service and the same bodies to the bare app; medians over rounds",
                    f"{args.warmup} one-record deliveries posted to both first, untimed"])
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        service = c.ServiceProcess(tmp / "data", {}).start()
        bare, bare_url = start_bare(tmp)
        try:
            spec = {"run_id": RUN_ID, "world_size": 1, "total_steps": 10**6,
                    "tasks": [{"name": n, "num_classes": k, "null_index": 0} for n, k in c.TASKS4.items()],
                    "subsets": c.FAMILIES, "config": {"METRICS": {"STEP_INTERVAL": 10, "WANDB_INTERVAL": 0,
                                                                   "CONSOLE_INTERVAL": 0}}}
            httpx.post(f"{service.url}/v1/runs", json=spec, timeout=30).raise_for_status()
            session = httpx.post(f"{service.url}/v1/runs/{RUN_ID}/sessions", json={"rank": 0},
                                 timeout=30).json()["session"]
            warm, seq = bodies(session, 1, args.warmup, 0, 1)
            step = 1 + args.warmup
            post_all(service.url, service.pid, f"/v1/runs/{RUN_ID}/events", warm)
            post_all(bare_url, bare.pid, "/", warm)
            results: dict[int, list[tuple[float, float, int]]] = {r: [] for r, _ in SIZES}
            for _ in range(args.rounds):
                for records, count in SIZES:
                    payloads, seq = bodies(session, records, count, seq, step)
                    step += records * count
                    ours = post_all(service.url, service.pid, f"/v1/runs/{RUN_ID}/events", payloads)
                    floor = post_all(bare_url, bare.pid, "/", payloads)
                    results[records].append((ours, floor, len(payloads[0])))
            report(results)
        finally:
            bare.terminate()
            bare.wait(10)
            service.stop()
    return 0


def report(results: dict[int, list[tuple[float, float, int]]]) -> None:
    rows = []
    for records, runs in results.items():
        ours = float(np.median([o for o, _, _ in runs]))
        floor = float(np.median([f for _, f, _ in runs]))
        per_s = 1024 * 5 / records  # requests a second of a 1,024-rank run at 5 steps/s
        rows.append([str(records), f"{runs[0][2]:,}", f"{ours * 1e3:.2f}",
                     f"{min(o for o, _, _ in runs) * 1e3:.2f}..{max(o for o, _, _ in runs) * 1e3:.2f}",
                     f"{floor * 1e3:.2f}", f"{ours / floor:.2f}x", f"{records * 256 / ours:,.0f}",
                     f"{per_s:,.0f}", f"{per_s * ours:.2f}"])
    print(c.table(["records/delivery", "body bytes", "service CPU ms/request", "min..max",
                   "bare uvicorn ms/request", "service / bare", "samples/service CPU-s",
                   "requests/s at 1,024 ranks", "service cores needed"], rows))
    print(f"\n(1 record a delivery: a sender flushing every 0.2 s at 5 steps/s; 5 records: every 1 s; "
          f"20 records: every {default_flush_interval(1024):g} s, the client's default cadence at 1,024 ranks "
          "(client._spec.default_flush_interval); 256: a backlog. The bare app's figure is what uvicorn itself "
          "costs on this machine.)")


if __name__ == "__main__":
    sys.exit(main())
