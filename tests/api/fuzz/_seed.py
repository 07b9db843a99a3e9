"""A run with real data to fuzz against, and the wire bodies of its deliveries."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from client._wire import JSON_TYPE, MSGPACK_TYPE, Event, encode_event, pack_body
from tests.conftest import RunData, make_run, stream_events

RUN = "fz"
METRICS = {"STEP_INTERVAL": 2, "WANDB_INTERVAL": 4, "LR_INTERVAL": 2}
DATA = make_run(11, world_size=2, steps_per_epoch=4, epochs=1, batch=(2, 5))
STREAMS = {rank: stream_events(DATA, rank) for rank in range(DATA.world_size)}
SEEDED = {rank: len(stream) // 2 for rank, stream in STREAMS.items()}


@dataclass
class Seeded:
    """A run created over HTTP with half of every rank's stream delivered."""

    run_id: str
    data: RunData
    sessions: dict[int, str]
    next_seq: dict[int, int] = field(default_factory=dict)

    def rest(self, rank: int) -> list[Event]:
        """The rank's events not delivered yet."""
        return STREAMS[rank][SEEDED[rank]:]


def delivery(session: str, seq: int, events: Sequence[Event], binary: bool) -> dict[str, Any]:
    """A delivery body in wire form (JSON lists or msgpack raw arrays)."""
    return {"session": session, "seq": seq, "events": [encode_event(e, binary) for e in events]}


def post_delivery(client: httpx.Client, run_id: str, body: dict[str, Any], binary: bool) -> httpx.Response:
    """POST a wire-form delivery."""
    ctype = MSGPACK_TYPE if binary else JSON_TYPE
    return client.post(f"/v1/runs/{run_id}/events", content=pack_body(body, binary), headers={"content-type": ctype})


def seed_run(client: httpx.Client, run_id: str = RUN) -> Seeded:
    """Create ``run_id`` and deliver the first half of each rank's stream."""
    reply = client.post("/v1/runs", json=DATA.spec(run_id, METRICS))
    assert reply.status_code == 201, reply.text
    seeded = Seeded(run_id, DATA, {})
    for rank, stream in STREAMS.items():
        session = client.post(f"/v1/runs/{run_id}/sessions", json={"rank": rank}).json()["session"]
        seeded.sessions[rank] = session
        ack = post_delivery(client, run_id, delivery(session, 0, stream[:SEEDED[rank]], rank == 1), rank == 1)
        assert ack.json()["acked_seq"] == SEEDED[rank], ack.text
        seeded.next_seq[rank] = SEEDED[rank]
    return seeded


def describe(method: str, path: str, content_type: str, raw: bytes) -> str:
    """A reproduction line for a failure message."""
    shown = raw.decode("utf-8", "backslashreplace") if content_type.startswith(JSON_TYPE) else raw.hex()
    return f"{method} {path} content-type={content_type!r} body[{len(raw)}]={shown[:3000]}"


def json_text(body: Any) -> bytes:
    """JSON with NaN/Infinity literals kept (the service must refuse them)."""
    return json.dumps(body, allow_nan=True, separators=(",", ":")).encode()
