"""Real uvicorn on 127.0.0.1, real clients (one per rank, in threads): HTTP equals the reference."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import make_run
from tests.e2e.conftest import LiveServer
from tests.e2e.trainer import Trainer, play_all
from tests.reference import expected_history, expected_summary

pytestmark = pytest.mark.e2e
METRICS = {"STEP_INTERVAL": 3, "WANDB_INTERVAL": 5, "LR_INTERVAL": 2, "PIPELINE_INTERVAL": 4}
INTERVALS = {"step": 3, "wandb": 5, "lr": 2, "pipeline": 4}


def series(url: str, run_id: str, keys: list[str]) -> dict[str, list[tuple[int, float]]]:
    reply = httpx.get(f"{url}/v1/runs/{run_id}/history", params={"keys": ",".join(keys)}, timeout=30)
    reply.raise_for_status()
    return {k: list(zip(v["steps"], v["values"], strict=True)) for k, v in reply.json()["series"].items()}


def check_against_reference(url: str, run_id: str, data) -> None:  # type: ignore[no-untyped-def]
    finish = httpx.post(f"{url}/v1/runs/{run_id}/finish", timeout=60).json()
    want = expected_history(data.recs, data.tasks, INTERVALS, data.scalars, data.last_step)
    assert series(url, run_id, list(want)) == want
    summary = expected_summary(data.recs, data.tasks)
    summary["final_custom_map"] = max(v for _, v in want["custom/map"])
    assert finish["summary"] == summary
    assert httpx.get(f"{url}/v1/runs/{run_id}/summary").json()["summary"] == summary
    latest = httpx.get(f"{url}/v1/runs/{run_id}/metrics").json()["metrics"]
    for key, points in want.items():
        assert latest[key]["value"] == max(points)[1], key


@pytest.mark.parametrize("binary", [True, False])
def test_ranks_in_threads_equal_reference(live_server: LiveServer, binary: bool) -> None:
    data = make_run(21, world_size=3, steps_per_epoch=6, epochs=2)
    trainers = [Trainer(live_server.url, data, r, METRICS, binary=binary, max_batch_events=7) for r in range(3)]
    play_all(trainers)
    for trainer in trainers:
        assert trainer.client.flush(30)
        trainer.client.close()
    check_against_reference(live_server.url, "e2e", data)


def test_skewed_ranks_one_finishes_the_epoch_before_the_other_starts(live_server: LiveServer) -> None:
    data = make_run(22, world_size=2, steps_per_epoch=8, epochs=2)
    early, late = (Trainer(live_server.url, data, r, METRICS) for r in (1, 0))
    epoch0 = [item for item in early.stream() if _epoch(item) == 0]
    early.play(epoch0)
    assert early.client.flush(30)
    assert httpx.get(f"{live_server.url}/v1/runs/e2e/metrics").json()["metrics"] == {}  # nothing half-filled
    late.play(late.stream())
    early.play(early.stream()[len(epoch0):])
    for trainer in (early, late):
        assert trainer.client.flush(30)
        trainer.client.close()
    check_against_reference(live_server.url, "e2e", data)


def _epoch(item) -> int:  # type: ignore[no-untyped-def]
    kind, value = item
    if kind == "batch":
        return int(value.epoch)
    if kind == "end":
        return int(value[1])
    return int(value[2] > 8)


def _prometheus(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " "))


def test_ranks_posting_at_once_are_ingested_in_groups_and_equal_reference(live_server: LiveServer) -> None:
    """Twelve ranks post their deliveries at the same moment (plain HTTP, msgpack): the run is busy, so
    deliveries that wait for it go together, one journal commit per group; every reply acknowledges
    its delivery, and the values equal the reference."""
    import threading

    from client._wire import MSGPACK_TYPE, encode_event, pack_body
    from tests.conftest import stream_events

    ranks, per_delivery = 12, 3
    data = make_run(23, world_size=ranks, steps_per_epoch=5, epochs=2)
    url = live_server.url
    httpx.post(f"{url}/v1/runs", json=data.spec("e2e", METRICS)).raise_for_status()
    sessions = [httpx.post(f"{url}/v1/runs/e2e/sessions", json={"rank": r}).json()["session"] for r in range(ranks)]
    start = threading.Barrier(ranks)
    acked: dict[int, list[int]] = {r: [] for r in range(ranks)}

    def post(rank: int) -> None:
        events = stream_events(data, rank)
        with httpx.Client(base_url=url, timeout=60) as api:
            start.wait(30)
            for seq in range(0, len(events), per_delivery):
                body = {"session": sessions[rank], "seq": seq,
                        "events": [encode_event(e, True) for e in events[seq:seq + per_delivery]]}
                reply = api.post("/v1/runs/e2e/events", content=pack_body(body, True),
                                 headers={"content-type": MSGPACK_TYPE})
                reply.raise_for_status()
                acked[rank].append(reply.json()["acked_seq"])

    threads = [threading.Thread(target=post, args=(r,)) for r in range(ranks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for rank in range(ranks):
        count = len(stream_events(data, rank))
        assert acked[rank] == [min(seq + per_delivery, count) for seq in range(0, count, per_delivery)]
    deliveries = sum(len(a) for a in acked.values())
    assert _prometheus(url, "linnaeus_journal_committed_deliveries_total") == deliveries
    commits = _prometheus(url, "linnaeus_journal_commits_total")
    assert 0 < commits < deliveries  # deliveries that found the run busy went in groups
    check_against_reference(url, "e2e", data)
