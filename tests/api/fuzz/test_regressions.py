"""The requests that once made the service answer 5xx or hang, kept as regression tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgpack
import pytest
from asgi_lifespan import LifespanManager

from client._wire import MSGPACK_TYPE, encode_event
from service.api import create_app
from service.settings import Settings
from tests.conftest import make_run, stream_events

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(Settings(data_dir=tmp_path, durable=True, wandb_enabled=False), sinks=[])
    async with LifespanManager(app) as manager, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as client:
        data = make_run(1, world_size=1, steps_per_epoch=4, epochs=1)
        await client.post("/v1/runs", json=data.spec("r", {"STEP_INTERVAL": 1, "LR_INTERVAL": 1}))
        client.session = (await client.post("/v1/runs/r/sessions", json={"rank": 0})).json()["session"]  # type: ignore[attr-defined]
        client.events = stream_events(data, 0)  # type: ignore[attr-defined]
        yield client


async def _post(api: httpx.AsyncClient, events: list[Any], seq: int = 0) -> httpx.Response:
    body = {"session": api.session, "seq": seq, "events": events}  # type: ignore[attr-defined]
    return await api.post("/v1/runs/r/events", json=body)


@pytest.mark.timeout(20)
async def test_completing_a_huge_step_neither_hangs_nor_floods(api: httpx.AsyncClient) -> None:
    reply = await _post(api, [{"kind": "complete", "through_step": 2**53}])
    assert reply.status_code == 200
    assert (await api.post("/v1/runs/r/finish")).status_code == 200


async def test_near_zero_time_spans_give_no_infinite_rates(api: httpx.AsyncClient) -> None:
    batches = [encode_event(e, False) for e in api.events if getattr(e, "phase", "") == "train"][:3]  # type: ignore[attr-defined]
    for batch, time in zip(batches, (0.0, 5e-324, 1.0), strict=True):
        batch["time"] = time
    reply = await _post(api, [*batches, {"kind": "checkpoint", "id": "c1"}])
    assert reply.status_code == 200
    assert (await api.get("/v1/runs/r/snapshot")).status_code == 200
    assert (await api.get("/v1/runs/r/checkpoints/c1")).status_code == 200
    latest = (await api.get("/v1/runs/r/metrics")).json()["metrics"]
    assert all(entry["value"] is not None for entry in latest.values())


@pytest.mark.parametrize("body", [
    b'{"session":"s","seq":0,"events":' + b"[" * 5000 + b"]" * 5000 + b"}",
])
async def test_deep_json_is_422(api: httpx.AsyncClient, body: bytes) -> None:
    reply = await api.post("/v1/runs/r/events", content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 422


async def test_deep_arrays_and_bad_shapes_are_422(api: httpx.AsyncClient) -> None:
    batch = encode_event(next(e for e in api.events if hasattr(e, "targets")), False)  # type: ignore[attr-defined]
    nested: Any = [0]
    for _ in range(900):
        nested = [nested]
    deep = {**batch, "targets": {**batch["targets"], "genus": nested}}
    assert (await _post(api, [deep])).status_code == 422
    for shape in ([1] * 65, [float("inf")], [1.5]):
        raw = {**batch, "targets": {**batch["targets"], "genus": {"dtype": "<i8", "shape": shape, "data": b"\0" * 8}}}
        packed = msgpack.packb({"session": api.session, "seq": 0, "events": [raw]}, use_bin_type=True)  # type: ignore[attr-defined]
        reply = await api.post("/v1/runs/r/events", content=packed, headers={"content-type": MSGPACK_TYPE})
        assert reply.status_code == 422, shape


async def test_deep_config_is_422(api: httpx.AsyncClient) -> None:
    config: Any = {}
    for _ in range(900):
        config = {"a": config}
    spec = make_run(1, world_size=1, steps_per_epoch=4, epochs=1).spec("deep", {})
    reply = await api.post("/v1/runs", json={**spec, "config": config})
    assert reply.status_code == 422 and reply.json()["type"] in ("invalid_input", "invalid_body")
