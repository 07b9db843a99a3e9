"""The stream hub in-process: ids, replay, resync, dropping slow readers, thread publishers."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from service.api.stream_hub import Message, StreamHub
from service.core.emission import Emission

pytestmark = pytest.mark.anyio
BASE = 1_000


def _hub(buffered: int = 64, queued: int = 64) -> StreamHub:
    return StreamHub(max_buffered=buffered, max_queued=queued, id_base=lambda: BASE)


async def _take_all(reader, count: int) -> list[Message]:
    got: list[Message] = []
    while len(got) < count:
        batch = await reader.take(5.0)
        assert batch, f"reader ended or timed out after {len(got)} of {count} messages"
        got.extend(batch)
    return got


def _parse(message: Message) -> tuple[int, str, dict]:
    lines = message.encode().decode().split("\n")
    assert lines[3:] == ["", ""], lines
    fields = dict(line.split(": ", 1) for line in lines[:3])
    return int(fields["id"]), fields["event"], json.loads(fields["data"])


async def test_ids_increase_by_one_per_message_of_any_type() -> None:
    hub = _hub()
    reader = hub.subscribe("r", None)
    hub.emit([Emission("r", 10, "step", {"train/loss": 1.5})])
    hub.publish("r", "status", {"run_id": "r", "kind": "session", "step": 0, "detail": {}})
    hub.publish("r", "alert", {"run_id": "r", "name": "x"})
    got = [_parse(m) for m in await _take_all(reader, 3)]
    assert [g[0] for g in got] == [BASE + 1, BASE + 2, BASE + 3]
    assert [g[1] for g in got] == ["emission", "status", "alert"]
    assert got[0][2] == {"run_id": "r", "step": 10, "group": "step", "values": {"train/loss": 1.5}, "metrics": {}}


async def test_last_id_replays_exactly_what_came_after_it_then_live() -> None:
    hub = _hub()
    ids = [hub.publish("r", "status", {"n": i}) for i in range(10)]
    reader = hub.subscribe("r", ids[3])
    hub.publish("r", "status", {"n": 10})
    got = [_parse(m) for m in await _take_all(reader, 7)]
    assert [g[2]["n"] for g in got] == list(range(4, 11))
    assert [g[0] for g in got] == list(range(ids[4], ids[4] + 7))


async def test_last_id_older_than_the_buffer_gets_resync_then_the_buffer() -> None:
    hub = _hub(buffered=16)
    ids = [hub.publish("r", "status", {"n": i}) for i in range(40)]
    reader = hub.subscribe("r", ids[2])
    got = [_parse(m) for m in await _take_all(reader, 17)]
    assert got[0] == (ids[23], "resync", {"run_id": "r", "reason": "buffer_exceeded"})
    assert [g[0] for g in got[1:]] == ids[24:]
    # the resync id is a position: presenting it again replays without another resync
    again = hub.subscribe("r", got[0][0])
    assert [_parse(m)[0] for m in await _take_all(again, 16)] == ids[24:]


async def test_an_id_never_issued_gets_resync() -> None:
    hub = _hub()
    hub.publish("r", "status", {"n": 0})
    reader = hub.subscribe("r", BASE + 99)
    first = _parse((await _take_all(reader, 2))[0])
    assert first[1:] == ("resync", {"run_id": "r", "reason": "unknown_id"})


async def test_the_last_id_itself_replays_nothing_and_no_resync() -> None:
    hub = _hub()
    last = [hub.publish("r", "status", {"n": i}) for i in range(3)][-1]
    reader = hub.subscribe("r", last)
    assert await reader.take(0.01) is None  # nothing to send: the caller heartbeats


async def test_a_reader_that_falls_behind_is_dropped_and_publishing_never_waits() -> None:
    hub = _hub(buffered=1000, queued=32)
    stalled = hub.subscribe("r", None)
    live = hub.subscribe("r", None)
    for i in range(16):
        hub.publish("r", "status", {"n": i})
    assert len(await _take_all(live, 16)) == 16
    for i in range(16, 40):
        hub.publish("r", "status", {"n": i})
    assert await stalled.take(1.0) == []  # dropped: the connection ends
    assert hub.figures()["dropped_readers"] == 1
    assert [_parse(m)[2]["n"] for m in await _take_all(live, 24)] == list(range(16, 40))
    # the dropped reader comes back with its last id and misses nothing
    back = hub.subscribe("r", BASE + 16)
    assert [_parse(m)[2]["n"] for m in await _take_all(back, 24)] == list(range(16, 40))


async def test_publishers_on_threads_reach_a_reader_in_order_without_gaps() -> None:
    hub = _hub(buffered=100_000, queued=100_000)
    reader = hub.subscribe("r", None)
    count = 5_000
    threads = [threading.Thread(target=lambda k=k: [hub.publish("r", "status", {"t": k, "n": i})
                                                     for i in range(count)]) for k in range(2)]
    for thread in threads:
        thread.start()
    got = [_parse(m) for m in await _take_all(reader, 2 * count)]
    for thread in threads:
        thread.join()
    assert [g[0] for g in got] == list(range(BASE + 1, BASE + 1 + 2 * count))
    for k in range(2):
        assert [g[2]["n"] for g in got if g[2]["t"] == k] == list(range(count))


async def test_runs_are_separate_and_a_deleted_run_closes_its_readers() -> None:
    hub = _hub()
    a, b = hub.subscribe("a", None), hub.subscribe("b", None)
    hub.publish("a", "status", {"n": 1})
    assert hub.figures()["readers"] == 2
    hub.close_run("b")
    assert await b.take(1.0) == []
    assert [_parse(m)[2] for m in await _take_all(a, 1)] == [{"n": 1}]
    assert hub.figures() == {"readers": 1, "published": 1, "dropped_readers": 0}


async def test_heartbeat_when_nothing_comes() -> None:
    hub = _hub()
    reader = hub.subscribe("r", None)
    started = asyncio.get_running_loop().time()
    assert await reader.take(0.05) is None
    assert asyncio.get_running_loop().time() - started >= 0.04
