"""A checkpoint of a large run: the service's CPU while ranks wait for a straggler, and how soon they learn of it.

At a checkpoint every rank calls ``state_dict()``: it posts its marker and waits in
``GET /v1/runs/{run}/checkpoints/{id}?wait_s=`` until every rank's marker is in. This
plays it with ``--ranks`` ranks (default 1,024) against a ``linnaeus-metrics serve``
subprocess: all ranks but the last post their marker and start waiting (one concurrent
request each, one ``httpx.AsyncClient`` in this process); the last rank's marker comes
``--late-s`` seconds later. Printed: the service's CPU seconds (/proc) over the second half
of that window (the waiters' first requests are in by then) and per second, and the time
from the last marker's acknowledgement until each waiter had its snapshot (this one
process receives them all, so that time is mostly its own). With ``--compare-tree DIR`` (a
checkout of an earlier commit) the same run is played against that tree's service too,
alternating, in the same run (``PYTHONPATH``).

Run: ``.venv/bin/python bench/checkpoint_wait.py [--ranks 1024] [--late-s 8] [--compare-tree DIR]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as c
import httpx
import numpy as np
import requests as per_request

from client._wire import CheckpointEvent, encode_event, pack_body

RUN_ID = "ckpt"


async def play(url: str, pid: int, ranks: int, late_s: float) -> dict[str, float]:
    spec = {"run_id": RUN_ID, "world_size": ranks, "total_steps": 1000,
            "tasks": [{"name": n, "num_classes": k, "null_index": 0} for n, k in c.TASKS4.items()]}
    limits = httpx.Limits(max_connections=ranks + 8, max_keepalive_connections=ranks + 8)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as api:
        (await api.post("/v1/runs", json=spec)).raise_for_status()
        sessions = [(await api.post(f"/v1/runs/{RUN_ID}/sessions", json={"rank": r})).json()["session"]
                    for r in range(ranks)]

        async def marker(session: str) -> None:
            body = {"session": session, "seq": 0, "events": [encode_event(CheckpointEvent("c1"), False)]}
            reply = await api.post(f"/v1/runs/{RUN_ID}/events", content=pack_body(body, False),
                                   headers={"content-type": "application/json"})
            reply.raise_for_status()

        async def wait() -> tuple[float, bytes]:
            reply = await api.get(f"/v1/runs/{RUN_ID}/checkpoints/c1", params={"wait_s": late_s + 60})
            reply.raise_for_status()
            return time.monotonic(), reply.content  # parsed once below: this process stands for 1,023

        for session in sessions[:-1]:
            await marker(session)
        waiters = [asyncio.create_task(wait()) for _ in range(ranks - 1)]
        # the straggler: its marker comes late_s after the waiters'; the service's CPU is read over the
        # second half of that time, once the waiters' first requests are in (a benchmark's fixed waits)
        await asyncio.sleep(late_s / 2)
        cpu0, t0 = per_request.cpu_seconds(pid), time.monotonic()
        await asyncio.sleep(late_s / 2)
        cpu = per_request.cpu_seconds(pid) - cpu0
        waited = time.monotonic() - t0
        await marker(sessions[-1])
        acked, cpu_acked = time.monotonic(), per_request.cpu_seconds(pid)
        done = await asyncio.gather(*waiters)
        answer_cpu = per_request.cpu_seconds(pid) - cpu_acked
    snapshots = {body for _, body in done}
    if len(snapshots) != 1 or len(json.loads(done[0][1])["cut"]["ranks"]) != ranks:
        raise RuntimeError(f"the waiters got {len(snapshots)} different snapshots, or not every rank's position")
    latencies = np.array([t - acked for t, _ in done]) * 1e3
    return {"cpu_s": cpu, "waited_s": waited, "answer_cpu_s": answer_cpu, "p50_ms": float(np.median(latencies)),
            "max_ms": float(latencies.max())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=1024)
    parser.add_argument("--late-s", type=float, default=8.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--compare-tree", type=Path, default=None, help="an earlier checkout to run alternately")
    args = parser.parse_args()
    c.exit_on_sigterm()
    c.print_header(f"checkpoint_wait: {args.ranks:,} ranks wait for a straggler's marker ({args.late_s:g} s)",
                   [f"{args.rounds} round(s) per tree, alternating; a fresh service each; SQLite FULL",
                    "command: .venv/bin/python bench/checkpoint_wait.py " + " ".join(sys.argv[1:])])
    trees: list[tuple[str, dict[str, str]]] = [("this tree", {})]
    if args.compare_tree is not None:
        trees.append((f"{args.compare_tree}", {"PYTHONPATH": str(args.compare_tree.resolve())}))
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory() as tmp_dir:
        for round_ in range(args.rounds):
            for name, env in trees:
                service = c.ServiceProcess(Path(tmp_dir) / f"data-{round_}-{len(rows)}", env).start()
                try:
                    got = asyncio.run(play(service.url, service.pid, args.ranks, args.late_s))
                finally:
                    service.stop()
                rows.append([name, round_ + 1, args.ranks - 1, f"{got['cpu_s']:.2f}",
                             f"{got['cpu_s'] / got['waited_s']:.3f}", f"{got['answer_cpu_s']:.2f}",
                             f"{got['p50_ms']:.1f}", f"{got['max_ms']:.1f}"])
                print(f"[{name} round {round_ + 1} done]", file=sys.stderr, flush=True)
    print(c.table(["service", "round", "waiting ranks", "service CPU s, 2nd half of the wait",
                   "service cores while waiting", "service CPU s to answer them",
                   "last marker -> snapshot p50 ms", "max ms"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
