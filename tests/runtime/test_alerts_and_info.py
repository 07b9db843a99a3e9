"""Alerts, markers and the run-info fields through the host, live and after a restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from client._wire import BatchEvent, CheckpointEvent, CompleteEvent, Event, ScalarEvent
from service.core.emission import Notice
from service.runtime.host import RunHost
from service.sinks.memory import MemorySink
from service.storage.sqlite import SqliteStore
from tests.conftest import ManualClock, RunData, make_run, stream_events
from tests.core.test_alerts import _expected_stagnation
from tests.reference import expected_history

METRICS = {"STEP_INTERVAL": 2, "WANDB_INTERVAL": 4, "LR_INTERVAL": 3}
INTERVALS = {"step": 2, "wandb": 4, "lr": 3, "pipeline": 0}


class Recorder:
    """A listener that keeps the alert notices it gets."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []

    def open_run(self, run_id: str, spec: Any) -> None:
        pass

    def emit(self, emissions: Any) -> None:
        pass

    def notice(self, notice: Notice) -> None:
        if notice.kind == "alert":
            self.alerts.append(dict(notice.detail))

    def delete_run(self, run_id: str) -> None:
        pass


def _crossings(series: list[tuple[int, float]], threshold: float) -> list[int]:
    """Reference: steps where the value goes above ``threshold`` from not above (or starts above)."""
    return [s for i, (s, v) in enumerate(series) if v > threshold and (i == 0 or series[i - 1][1] <= threshold)]


def _train(data: RunData, rank: int, upto: int) -> list[Event]:
    """The rank's train batches and scalars through step ``upto``."""
    return [e for e in stream_events(data, rank) if isinstance(e, BatchEvent | ScalarEvent)
            and (isinstance(e, ScalarEvent) or e.phase == "train") and e.step <= upto]


def _send_all(host: RunHost, data: RunData, extra: dict[int, ScalarEvent] | None = None) -> dict[int, str]:
    """Every rank's whole stream; ``extra`` scalars go in right after the rank's first record of their step."""
    sessions = {r: host.open_session("r", r)["session"] for r in range(data.world_size)}
    for r in range(data.world_size):
        events = stream_events(data, r)
        if extra and r in extra:
            at = next(i for i, e in enumerate(events) if getattr(e, "step", -1) == extra[r].step)
            events.insert(at + 1, extra[r])
        host.ingest("r", sessions[r], 0, events)
    return sessions


