"""HTTP routes in-process: shapes, error mapping, exactly-once, JSON == msgpack."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from client._wire import MSGPACK_TYPE, encode_event, pack_body
from service.api import create_app
from service.settings import Settings
from tests.conftest import make_run, stream_events
from tests.reference import expected_history

pytestmark = pytest.mark.anyio
METRICS = {"STEP_INTERVAL": 2, "WANDB_INTERVAL": 4, "LR_INTERVAL": 3}


def _spec(run_id: str = "exp1") -> dict[str, Any]:
    return make_run(1, world_size=2, steps_per_epoch=4, epochs=1).spec(run_id, METRICS)


async def _post_events(api: httpx.AsyncClient, run: str, session: str, seq: int, events: list, binary: bool) -> httpx.Response:
    body = {"session": session, "seq": seq, "events": [encode_event(e, binary) for e in events]}
    ctype = MSGPACK_TYPE if binary else "application/json"
    return await api.post(f"/v1/runs/{run}/events", content=pack_body(body, binary), headers={"content-type": ctype})


async def test_create_is_idempotent_and_conflicts_on_other_spec(api: httpx.AsyncClient) -> None:
    spec = _spec()
    first = await api.post("/v1/runs", json=spec)
    assert first.status_code == 201 and first.json()["run_id"] == "exp1"
    again = await api.post("/v1/runs", json=spec)
    assert again.status_code == 200 and again.json()["world_size"] == 2
    other = await api.post("/v1/runs", json={**spec, "world_size": 3})
    assert other.status_code == 409 and other.json()["type"] == "run_conflict"
    listed = (await api.get("/v1/runs")).json()["runs"]
    assert [r["run_id"] for r in listed] == ["exp1"]


@pytest.mark.parametrize(("patch", "needle"), [
    ({"run_id": "../etc"}, "run_id"), ({"world_size": 0}, "world_size"), ({"tasks": []}, "tasks"),
    ({"config": {"METRICS": {"STEP_INTERVAL": 2, "STEP_FRACTION": 0.5}}}, "STEP_FRACTION"),
    ({"config": {"METRICS": {"STEPS_INTERVAL": 2}}}, "STEPS_INTERVAL"), ({"total_steps": "10"}, "total_steps"),
])
async def test_bad_specs_are_422_naming_the_field(api: httpx.AsyncClient, patch: dict, needle: str) -> None:
    reply = await api.post("/v1/runs", json={**_spec(), **patch})
    assert reply.status_code == 422, reply.text
    assert needle in reply.json()["detail"]
    assert (await api.get("/v1/runs")).json()["runs"] == []


async def test_unknown_run_and_session(api: httpx.AsyncClient) -> None:
    assert (await api.get("/v1/runs/nope")).json()["type"] == "unknown_run"
    assert (await api.get("/v1/runs/nope/metrics")).status_code == 404
    await api.post("/v1/runs", json=_spec())
    reply = await _post_events(api, "exp1", "ghost", 0, [], False)
    assert reply.status_code == 404 and reply.json()["type"] == "unknown_session"


@pytest.mark.parametrize("binary", [False, True])
async def test_full_run_over_http_equals_reference(api: httpx.AsyncClient, binary: bool) -> None:
    data = make_run(3, world_size=2, steps_per_epoch=4, epochs=2)
    await api.post("/v1/runs", json=data.spec("exp1", METRICS))
    for rank in range(2):
        session = (await api.post("/v1/runs/exp1/sessions", json={"rank": rank})).json()
        assert session["next_seq"] == 0
        events = stream_events(data, rank)
        reply = await _post_events(api, "exp1", session["session"], 0, events, binary)
        assert reply.json() == {"acked_seq": len(events), "applied": len(events), "ignored": 0}
        dup = await _post_events(api, "exp1", session["session"], 0, events, binary)  # lost ack, resent
        assert dup.json() == {"acked_seq": len(events), "applied": 0, "ignored": 0}
    finish = (await api.post("/v1/runs/exp1/finish")).json()
    assert finish["sinks"] == {"memory": "finished"}
    want = expected_history(data.recs, data.tasks, {"step": 2, "wandb": 4, "lr": 3, "pipeline": 0},
                            data.scalars, data.last_step)
    series = (await api.get("/v1/runs/exp1/history", params={"keys": ",".join(want)})).json()["series"]
    assert {k: list(zip(v["steps"], v["values"], strict=True)) for k, v in series.items()} == want
    latest = (await api.get("/v1/runs/exp1/metrics")).json()
    loss = latest["metrics"]["train/loss"]
    assert (loss["value"], loss["step"]) == (want["train/loss"][-1][1], want["train/loss"][-1][0])
    assert loss["metric"] == {"kind": "window", "statistic": "loss", "phase": "train", "window": "step",
                              "task": None, "family": None, "label": None, "direction": "min"}
    acc = series[next(k for k in want if k.startswith("val/subset/rarity/") and "/acc3_" in k)]["metric"]
    assert (acc["phase"], acc["window"], acc["family"], acc["statistic"], acc["direction"]) == (
        "val", "epoch", "rarity", "acc3", "max")
    summary = (await api.get("/v1/runs/exp1/summary")).json()
    assert summary["finished"] and summary["summary"]["final_val_loss"] == min(v for _, v in want["val/loss"])


async def test_json_and_msgpack_give_identical_state(settings: Settings) -> None:
    from asgi_lifespan import LifespanManager

    data = make_run(5, world_size=2, steps_per_epoch=3, epochs=2)
    results = []
    for binary in (False, True):
        app = create_app(settings, sinks=[])
        async with LifespanManager(app) as manager, httpx.AsyncClient(
                transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as api:
            await api.post("/v1/runs", json=data.spec("r", METRICS))
            for rank in range(2):
                session = (await api.post("/v1/runs/r/sessions", json={"rank": rank})).json()["session"]
                await _post_events(api, "r", session, 0, stream_events(data, rank), binary)
            results.append((await api.get("/v1/runs/r/history")).json())
    assert results[0] == results[1] and results[0]["series"]


async def test_ingest_errors_are_4xx_and_change_nothing(api: httpx.AsyncClient) -> None:
    data = make_run(6, world_size=1, steps_per_epoch=4, epochs=1)
    await api.post("/v1/runs", json=data.spec("r", METRICS))
    session = (await api.post("/v1/runs/r/sessions", json={"rank": 0})).json()["session"]
    events = stream_events(data, 0)
    await _post_events(api, "r", session, 0, events[:3], False)
    before = (await api.get("/v1/runs/r")).json(), (await api.get("/v1/runs/r/history")).json()
    gap = await _post_events(api, "r", session, 7, events[7:8], False)
    assert gap.status_code == 409 and gap.json()["expected_seq"] == 3
    bad_json = await api.post("/v1/runs/r/events", content=b"{nope", headers={"content-type": "application/json"})
    assert bad_json.status_code == 422 and "malformed" in bad_json.json()["detail"]
    bad_pack = await api.post("/v1/runs/r/events", content=b"\xc1\xc1", headers={"content-type": MSGPACK_TYPE})
    assert bad_pack.status_code == 422
    nan = await api.post("/v1/runs/r/events", content=b'{"session":"%s","seq":3,"events":[{"kind":"lr","step":9,"time":1,"values":{"a":NaN}}]}' % session.encode(), headers={"content-type": "application/json"})
    assert nan.status_code == 422 and "NaN" in nan.json()["detail"]
    wrong = encode_event(events[3], False)
    wrong["topk"]["genus"] = [row[:2] for row in wrong["topk"]["genus"]]
    short = await api.post("/v1/runs/r/events", json={"session": session, "seq": 3, "events": [wrong]})
    assert short.status_code == 422 and "topk.genus" in short.json()["detail"]
    rank = await api.post("/v1/runs/r/sessions", json={"rank": 5})
    assert rank.status_code == 422 and "rank" in rank.json()["detail"]
    after = (await api.get("/v1/runs/r")).json(), (await api.get("/v1/runs/r/history")).json()
    assert after == before


async def test_body_limit_is_413(settings: Settings) -> None:
    from asgi_lifespan import LifespanManager

    small = settings.model_copy(update={"max_body_bytes": 2048})
    app = create_app(small, sinks=[])
    async with LifespanManager(app) as manager, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as api:
        await api.post("/v1/runs", json=_spec("r"))
        reply = await api.post("/v1/runs/r/events", content=b"x" * 5000, headers={"content-type": "application/json"})
        assert reply.status_code == 413 and reply.json()["type"] == "body_too_large"


async def test_fenced_session_is_409(api: httpx.AsyncClient) -> None:
    await api.post("/v1/runs", json=_spec("r"))
    old = (await api.post("/v1/runs/r/sessions", json={"rank": 1})).json()["session"]
    await api.post("/v1/runs/r/sessions", json={"rank": 1})
    reply = await _post_events(api, "r", old, 0, [], False)
    assert reply.status_code == 409 and reply.json()["type"] == "session_fenced"


async def test_delete_and_health(api: httpx.AsyncClient) -> None:
    assert (await api.get("/healthz")).json() == {"status": "ok"}
    assert (await api.get("/readyz")).json() == {"status": "ready"}
    await api.post("/v1/runs", json=_spec("r"))
    assert (await api.delete("/v1/runs/r")).json() == {"deleted": "r"}
    assert (await api.get("/v1/runs/r")).status_code == 404
    assert (await api.get("/docs")).status_code == 200
    assert "/v1/runs/{run_id}/events" in (await api.get("/openapi.json")).json()["paths"]


async def test_prometheus_metrics_are_scrapeable(api: httpx.AsyncClient) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    data = make_run(7, world_size=1, steps_per_epoch=3, epochs=1)
    await api.post("/v1/runs", json=data.spec("r", METRICS))
    session = (await api.post("/v1/runs/r/sessions", json={"rank": 0})).json()["session"]
    events = stream_events(data, 0)
    await _post_events(api, "r", session, 0, events, True)
    await api.get("/v1/runs/nope")
    text = (await api.get("/metrics")).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    route = "/v1/runs/{run_id}/events"
    assert samples[("linnaeus_http_requests_total", (("method", "POST"), ("route", route), ("status", "200")))] == 1
    assert samples[("linnaeus_http_requests_total", (("method", "GET"), ("route", "/v1/runs/{run_id}"), ("status", "404")))] == 1
    assert samples[("linnaeus_ingest_total", (("kind", "events"),))] == len(events)
    assert samples[("linnaeus_ingest_total", (("kind", "samples"),))] == sum(r.size for r in data.recs)
    assert samples[("linnaeus_runs", (("status", "active"),))] == 1
    assert ("linnaeus_http_request_duration_seconds_count", (("method", "POST"), ("route", route))) in samples


async def test_experiment_section_is_checked_and_key_never_stored(api: httpx.AsyncClient) -> None:
    spec = _spec("r")
    bad = {**spec, "config": {"EXPERIMENT": {"WANDB": {"ENABLED": "maybe"}}}}
    reply = await api.post("/v1/runs", json=bad)
    assert reply.status_code == 422 and "ENABLED" in reply.json()["detail"]
    secret = {**spec, "config": {"EXPERIMENT": {"WANDB": {"KEY": "very-secret-key", "PROJECT": "p"}}}}
    created = await api.post("/v1/runs", json=secret)
    assert created.status_code == 201
    assert "very-secret-key" not in created.text
    assert "very-secret-key" not in (await api.get("/v1/runs/r")).text
    assert (await api.post("/v1/runs", json=secret)).status_code == 200  # still idempotent


async def test_disk_full_is_503_not_ready_then_ready_again(tmp_path: Any) -> None:
    from asgi_lifespan import LifespanManager

    settings = Settings(data_dir=tmp_path / "d", durable=True, wandb_enabled=False)
    app = create_app(settings, sinks=[])
    data = make_run(8, world_size=1, steps_per_epoch=4, epochs=1, batch=(2000, 2000))  # needs new pages
    async with LifespanManager(app) as manager, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as api:
        await api.post("/v1/runs", json=data.spec("r", METRICS))
        session = (await api.post("/v1/runs/r/sessions", json={"rank": 0})).json()["session"]
        events = stream_events(data, 0)
        db = app.state.store._db
        db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
        full = await _post_events(api, "r", session, 0, events, True)
        assert full.status_code == 503 and full.json()["type"] == "store_unavailable"
        assert "full" in full.json()["detail"]
        assert (await api.get("/readyz")).status_code == 503
        assert (await api.get("/v1/runs/r")).json()["ranks"][0]["next_seq"] == 0
        db.execute("PRAGMA max_page_count = 1073741823")
        assert (await api.get("/readyz")).status_code == 200
        assert (await _post_events(api, "r", session, 0, events, True)).json()["acked_seq"] == len(events)


async def test_snapshot_and_restore_over_http(api: httpx.AsyncClient) -> None:
    data = make_run(9, world_size=1, steps_per_epoch=4, epochs=1)
    await api.post("/v1/runs", json=data.spec("r", METRICS))
    session = (await api.post("/v1/runs/r/sessions", json={"rank": 0})).json()["session"]
    await _post_events(api, "r", session, 0, stream_events(data, 0)[:5], True)
    snapshot = (await api.get("/v1/runs/r/snapshot")).json()
    unknown = await api.post("/v1/runs/ghost/restore", json={"session": session, "snapshot": snapshot})
    assert unknown.status_code == 404 and unknown.json()["type"] == "unknown_run"
    wrong = await api.post("/v1/runs/r/restore", json={"session": session, "snapshot": {**snapshot, "version": 2}})
    assert wrong.status_code == 422 and wrong.json()["type"] == "snapshot_version_mismatch"
    restored = await api.post("/v1/runs/r/restore", json={"session": session, "snapshot": snapshot})
    assert restored.status_code == 200 and restored.json()["cut"] == snapshot["cut"]
    assert (await api.get("/v1/runs/r/snapshot")).json() == snapshot
    pending = await api.get("/v1/runs/r/checkpoints/never", params={"wait_s": 0})
    assert pending.status_code == 408 and pending.json()["missing_ranks"] == [0]
