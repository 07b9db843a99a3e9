"""Many runs at once: 20 runs x 4 ranks delivered concurrently over real HTTP to one service.

Every rank streams from its own thread and its own connection, in random chunk sizes and
a random encoding, all released together; each run must then equal its own independent
reference (tests/reference.py), so no run's data leaks into another's and no interleaving
of ranks or runs changes a value.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from service.settings import Settings
from service.sinks.memory import MemorySink
from tests.api.fuzz._live import live_service
from tests.api.fuzz._seed import delivery, post_delivery
from tests.conftest import RunData, make_run, stream_events
from tests.reference import expected_history, expected_summary

RUNS = 20
RANKS = 4
METRICS = {"STEP_INTERVAL": 3, "WANDB_INTERVAL": 4, "LR_INTERVAL": 2, "PIPELINE_INTERVAL": 5, "CONSOLE_INTERVAL": 7}
INTERVALS = {"step": 3, "wandb": 4, "lr": 2, "pipeline": 5}
TIMING = ("samples_per_sec", "eta_sec", "epoch_duration_sec", "core/")
BUDGET_S = 30.0


def _stream_rank(url: str, run_id: str, data: RunData, rank: int, start: threading.Barrier) -> int:
    """Open the rank's session, wait for everyone, then deliver its stream in random chunks."""
    rng = random.Random(f"{run_id}/{rank}")
    binary = rng.random() < 0.5
    events = stream_events(data, rank)
    session = httpx.post(f"{url}/v1/runs/{run_id}/sessions", json={"rank": rank}, timeout=BUDGET_S).json()["session"]
    start.wait(timeout=BUDGET_S)
    # a connection of its own from here: one idle at the barrier past uvicorn's keep-alive (5 s,
    # when 80 sessions' commits are slow) would be closed under the first delivery
    with httpx.Client(base_url=url, timeout=BUDGET_S) as client:
        sent = 0
        while sent < len(events):
            chunk = events[sent:sent + rng.randint(1, 6)]
            reply = post_delivery(client, run_id, delivery(session, sent, chunk, binary), binary)
            assert reply.status_code == 200, f"{run_id} rank {rank}: {reply.status_code} {reply.text}"
            sent += len(chunk)
            assert reply.json()["acked_seq"] == sent
    return sent


def _history(client: httpx.Client, run_id: str) -> dict[str, list[tuple[int, float]]]:
    series = client.get(f"/v1/runs/{run_id}/history").json()["series"]
    return {k: list(zip(v["steps"], v["values"], strict=True)) for k, v in series.items()
            if not any(t in k for t in TIMING)}


def _check_run(client: httpx.Client, run_id: str, data: RunData) -> None:
    assert client.post(f"/v1/runs/{run_id}/finish").status_code == 200
    want = expected_history(data.recs, data.tasks, INTERVALS, data.scalars, data.last_step)
    assert _history(client, run_id) == want, run_id
    summary = client.get(f"/v1/runs/{run_id}/summary").json()
    want_summary: dict[str, Any] = expected_summary(data.recs, data.tasks)
    want_summary["final_custom_map"] = max(v for _, v in want["custom/map"])
    assert summary["finished"] and summary["summary"] == want_summary, run_id


def test_twenty_runs_of_four_ranks_at_once_each_equal_their_reference(tmp_path: Path) -> None:
    started = time.monotonic()
    runs = {f"run{i:02d}": make_run(1000 + i, world_size=RANKS, steps_per_epoch=5, epochs=2) for i in range(RUNS)}
    settings = Settings(data_dir=tmp_path / "data", wandb_enabled=False, console_enabled=False)
    with live_service(settings, [MemorySink()]) as live, httpx.Client(base_url=live.url, timeout=BUDGET_S) as client:
        for run_id, data in runs.items():
            assert client.post("/v1/runs", json=data.spec(run_id, METRICS)).status_code == 201
        start = threading.Barrier(RUNS * RANKS)
        with ThreadPoolExecutor(max_workers=RUNS * RANKS) as pool:
            futures = [pool.submit(_stream_rank, live.url, run_id, data, rank, start)
                       for run_id, data in runs.items() for rank in range(RANKS)]
            delivered = sum(f.result(timeout=BUDGET_S) for f in futures)
        for run_id, data in runs.items():
            _check_run(client, run_id, data)
    elapsed = time.monotonic() - started
    print(f"many runs: {RUNS} runs x {RANKS} ranks, {delivered} events in {elapsed:.1f} s")
    assert elapsed < BUDGET_S