def test_user_rules_fire_at_the_reference_steps_and_reach_listeners() -> None:
    data = make_run(21, world_size=2, steps_per_epoch=12, epochs=2)
    want = expected_history(data.recs, data.tasks, INTERVALS, data.scalars, data.last_step)["train/loss"]
    threshold = sorted(v for _, v in want)[len(want) // 2]  # the median: some windows above, some not
    # the console repeats train/loss at the same steps: it must not count twice
    metrics = {**METRICS, "CONSOLE_INTERVAL": 2}
    config = {"METRICS": {**metrics, "ALERTS": [{"KEY": "train/loss", "ABOVE": threshold, "LEVEL": "ERROR"},
                                                {"KEY": "train/loss", "NO_IMPROVEMENT_EPOCHS": 2, "NAME": "flat"}]}}
    recorder = Recorder()
    host = RunHost([MemorySink()], listeners=[recorder])
    host.create_run({**data.spec("r", metrics), "config": config})
    _send_all(host, data)
    host.finish("r")
    alerts = host.info("r")["alerts"]
    above = [a for a in alerts if a["name"] != "flat"]
    assert [a["step"] for a in above] == _crossings(want, threshold) != []
    rule = f"train/loss above {threshold}"
    assert {(a["key"], a["level"], a["rule"]) for a in above} == {("train/loss", "ERROR", rule)}
    assert [a["value"] for a in above] == [dict(want)[a["step"]] for a in above]
    flat = [a["step"] for a in alerts if a["name"] == "flat"]
    assert flat == [want[i][0] for i in _expected_stagnation([v for _, v in want], 2, higher_is_better=False)] != []
    assert recorder.alerts == alerts
    assert host.list_runs()[0]["alerts"] == len(alerts)


def test_nonfinite_reports_restores_and_markers() -> None:
    data = make_run(22, world_size=2, steps_per_epoch=5, epochs=1)
    host = RunHost()
    host.create_run(data.spec("r", METRICS))
    sessions = {r: host.open_session("r", r)["session"] for r in range(2)}
    early = {r: _train(data, r, 3) for r in range(2)}
    marker = [CompleteEvent(3), CheckpointEvent("c3")]
    host.ingest("r", sessions[0], 0, [*early[0], *marker])
    host.ingest("r", sessions[1], 0, [*early[1], ScalarEvent("custom", 3, 0.0, {"nonfinite/loss": 2.0}), *marker])
    snapshot = host.checkpoint("r", "c3")
    resumed = host.open_session("r", 0)["session"]
    host.restore("r", resumed, snapshot)
    info = host.info("r")
    assert [(a["name"], a["level"], a["rank"], a["step"]) for a in info["alerts"]] == [
        ("nonfinite", "ERROR", 1, 3), ("restore", "WARN", None, 3)]
    assert info["alerts"][0]["key"] == "custom/nonfinite/loss" and info["alerts"][0]["value"] == 2.0
    assert info["markers"] == [{"kind": "checkpoint", "step": 3, "id": "c3"},
                               {"kind": "restore", "step": 3, "id": snapshot["snapshot_id"]}]
    assert [r["fenced_sessions"] for r in info["ranks"]] == [1, 0]


def test_times_lags_and_stalls_with_an_injected_clock(tmp_path: Path) -> None:
    clock = ManualClock()
    host = RunHost([MemorySink()], clock=clock)
    data = make_run(23, world_size=3, steps_per_epoch=6, epochs=1)
    host.create_run(data.spec("r", METRICS))
    train = {r: _train(data, r, 6) for r in range(3)}
    sessions = {}
    for rank, upto in ((0, 6), (1, 4), (2, 1)):
        clock.now += 10
        sessions[rank] = host.open_session("r", rank)["session"]
        host.ingest("r", sessions[rank], 0, [e for e in train[rank] if e.step <= upto])
    info = host.info("r")
    assert [r["last_seen"] for r in info["ranks"]] == [1010.0, 1020.0, 1030.0]
    completed = [r["completed"] for r in info["ranks"]]
    assert [r["lag"] for r in info["ranks"]] == [max(completed) - c for c in completed] and completed[2] < completed[0]
    listed = host.list_runs()[0]
    assert (listed["created_at"], listed["updated_at"], listed["sinks"]) == (1000.0, 1030.0, ["memory"])
    assert host.check_stalls(60, now=1075.0) == 1  # rank 0: 65 s of silence
    assert host.check_stalls(60, now=1079.0) == 0  # still the same silence
    assert host.check_stalls(60, now=1200.0) == 2  # ranks 1 and 2 now too
    clock.now = 1300.0
    host.ingest("r", sessions[0], len([e for e in train[0] if e.step <= 6]), [CompleteEvent(6)])
    assert host.check_stalls(60, now=1365.0) == 1  # rank 0 was back and is silent again
    stalls = [(a["rank"], a["step"]) for a in host.info("r")["alerts"] if a["name"] == "stall"]
    assert [r for r, _ in stalls] == [0, 1, 2, 0]


@pytest.mark.parametrize("with_image", [False, True])
def test_alerts_markers_and_times_survive_a_restart(tmp_path: Path, with_image: bool) -> None:
    data = make_run(24, world_size=2, steps_per_epoch=6, epochs=1)
    config = {"METRICS": {**METRICS, "ALERTS": [{"KEY": "train/loss", "BELOW": 100.0}]}}
    clock = ManualClock()
    store = SqliteStore(tmp_path / "m.sqlite3")
    host = RunHost(store=store, clock=clock)
    host.create_run({**data.spec("r", METRICS), "config": config})
    _send_all(host, data, extra={1: ScalarEvent("pipeline", 4, 0.0, {"nonfinite/grad": 1.0})})
    host.check_stalls(5, now=clock.now + 60)
    before = host.info("r")
    assert {a["name"] for a in before["alerts"]} == {"train/loss below 100.0", "nonfinite", "stall"}
    if with_image:
        host.write_images()
    store.close()
    store = SqliteStore(tmp_path / "m.sqlite3")
    again = RunHost(store=store, clock=clock)
    again.recover(store.load())
    after = again.info("r")
    assert (after["alerts"], after["markers"]) == (before["alerts"], before["markers"])
    assert again.list_runs()[0]["created_at"] == 1000.0
    assert again.check_stalls(5, now=clock.now + 120) == 0  # the stalls are known: not raised twice
    store.close()
