"""A multi-rank run with wandb enabled: the offline run's rows and summary equal the reference."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import wandb

from service.runtime.host import RunHost
from service.sinks.wandb import WandbSink
from tests.conftest import make_run, stream_events
from tests.reference import expected_history, expected_summary
from tests.sinks.wandb_reader import find_run_file, read_run

METRICS = {"STEP_INTERVAL": 2, "WANDB_INTERVAL": 4, "LR_INTERVAL": 3, "PIPELINE_INTERVAL": 4}
INTERVALS = {"step": 2, "wandb": 4, "lr": 3, "pipeline": 4}
SKIP = ("samples_per_sec", "eta_sec", "epoch_duration_sec", "core/", "_step", "_timestamp", "_runtime")


def _expected_rows(want: dict[str, list[tuple[int, float]]], last: int) -> dict[int, dict[str, float]]:
    """Rows as DESIGN §4 says wandb gets them, built from the reference series."""
    rows: dict[int, dict[str, Any]] = {}
    windows: dict[int, dict[str, float]] = {}
    for key, series in want.items():
        last_part = key.rsplit("/", 1)[-1]
        is_window = key.startswith("train/") and not key.startswith("train/lr/") and not last_part.startswith(
            ("step_avg_", "epoch_"))
        for step, value in series:
            (windows.setdefault(step, {}) if is_window else rows.setdefault(step, {}))[key] = value
    wandb_steps = [*range(INTERVALS["wandb"], last + 1, INTERVALS["wandb"])]
    if last not in wandb_steps:
        wandb_steps.append(last)
    for step in wandb_steps:
        latest = max(s for s in windows if s <= step)
        rows.setdefault(step, {}).update(windows[latest])
    return rows


def test_offline_run_equals_reference(wandb_env: Path, tmp_path: Path) -> None:
    data = make_run(12, world_size=3, steps_per_epoch=7, epochs=2)
    sink = WandbSink(tmp_path / "data", mode="offline", retry_initial_s=0.01)
    host = RunHost([sink])
    spec = data.spec("wb-run", METRICS)
    spec["config"]["EXPERIMENT"] = {"PROJECT": "linnaeus-test", "WANDB": {"RUN_ID": "wbrun1"}}
    host.create_run(spec)
    streams = {r: stream_events(data, r) for r in range(3)}
    sessions = {r: host.open_session("wb-run", r)["session"] for r in range(3)}
    sent = dict.fromkeys(range(3), 0)
    rng = random.Random(12)
    while any(sent[r] < len(streams[r]) for r in range(3)):
        r = rng.choice([r for r in range(3) if sent[r] < len(streams[r])])
        chunk = streams[r][sent[r]:sent[r] + rng.randint(1, 5)]
        host.ingest("wb-run", sessions[r], sent[r], chunk)
        sent[r] += len(chunk)
    summary = host.finish("wb-run")
    assert host.finish_sinks("wb-run", summary, 60.0) == {"wandb": "finished"}
    sink.close(30.0)
    wandb.teardown()  # wandb-core writes the file's last block when its stream closes
    found = read_run(find_run_file(wandb_env, "wbrun1"))
    want = expected_history(data.recs, data.tasks, INTERVALS, data.scalars, data.last_step)
    rows = {int(row["_step"]): {k: v for k, v in row.items() if not any(s in k for s in SKIP)} for row in found.rows}
    assert found.steps() == sorted(found.steps()) and len(set(found.steps())) == len(found.steps())
    expected = _expected_rows(want, data.last_step)
    assert rows == expected
    final = expected_summary(data.recs, data.tasks)
    assert {k: found.summary[k] for k in final} == final
