"""Alerts and the per-run Prometheus export over a real uvicorn on 127.0.0.1."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from client._wire import MSGPACK_TYPE, ScalarEvent, encode_event, pack_body
from service.settings import Settings
from tests.conftest import make_run, stream_events
from tests.e2e.conftest import live_service
from tests.e2e.sse import SseReader

METRICS = {"STEP_INTERVAL": 2, "WANDB_INTERVAL": 4, "LR_INTERVAL": 3}


def _settings(tmp_path: Path, **over: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", durable=False, wandb_enabled=False, console_enabled=False, **over)


def _feed(http: httpx.Client, run_id: str, world_size: int, seed: int, upto: int | None = None,
          config: dict[str, Any] | None = None) -> None:
    data = make_run(seed, world_size=world_size, steps_per_epoch=6, epochs=1)
    spec = {**data.spec(run_id, METRICS), **({"config": config} if config else {})}
    assert http.post("/v1/runs", json=spec).status_code == 201
    for rank in range(world_size):
        session = http.post(f"/v1/runs/{run_id}/sessions", json={"rank": rank}).json()["session"]
        events = stream_events(data, rank)
        if upto is not None and rank == world_size - 1:  # the last rank lags behind
            events = [e for e in events if (isinstance(e, ScalarEvent) and e.step <= upto)
                      or (getattr(e, "phase", None) == "train" and getattr(e, "step", 0) <= upto)]
        body = {"session": session, "seq": 0, "events": [encode_event(e, True) for e in events]}
        reply = http.post(f"/v1/runs/{run_id}/events", content=pack_body(body, True),
                          headers={"content-type": MSGPACK_TYPE})
        assert reply.status_code == 200, reply.text


def test_an_alert_reaches_the_run_info_the_stream_and_the_log(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="linnaeus_metrics.alerts")
    config = {"METRICS": {**METRICS, "ALERTS": [{"KEY": "train/loss", "BELOW": 1e9, "NAME": "loss seen",
                                                  "LEVEL": "ERROR"}]}}
    with live_service(_settings(tmp_path)) as (url, _), httpx.Client(base_url=url, timeout=20) as http:
        assert http.post("/v1/runs", json={"run_id": "a", "world_size": 1, "total_steps": 10,
                                           "tasks": [{"name": "t", "num_classes": 3}], "config": config}
                         ).status_code == 201
        with http.stream("GET", "/v1/runs/a/stream") as response:
            reader = SseReader(response)
            assert reader.comment() == "connected"
            session = http.post("/v1/runs/a/sessions", json={"rank": 0}).json()["session"]
            body = {"session": session, "seq": 0, "events": [
                {"kind": "custom", "step": 1, "time": 1.0, "values": {"nonfinite/loss": 1}},
                {"kind": "batch", "step": 2, "epoch": 0, "phase": "train", "time": 2.0, "loss": 0.5,
                 "targets": {"t": [1, 2]}, "topk": {"t": [[1, 0, 2], [0, 1, 2]]}},
                {"kind": "complete", "through_step": 2}]}
            assert http.post("/v1/runs/a/events", json=body).status_code == 200
            alerts = []
            while len(alerts) < 2:
                message = reader.next()
                if message.event == "alert":
                    alerts.append(message.data)
        info = http.get("/v1/runs/a").json()
        listed = http.get("/v1/runs").json()["runs"][0]
    assert [(a["name"], a["level"], a["step"]) for a in alerts] == [("nonfinite", "ERROR", 1),
                                                                    ("loss seen", "ERROR", 2)]
    assert alerts[1] == {"run_id": "a", "name": "loss seen", "level": "ERROR", "key": "train/loss", "step": 2,
                         "value": 0.5, "rule": "train/loss below 1000000000.0",
                         "message": "train/loss below 1000000000.0: 0.5 at step 2", "rank": None}
    assert info["alerts"] == [{k: v for k, v in a.items() if k != "run_id"} for a in alerts]
    assert listed["alerts"] == 2 and listed["step"] == 2 and listed["created_at"] <= listed["updated_at"]
    logged = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "linnaeus_metrics.alerts"]
    assert logged == [(logging.ERROR, "run a: alert nonfinite: rank 0 reported 1 non-finite loss at step 1"),
                      (logging.ERROR, "run a: alert loss seen: train/loss below 1000000000.0: 0.5 at step 2")]


def test_bad_alert_rules_are_refused_with_the_rule_named(tmp_path: Path) -> None:
    with live_service(_settings(tmp_path)) as (url, _):
        spec = {"run_id": "b", "world_size": 1, "total_steps": 10, "tasks": [{"name": "t", "num_classes": 3}],
                "config": {"METRICS": {"ALERTS": [{"KEY": "val/loss", "NO_IMPROVEMENT_EPOCHS": 3, "LEVL": "INFO"}]}}}
        reply = httpx.post(f"{url}/v1/runs", json=spec, timeout=10)
        assert reply.status_code == 422 and "METRICS.ALERTS[0]: unknown key(s) ['LEVL']" in reply.json()["detail"]
        assert httpx.get(f"{url}/v1/runs", timeout=10).json()["runs"] == []


def _scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {s.name: {tuple(sorted(x.labels.items())): x.value for x in [*s.samples]}
            for s in text_string_to_metric_families(text) if s.name.startswith("linnaeus_run_")}


def test_run_gauges_are_off_by_default(tmp_path: Path) -> None:
    with live_service(_settings(tmp_path)) as (url, _), httpx.Client(base_url=url, timeout=20) as http:
        _feed(http, "r1", 2, seed=31)
        assert _scrape(url) == {}


def test_run_gauges_equal_the_api_and_are_bounded_to_the_latest_runs(tmp_path: Path) -> None:
    with live_service(_settings(tmp_path, export_run_metrics=True, export_max_runs=2)) as (url, _), \
            httpx.Client(base_url=url, timeout=20) as http:
        for index, run_id in enumerate(("old", "mid", "new", "done")):
            _feed(http, run_id, 2, seed=40 + index, upto=5 if run_id == "new" else None)
        http.post("/v1/runs/done/finish")  # finished runs are not exported; of the others, the 2 latest
        scraped = _scrape(url)
        api = {run_id: http.get(f"/v1/runs/{run_id}/metrics").json() for run_id in ("mid", "new")}
        ranks = http.get("/v1/runs/new").json()["ranks"]
    core = scraped["linnaeus_run_core"]
    for run_id in ("mid", "new"):
        want = {k: v["value"] for k, v in api[run_id]["metrics"].items() if k.startswith("core/")}
        assert want and {dict(k)["key"]: v for k, v in core.items() if dict(k)["run_id"] == run_id} == want
    assert {dict(k)["run_id"] for k in core} == {"mid", "new"}
    lags = {dict(k)["rank"]: v for k, v in scraped["linnaeus_run_rank_lag_steps"].items() if dict(k)["run_id"] == "new"}
    assert lags == {str(r["rank"]): r["lag"] for r in ranks} and lags["1"] > 0
    assert {dict(k)["run_id"]: v for k, v in scraped["linnaeus_run_step"].items()} == {
        "mid": api["mid"]["step"], "new": api["new"]["step"]}
