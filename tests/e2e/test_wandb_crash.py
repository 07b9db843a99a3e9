"""Issue 13, item 12: after a kill -9 of the service (and of wandb-core with it), the wandb run
gets every row it missed, each step once: the offline run files, read back, hold exactly the
rows of the same run served without a crash."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from client._wire import encode_event
from service.core.experiment import derive_wandb_run_id
from service.sinks.wandb_log import logged_through
from tests.conftest import make_run, stream_events
from tests.e2e.conftest import ServiceProcess, free_port
from tests.sinks.wandb_reader import read_run

pytestmark = pytest.mark.e2e
METRICS = {"STEP_INTERVAL": 1, "WANDB_INTERVAL": 1, "LR_INTERVAL": 2}
DATA = make_run(23, world_size=1, steps_per_epoch=12, epochs=2)
RUN = "wbcrash"


def _env(root: Path) -> dict[str, str]:
    dirs = {"WANDB_DIR": "dir", "WANDB_CACHE_DIR": "cache", "WANDB_CONFIG_DIR": "config", "WANDB_DATA_DIR": "data"}
    for sub in dirs.values():
        (root / sub).mkdir(parents=True, exist_ok=True)
    return {**{k: str(root / v) for k, v in dirs.items()}, "WANDB_MODE": "offline", "WANDB_ERROR_REPORTING": "false",
            "WANDB_SILENT": "true", "LINNAEUS_METRICS_WANDB_ENABLED": "true",
            "LINNAEUS_METRICS_SNAPSHOT_EVERY_EVENTS": "7"}  # recovery images (and their sink backlogs) mid-run


def _deliver(url: str, session: str, events: list[Any], seq: int) -> int:
    for start in range(0, len(events), 5):
        chunk = events[start:start + 5]
        body = {"session": session, "seq": seq, "events": [encode_event(e, False) for e in chunk]}
        reply = httpx.post(f"{url}/v1/runs/{RUN}/events", json=body, timeout=30)
        assert reply.status_code == 200, reply.text
        seq += len(chunk)
    return seq


def _rows(root: Path) -> dict[int, list[dict[str, Any]]]:
    """Every history row of the run in every local file (one per service life), by step."""
    by_step: dict[int, list[dict[str, Any]]] = {}
    for path in sorted(root.rglob(f"run-{derive_wandb_run_id(RUN)}.wandb")):
        for step, row in read_run(path).user_rows().items():
            by_step.setdefault(step, []).append(row)
    return by_step


def _serve(root: Path, crash_at: int | None) -> dict[int, list[dict[str, Any]]]:
    spec = DATA.spec(RUN, METRICS)
    service = ServiceProcess(root / "data", free_port(), env=_env(root)).start()
    assert httpx.post(f"{service.url}/v1/runs", json=spec, timeout=30).status_code == 201
    session = httpx.post(f"{service.url}/v1/runs/{RUN}/sessions", json={"rank": 0}, timeout=30).json()["session"]
    events = stream_events(DATA, 0)
    seq = 0
    if crash_at is not None:
        seq = _deliver(service.url, session, events[:crash_at // 2], seq)
        _wait(lambda: (logged_through(root / "dir", derive_wandb_run_id(RUN)) or -1) > 0, "rows in the wandb file")
        seq = _deliver(service.url, session, events[seq:crash_at], seq)  # acked; most rows still queued
        service.kill9()
        service.start()
    _deliver(service.url, session, events[seq:], seq)
    finished = httpx.post(f"{service.url}/v1/runs/{RUN}/finish", timeout=120).json()
    assert finished["sinks"]["wandb"] == "finished", finished
    assert service.terminate() in (0, -15)
    return _rows(root / "dir")


def _wait(condition: Any, what: str, timeout_s: float = 60) -> None:
    deadline, pause = time.monotonic() + timeout_s, threading.Event()
    while not condition():
        assert time.monotonic() < deadline, f"not within {timeout_s} s: {what}"
        pause.wait(0.1)


def test_after_a_crash_wandb_gets_every_missed_row_once(tmp_path: Path) -> None:
    crashed = _serve(tmp_path / "crashed", crash_at=len(stream_events(DATA, 0)) * 2 // 3)
    calm = _serve(tmp_path / "calm", crash_at=None)
    doubled = {step: rows for step, rows in crashed.items() if len(rows) > 1}
    assert not doubled, f"steps written twice: {sorted(doubled)}"
    assert sorted(crashed) == sorted(calm), f"missing {sorted(set(calm) - set(crashed))}"
    for step, (row,) in calm.items():
        assert crashed[step][0].keys() == row.keys(), step
        for key, value in row.items():
            if not key.endswith(("samples_per_sec", "eta_sec", "epoch_duration_sec")):  # wall-clock based
                assert crashed[step][0][key] == pytest.approx(value, rel=1e-12, abs=1e-12), (step, key)
