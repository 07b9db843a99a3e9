"""The ingest fast path (service.api.fast_ingest) answers every delivery exactly as the documented
route does, the route's own handler no longer runs for them, and request metrics keep the template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from client._wire import JSON_TYPE, MSGPACK_TYPE, pack_body
from service.api import create_app, fast_ingest
from service.settings import Settings
from tests.api.fuzz._seed import DATA, METRICS, STREAMS, delivery

pytestmark = pytest.mark.anyio


async def _replies(tmp_path: Path, fast: bool) -> list[tuple[int, Any]]:
    """One scripted conversation: good, duplicate, gap, malformed, bad content type, unknown run, too large."""
    settings = Settings(data_dir=tmp_path / ("fast" if fast else "route"), durable=True, wandb_enabled=False,
                        console_enabled=False, max_body_bytes=256 * 1024)
    app = create_app(settings, sinks=[])
    if not fast:  # the reference: the framework's route alone
        app.user_middleware = [m for m in app.user_middleware if m.cls is not fast_ingest.EventsFastPath]
    out: list[tuple[int, Any]] = []
    async with LifespanManager(app) as manager, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as api:
        assert (await api.post("/v1/runs", json=DATA.spec("r", METRICS))).status_code == 201
        session = (await api.post("/v1/runs/r/sessions", json={"rank": 0})).json()["session"]
        stream = STREAMS[0]

        async def post(body: bytes, ctype: str, run: str = "r") -> None:
            reply = await api.post(f"/v1/runs/{run}/events", content=body, headers={"content-type": ctype})
            payload = reply.json()
            if isinstance(payload, dict) and "detail" in payload:
                payload["detail"] = payload["detail"].replace(session, "<session>")
            out.append((reply.status_code, payload))

        for binary in (True, False):
            first = delivery(session, 0 if binary else 6, stream[:6] if binary else stream[6:12], binary)
            ctype = MSGPACK_TYPE if binary else JSON_TYPE
            await post(pack_body(first, binary), ctype)
            await post(pack_body(first, binary), ctype)  # a resend: acknowledged, ignored
        await post(pack_body(delivery(session, 40, stream[12:14], False), False), JSON_TYPE)  # a gap
        await post(b'{"session": "x", "seq": 0, "events": [{"kind": "batch"}]}', JSON_TYPE)
        await post(b"{}", "text/plain")
        await post(pack_body(delivery(session, 12, stream[12:14], False), False), JSON_TYPE, run="nope")
        await post(b"[" + b"1," * 200_000 + b"1]", JSON_TYPE)  # over max_body_bytes
        await post(pack_body(delivery(session, 12, stream[12:14], True), True), MSGPACK_TYPE)
        out.append((0, (await api.get("/v1/runs/r/metrics")).json()))
        metrics = (await api.get("/metrics")).text
        out.append((0, [line for line in metrics.splitlines()
                        if line.startswith("linnaeus_http_requests_total") and "events" in line]))
    return out


async def test_the_fast_path_answers_as_the_route_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    served: list[str] = []
    original = fast_ingest.ingest_delivery

    def counting(*args: Any) -> Any:
        served.append(args[2])
        return original(*args)

    monkeypatch.setattr(fast_ingest, "ingest_delivery", counting)
    fast = await _replies(tmp_path, fast=True)
    assert len(served) == 8  # every delivery that reached decoding went through the fast path
    served.clear()
    route = await _replies(tmp_path, fast=False)
    assert served == []  # the reference really is the route
    assert fast == route
    statuses = [status for status, _ in fast[:-2]]
    assert statuses == [200, 200, 200, 200, 409, 422, 422, 404, 413, 200]
    assert any('route="/v1/runs/{run_id}/events"' in line and 'status="200"' in line for line in fast[-1][1])


async def test_a_runs_deliveries_take_turns_and_other_runs_go_beside_them() -> None:
    """RunTurns: while one delivery of run "a" holds its turn, a second one of "a" waits and one of
    "b" goes ahead; turns come in arrival order and the bookkeeping is gone afterwards."""
    import asyncio

    turns = fast_ingest.RunTurns()
    inside: dict[str, int] = {"a": 0, "b": 0}
    most: dict[str, int] = {"a": 0, "b": 0}
    order: list[str] = []
    release = {name: asyncio.Event() for name in ("a1", "a2", "a3", "b1")}
    entered = {name: asyncio.Event() for name in release}

    async def deliver(name: str) -> None:
        run = name[0]
        async with turns.turn(run):
            inside[run] += 1
            most[run] = max(most[run], inside[run])
            order.append(name)
            entered[name].set()
            await release[name].wait()
            inside[run] -= 1

    tasks = [asyncio.create_task(deliver(n)) for n in ("a1", "a2", "a3")]
    await asyncio.wait_for(entered["a1"].wait(), 10)
    b = asyncio.create_task(deliver("b1"))
    await asyncio.wait_for(entered["b1"].wait(), 10)  # another run is not held up by "a"
    assert not entered["a2"].is_set() and not entered["a3"].is_set() and len(turns) == 2
    release["b1"].set()
    await asyncio.wait_for(b, 10)
    for name in ("a1", "a2", "a3"):
        release[name].set()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert order == ["a1", "b1", "a2", "a3"] and most == {"a": 1, "b": 1}
    assert len(turns) == 0


async def test_a_delivery_cancelled_while_it_waits_gives_up_its_place() -> None:
    import asyncio

    turns = fast_ingest.RunTurns()
    held, go, started = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with turns.turn("a"):
            held.set()
            await go.wait()

    async def waiter() -> None:
        started.set()  # the test resumes only once this task is suspended in the turn's queue
        async with turns.turn("a"):
            raise AssertionError("a cancelled waiter must not get the turn")

    first = asyncio.create_task(holder())
    await asyncio.wait_for(held.wait(), 10)
    second = asyncio.create_task(waiter())
    await asyncio.wait_for(started.wait(), 10)
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    go.set()
    await asyncio.wait_for(first, 10)
    assert len(turns) == 0
