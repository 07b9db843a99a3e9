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
    original = fast_ingest.ingest_group

    def counting(*args: Any) -> Any:
        served.extend(args[2] for _ in args[3])  # the run id, once per delivery of the group
        return original(*args)

    monkeypatch.setattr(fast_ingest, "ingest_group", counting)
    fast = await _replies(tmp_path, fast=True)
    assert len(served) == 8  # every delivery that reached decoding went through the fast path
    served.clear()
    route = await _replies(tmp_path, fast=False)
    assert served == []  # the reference really is the route
    assert fast == route
    statuses = [status for status, _ in fast[:-2]]
    assert statuses == [200, 200, 200, 200, 409, 422, 422, 404, 413, 200]
    assert any('route="/v1/runs/{run_id}/events"' in line and 'status="200"' in line for line in fast[-1][1])


class _Pool:
    """A stand-in for the ingest pool: each group waits until the test releases it."""

    def __init__(self) -> None:
        import asyncio

        self.groups: list[list[str]] = []
        self.entered: asyncio.Queue[list[str]] = asyncio.Queue()
        self.gates: dict[str, asyncio.Event] = {}
        self.fail: dict[str, BaseException] = {}  # a group led by this item fails as a whole

    def gate(self, name: str) -> Any:
        import asyncio

        return self.gates.setdefault(name, asyncio.Event())

    async def process(self, items: list[str]) -> list[Any]:
        self.groups.append(list(items))
        await self.entered.put(list(items))
        await self.gate(items[0]).wait()
        if items[0] in self.fail:
            raise self.fail[items[0]]
        return [ValueError(f"refused {i}") if i.startswith("bad") else f"ok {i}" for i in items]


async def _busy(turns: fast_ingest.RunTurns[str], pool: _Pool) -> Any:
    """Run "a" busy: its delivery "a1" submitted and in the pool (held there until the test releases it)."""
    import asyncio

    first = asyncio.create_task(turns.submit("a", "a1", pool.process))
    assert await asyncio.wait_for(pool.entered.get(), 10) == ["a1"]
    return first


async def test_a_runs_deliveries_wait_while_its_group_is_in_the_pool_then_go_as_one_group() -> None:
    """RunTurns: while a group of run "a" is in the pool, later deliveries of "a" wait and then go
    together, in arrival order; a delivery of "b" goes beside it; the bookkeeping is gone afterwards."""
    import asyncio

    turns: fast_ingest.RunTurns[str] = fast_ingest.RunTurns()
    pool = _Pool()

    def submit(name: str) -> asyncio.Task[Any]:
        return asyncio.create_task(turns.submit(name[0], name, pool.process))

    a1 = submit("a1")
    assert await asyncio.wait_for(pool.entered.get(), 10) == ["a1"]  # an idle run's delivery goes at once, alone
    a2, a3 = submit("a2"), submit("a3")
    b1 = submit("b1")
    assert await asyncio.wait_for(pool.entered.get(), 10) == ["b1"]  # another run is not held up by "a"
    assert len(turns) == 2 and not a2.done()
    pool.gate("b1").set()
    assert await asyncio.wait_for(b1, 10) == "ok b1"
    pool.gate("a1").set()
    assert await asyncio.wait_for(a1, 10) == "ok a1"
    assert await asyncio.wait_for(pool.entered.get(), 10) == ["a2", "a3"]  # those that waited: one group
    pool.gate("a2").set()
    assert await asyncio.wait_for(asyncio.gather(a2, a3), 10) == ["ok a2", "ok a3"]
    assert pool.groups == [["a1"], ["b1"], ["a2", "a3"]]
    await asyncio.sleep(0)  # the run's driver task ends after its last group
    assert len(turns) == 0


async def test_each_delivery_gets_its_own_answer_and_a_failed_group_fails_every_delivery_of_it() -> None:
    import asyncio

    turns: fast_ingest.RunTurns[str] = fast_ingest.RunTurns()
    pool = _Pool()
    first = await _busy(turns, pool)
    group = [asyncio.create_task(turns.submit("a", name, pool.process)) for name in ("bad2", "a3")]
    pool.gate("a1").set()
    assert await asyncio.wait_for(first, 10) == "ok a1"
    assert await asyncio.wait_for(pool.entered.get(), 10) == ["bad2", "a3"]
    pool.gate("bad2").set()
    with pytest.raises(ValueError, match="refused bad2"):
        await asyncio.wait_for(group[0], 10)
    assert await asyncio.wait_for(group[1], 10) == "ok a3"  # its neighbour's refusal is not its own

    pool.fail["a4"] = OSError("the store is gone")
    failing = [asyncio.create_task(turns.submit("a", name, pool.process)) for name in ("a4",)]
    await asyncio.wait_for(pool.entered.get(), 10)
    waiting = [asyncio.create_task(turns.submit("a", name, pool.process)) for name in ("a5", "a6")]
    await asyncio.sleep(0)
    pool.fail["a5"] = OSError("still gone")
    pool.gate("a4").set()
    with pytest.raises(OSError, match="the store is gone"):
        await asyncio.wait_for(failing[0], 10)
    assert await asyncio.wait_for(pool.entered.get(), 10) == ["a5", "a6"]
    pool.gate("a5").set()
    for task in waiting:  # the whole group's failure is every delivery's answer
        with pytest.raises(OSError, match="still gone"):
            await asyncio.wait_for(task, 10)
    await asyncio.sleep(0)
    assert len(turns) == 0


async def test_a_delivery_cancelled_while_it_waits_gives_up_its_place() -> None:
    import asyncio

    turns: fast_ingest.RunTurns[str] = fast_ingest.RunTurns()
    pool = _Pool()
    first = await _busy(turns, pool)
    waiter = asyncio.create_task(turns.submit("a", "a2", pool.process))
    await asyncio.sleep(0)  # it now waits for the next group
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    pool.gate("a1").set()
    assert await asyncio.wait_for(first, 10) == "ok a1"
    await asyncio.sleep(0)
    assert pool.groups == [["a1"]] and len(turns) == 0  # the cancelled delivery never reached the pool


async def test_groups_are_bounded_in_deliveries_and_bytes() -> None:
    import asyncio

    turns: fast_ingest.RunTurns[str] = fast_ingest.RunTurns(max_group=2, max_bytes=100)
    pool = _Pool()
    sizes = {"a1": 10, "a2": 10, "a3": 10, "a4": 10, "a5": 95, "a6": 200, "a7": 10}
    tasks = {"a1": asyncio.create_task(turns.submit("a", "a1", pool.process, sizes["a1"]))}
    await asyncio.wait_for(pool.entered.get(), 10)
    for name in ("a2", "a3", "a4", "a5", "a6", "a7"):
        tasks[name] = asyncio.create_task(turns.submit("a", name, pool.process, sizes[name]))
    await asyncio.sleep(0)
    for name in sizes:
        pool.gate(name).set()
    assert await asyncio.wait_for(asyncio.gather(*tasks.values()), 10) == [f"ok {n}" for n in tasks]
    # two at most; a group's bodies stay within max_bytes, except a single delivery larger than that
    assert pool.groups == [["a1"], ["a2", "a3"], ["a4"], ["a5"], ["a6"], ["a7"]]
