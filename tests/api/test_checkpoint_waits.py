"""A request waiting for a checkpoint is woken when the last marker makes the cut, not by polling;
a deleted run wakes its waiters too; the registry forgets every finished request."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager

from client._wire import CheckpointEvent, Event, encode_event, pack_body
from service.api import checkpoint_waits, create_app
from service.settings import Settings
from tests.conftest import make_run

pytestmark = pytest.mark.anyio
RANKS = 3


@pytest.fixture
async def served(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    # re-checks a minute apart: a request answered at once was woken, it did not poll
    monkeypatch.setattr(checkpoint_waits, "FIRST_RECHECK_S", 60.0)
    monkeypatch.setattr(checkpoint_waits, "MAX_RECHECK_S", 60.0)
    app = create_app(settings, sinks=[])
    async with LifespanManager(app) as manager, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as api:
        data = make_run(2, world_size=RANKS, steps_per_epoch=3, epochs=1)
        assert (await api.post("/v1/runs", json=data.spec("r", {"STEP_INTERVAL": 2}))).status_code == 201
        yield app, api


async def _sessions(api: httpx.AsyncClient) -> list[str]:
    return [(await api.post("/v1/runs/r/sessions", json={"rank": r})).json()["session"] for r in range(RANKS)]


async def _send(api: httpx.AsyncClient, session: str, events: list[Event]) -> None:
    body = {"session": session, "seq": 0, "events": [encode_event(e, False) for e in events]}
    reply = await api.post("/v1/runs/r/events", content=pack_body(body, False),
                           headers={"content-type": "application/json"})
    assert reply.status_code == 200, reply.text


async def _until(condition: Callable[[], bool]) -> None:
    """Until ``condition`` holds (bounded: no fixed sleep)."""
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0)
    await asyncio.wait_for(poll(), 10)


async def test_the_last_marker_wakes_every_waiting_rank(served: tuple[Any, httpx.AsyncClient]) -> None:
    app, api = served
    checks: list[str] = []  # every look at the checkpoint, from memory or through the run's lock
    host = app.state.host
    from_memory = host.cut_checkpoint

    def counting(run_id: str, checkpoint_id: str) -> dict[str, Any] | None:
        checks.append(checkpoint_id)
        return from_memory(run_id, checkpoint_id)

    host.cut_checkpoint = counting
    sessions = await _sessions(api)
    for session in sessions[:-1]:
        await _send(api, session, [CheckpointEvent("c1")])
    waiting = [asyncio.create_task(api.get("/v1/runs/r/checkpoints/c1", params={"wait_s": 30}))
               for _ in range(RANKS)]
    # each registered, checked once and found the cut missing
    await _until(lambda: app.state.checkpoint_waits.waiting == RANKS and len(checks) == RANKS)
    await _send(api, sessions[-1], [CheckpointEvent("c1")])
    replies = await asyncio.wait_for(asyncio.gather(*waiting), 10)  # polling a minute apart would time out here
    assert [r.status_code for r in replies] == [200] * RANKS
    assert all(r.json() == replies[0].json() for r in replies) and replies[0].json()["cut"]["ranks"]
    # woken once each: at most one more look (none if the cut came while its first look was under way)
    assert RANKS <= len(checks) <= 2 * RANKS
    assert app.state.checkpoint_waits.waiting == 0


async def test_a_deleted_run_wakes_its_waiters_with_404(served: tuple[Any, httpx.AsyncClient]) -> None:
    app, api = served
    sessions = await _sessions(api)
    await _send(api, sessions[0], [CheckpointEvent("c2")])
    waiting = asyncio.create_task(api.get("/v1/runs/r/checkpoints/c2", params={"wait_s": 30}))
    await _until(lambda: app.state.checkpoint_waits.waiting == 1)
    assert (await api.delete("/v1/runs/r")).status_code == 200
    reply = await asyncio.wait_for(waiting, 10)
    assert reply.status_code == 404 and reply.json()["type"] == "unknown_run"
    assert app.state.checkpoint_waits.waiting == 0


async def test_a_waiter_times_out_with_408_naming_the_missing_ranks(settings: Settings) -> None:
    app = create_app(settings, sinks=[])
    async with LifespanManager(app) as manager, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as api:
        data = make_run(3, world_size=2, steps_per_epoch=3, epochs=1)
        await api.post("/v1/runs", json=data.spec("r", {"STEP_INTERVAL": 2}))
        session = (await api.post("/v1/runs/r/sessions", json={"rank": 0})).json()["session"]
        await _send(api, session, [CheckpointEvent("c3")])
        reply = await api.get("/v1/runs/r/checkpoints/c3", params={"wait_s": 0.2})
        assert reply.status_code == 408 and reply.json()["missing_ranks"] == [1]
        assert app.state.checkpoint_waits.waiting == 0


def test_waking_a_waiter_whose_loop_is_closed_does_nothing() -> None:
    """Dispatch threads may notify while the service shuts down: a listener must not raise."""
    loop = asyncio.new_event_loop()
    waiter = checkpoint_waits.Waiter("r", "c", loop)
    loop.close()
    waiter.wake()  # no RuntimeError
