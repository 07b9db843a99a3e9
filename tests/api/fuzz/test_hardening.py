"""Targeted hardening cases (DESIGN §6, §9): each bad request gets its 4xx, its error type,
a detail naming the field, and changes nothing a reader can see."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import msgpack
import numpy as np
import pytest
from asgi_lifespan import LifespanManager

from client._wire import JSON_TYPE, MSGPACK_TYPE, BatchEvent, ScalarEvent, block_of, encode_array
from service.api import create_app
from service.settings import Settings
from tests.api.fuzz import _mutations as mut
from tests.api.fuzz._seed import DATA, METRICS, SEEDED, STREAMS, delivery

pytestmark = pytest.mark.anyio
RUN = "r"
MAX_BODY = 64 * 1024
MAX_EVENTS = 20
MAX_SAMPLES = 16
READS = ("/v1/runs", f"/v1/runs/{RUN}", f"/v1/runs/{RUN}/history", f"/v1/runs/{RUN}/summary",
         f"/v1/runs/{RUN}/metrics", f"/v1/runs/{RUN}/snapshot")


@dataclass
class Service:
    """An app in its lifespan, a client on it, and the seeded run's rank-0 session."""

    app: Any
    api: httpx.AsyncClient
    session: str
    seq: int

    async def state(self) -> list[Any]:
        return [(await self.api.get(path)).json() for path in READS]

    def base(self, binary: bool = False) -> dict[str, Any]:
        """A valid delivery of rank 0's next train batch and lr record."""
        rest = STREAMS[0][SEEDED[0]:]
        batch = next(e for e in rest if isinstance(e, BatchEvent) and e.phase == "train")
        lr = next(e for e in rest if isinstance(e, ScalarEvent) and e.kind == "lr" and e.step == batch.step)
        return copy.deepcopy(delivery(self.session, self.seq, [batch, lr], binary))

    async def post(self, body: Any, binary: bool = False, content_type: str | None = None) -> httpx.Response:
        raw = body if isinstance(body, bytes) else mut.encode(body, binary)
        ctype = content_type or (MSGPACK_TYPE if binary else JSON_TYPE)
        return await self.api.post(f"/v1/runs/{RUN}/events", content=raw, headers={"content-type": ctype})


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    settings = Settings(data_dir=tmp_path / "data", durable=False, wandb_enabled=False, console_enabled=False,
                        max_body_bytes=MAX_BODY, max_events_per_request=MAX_EVENTS,
                        max_samples_per_record=MAX_SAMPLES)
    app = create_app(settings, sinks=[])
    async with LifespanManager(app) as manager, httpx.AsyncClient(
            transport=httpx.ASGITransport(app=manager.app), base_url="http://t") as api:
        assert (await api.post("/v1/runs", json=DATA.spec(RUN, METRICS))).status_code == 201
        sessions = {}
        for rank, stream in STREAMS.items():
            sessions[rank] = (await api.post(f"/v1/runs/{RUN}/sessions", json={"rank": rank})).json()["session"]
            body = delivery(sessions[rank], 0, stream[:SEEDED[rank]], binary=False)
            assert (await api.post(f"/v1/runs/{RUN}/events", json=body)).status_code == 200
        yield Service(manager.app, api, sessions[0], SEEDED[0])


def assert_refused(reply: httpx.Response, status: int, type_: str, *needles: str) -> None:
    """The status, the error type, and a detail naming every needle."""
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert body["type"] == type_, body
    for needle in needles:
        assert needle in body["detail"], body


# ---------------------------------------------------------------- the valid baseline


@pytest.mark.parametrize("binary", [False, True])
async def test_the_base_delivery_is_valid(service: Service, binary: bool) -> None:
    reply = await service.post(service.base(binary), binary)
    assert reply.json() == {"acked_seq": service.seq + 2, "applied": 2, "ignored": 0}


# ---------------------------------------------------------------- malformed bodies


MALFORMED: list[tuple[str, bytes, str, str, str]] = [
    ("json-unclosed", b'{"session": "s", "seq": 0, "events": [', JSON_TYPE, "wire_error", "malformed"),
    ("json-empty", b"", JSON_TYPE, "wire_error", "malformed"),
    ("json-not-utf8", b'{"session": "\xff"}', JSON_TYPE, "wire_error", "malformed"),
    ("json-top-level-list", b"[1, 2]", JSON_TYPE, "invalid_input", "body"),
    ("msgpack-reserved-byte", b"\xc1", MSGPACK_TYPE, "wire_error", "malformed"),
    ("msgpack-truncated", bytes(msgpack.packb({"session": "s", "seq": 0, "events": [1, 2, 3]}))[:-2], MSGPACK_TYPE,
     "wire_error", "malformed"),
    ("msgpack-trailing-bytes", bytes(msgpack.packb({"seq": 0})) + b"\x00", MSGPACK_TYPE, "wire_error", "malformed"),
    # the declared length alone is refused: msgpack would allocate it before reading an element
    ("msgpack-huge-array-header", b"\xdd\xff\xff\xff\xff", MSGPACK_TYPE, "decoded_too_large", "max_decoded_bytes"),
    ("msgpack-int-map-key", bytes(msgpack.packb({1: 2})), MSGPACK_TYPE, "wire_error", "malformed"),
    ("msgpack-top-level-int", bytes(msgpack.packb(7)), MSGPACK_TYPE, "invalid_input", "body"),
    ("unknown-content-type", b"{}", "text/plain", "invalid_input", "content-type"),
]


@pytest.mark.parametrize(("raw", "ctype", "type_", "needle"), [c[1:] for c in MALFORMED],
                         ids=[c[0] for c in MALFORMED])
async def test_malformed_bodies(service: Service, raw: bytes, ctype: str, type_: str, needle: str) -> None:
    before = await service.state()
    status = 413 if type_ == "decoded_too_large" else 422
    assert_refused(await service.post(raw, content_type=ctype), status, type_, needle)
    assert await service.state() == before


# ---------------------------------------------------------------- damaged deliveries

Mutation = Callable[[dict[str, Any]], None]


def _batch(body: dict[str, Any]) -> dict[str, Any]:
    batch: dict[str, Any] = body["events"][0]
    return batch


def _set(path: str, value: Any) -> Mutation:
    """Set ``a.b.0.c`` in the body (integers index lists)."""
    def mutate(body: dict[str, Any]) -> None:
        keys: list[Any] = [int(k) if k.lstrip("-").isdigit() else k for k in path.split(".")]
        mut.parent(body, tuple(keys))[keys[-1]] = value
    return mutate


def _rows(task: str, k: int) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        _batch(body)["topk"][task] = [(row * 40)[:k] for row in _batch(body)["topk"][task]]
    return mutate


def _rename(key: str, old: str, new: str) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        _batch(body)[key][new] = _batch(body)[key].pop(old)
    return mutate


def _both(*mutations: Mutation) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        for m in mutations:
            m(body)
    return mutate


def _drop_last(path: str) -> Mutation:
    def mutate(body: dict[str, Any]) -> None:
        keys: list[Any] = [int(k) if k.isdigit() else k for k in path.split(".")]
        mut.at(body, tuple(keys)).pop()
    return mutate


E0 = "events.0"
DAMAGED: list[tuple[str, Mutation, int, str, tuple[str, ...]]] = [
    # wrong types
    ("seq-string", _set("seq", "3"), 422, "invalid_input", ("seq",)),
    ("seq-float", _set("seq", 8.0), 422, "invalid_input", ("seq",)),
    ("seq-bool", _set("seq", True), 422, "invalid_input", ("seq",)),
    ("session-int", _set("session", 5), 422, "invalid_input", ("session",)),
    ("session-empty", _set("session", ""), 422, "invalid_input", ("session",)),
    ("extra-top-level-field", _set("extra", 1), 422, "invalid_input", ("extra",)),
    ("events-object", _set("events", {}), 422, "wire_error", ("events",)),
    ("event-not-object", _set("events.0", [1]), 422, "wire_error", ("events[0]",)),
    ("step-string", _set(f"{E0}.step", "4"), 422, "wire_error", ("events[0].step",)),
    ("step-bool", _set(f"{E0}.step", True), 422, "wire_error", ("events[0].step",)),
    ("epoch-null", _set(f"{E0}.epoch", None), 422, "wire_error", ("events[0].epoch",)),
    ("phase-int", _set(f"{E0}.phase", 1), 422, "wire_error", ("events[0].phase",)),
    ("time-string", _set(f"{E0}.time", "now"), 422, "wire_error", ("events[0].time",)),
    ("targets-string", _set(f"{E0}.targets.genus", "abc"), 422, "wire_error", ("events[0].targets.genus",)),
    ("targets-floats", _set(f"{E0}.targets.genus.0", 1.0), 422, "wire_error", ("events[0].targets.genus",)),
    ("targets-bools", _set(f"{E0}.targets.genus.0", True), 422, "wire_error", ("events[0].targets.genus",)),
    ("targets-huge-int", _set(f"{E0}.targets.genus.0", 2**64), 422, "wire_error", ("events[0].targets.genus",)),
    ("topk-ragged", _set(f"{E0}.topk.genus.0", [1, 2]), 422, "wire_error", ("events[0].topk.genus",)),
    ("loss-string", _set(f"{E0}.loss", "x"), 422, "wire_error", ("events[0].loss",)),
    ("task-loss-null", _set(f"{E0}.task_losses.genus", None), 422, "wire_error", ("events[0].task_losses.genus",)),
    ("values-list", _set("events.1.values", [1.0]), 422, "wire_error", ("events[1].values",)),
    ("values-string", _set("events.1.values.head", "1e-3"), 422, "wire_error", ("events[1].values.head",)),
    ("hib-not-custom", _set("events.1.higher_is_better", {"head": True}), 422, "wire_error",
     ("events[1].higher_is_better",)),
    # NaN / inf (raw JSON literals; 1e999 parses to inf)
    ("loss-nan", _set(f"{E0}.loss", math.nan), 422, "wire_error", ("NaN",)),
    ("lr-infinity", _set("events.1.values.head", math.inf), 422, "wire_error", ("Infinity",)),
    ("loss-minus-infinity", _set(f"{E0}.loss", -math.inf), 422, "wire_error", ("Infinity",)),
    ("loss-1e999", _set(f"{E0}.loss", mut.BIG), 422, "wire_error", ("events[0].loss",)),
    ("time-1e999", _set(f"{E0}.time", mut.BIG), 422, "wire_error", ("events[0].time",)),
    ("sample-losses-1e999", _set(f"{E0}.sample_losses", [mut.BIG] * 5), 422, "wire_error",
     ("events[0].sample_losses",)),
    # class index outside [0, num_classes)
    ("target-at-num-classes", _set(f"{E0}.targets.genus.0", 6), 422, "invalid_input",
     ("events[0].targets.genus", "6", "[0, 6)")),
    ("target-negative", _set(f"{E0}.targets.family.1", -1), 422, "invalid_input", ("events[0].targets.family", "-1")),
    ("topk-beyond", _set(f"{E0}.topk.species.2.1", 11), 422, "invalid_input", ("events[0].topk.species", "11")),
    ("topk-int32-max", _set(f"{E0}.topk.genus.0.0", 2**31 - 1), 422, "invalid_input", ("events[0].topk.genus",)),
    # negative / non-integer / out-of-range steps
    ("step-negative", _set(f"{E0}.step", -1), 422, "wire_error", ("events[0].step", "-1")),
    ("step-float", _set(f"{E0}.step", 4.5), 422, "wire_error", ("events[0].step", "4.5")),
    ("step-beyond-2**53", _set(f"{E0}.step", 2**53 + 1), 422, "wire_error", ("events[0].step",)),
    ("epoch-negative", _set(f"{E0}.epoch", -1), 422, "wire_error", ("events[0].epoch",)),
    ("scalar-step-negative", _set("events.1.step", -2), 422, "wire_error", ("events[1].step",)),
    ("seq-negative", _set("seq", -1), 422, "invalid_input", ("seq",)),
    ("seq-huge", _set("seq", 2**63), 422, "invalid_input", ("seq",)),
    ("complete-negative", _set("events.1", {"kind": "complete", "through_step": -1}), 422, "wire_error",
     ("events[1].through_step",)),
    # unknown tasks
    ("unknown-task", _both(_rename("targets", "genus", "nope"), _rename("topk", "genus", "nope")), 422,
     "invalid_input", ("events[0].targets", "nope")),
    ("missing-task", _both(_rename("targets", "family", "x"), _rename("topk", "family", "x")), 422,
     "invalid_input", ("events[0].targets", "family")),
    ("unknown-task-loss", _set(f"{E0}.task_losses.nope", 1.0), 422, "invalid_input", ("events[0].task_losses", "nope")),
    ("bad-task-name", _rename("targets", "genus", "a b"), 422, "wire_error", ("events[0].targets", "a b")),
    # unknown event kind
    ("unknown-kind", _set(f"{E0}.kind", "bogus"), 422, "wire_error", ("events[0].kind", "bogus")),
    ("kind-missing", _set("events.1", {"step": 4}), 422, "wire_error", ("events[1].kind",)),
    # k < 3 (and k > 100)
    ("k-2", _rows("genus", 2), 422, "invalid_input", ("events[0].topk.genus", "k")),
    ("k-1", _rows("species", 1), 422, "invalid_input", ("events[0].topk.species",)),
    ("k-0", _rows("family", 0), 422, "invalid_input", ("events[0].topk.family",)),
    ("k-101", _rows("genus", 101), 422, "invalid_input", ("events[0].topk.genus",)),
    # mismatched lengths
    ("targets-disagree", _drop_last(f"{E0}.targets.species"), 422, "wire_error", ("events[0].targets",)),
    ("topk-rows-short", _drop_last(f"{E0}.topk.genus"), 422, "invalid_input", ("events[0].topk.genus",)),
    ("sample-losses-short", _set(f"{E0}.sample_losses", [0.5] * 4), 422, "wire_error",
     ("events[0].sample_losses",)),
    ("subset-labels-long", _set(f"{E0}.subsets.rarity", ["rare"] * 6), 422, "wire_error",
     ("events[0].subsets.rarity",)),
    ("sizes-sum", _set(f"{E0}.sizes", [2, 2]), 422, "wire_error", ("events[0].sizes",)),
    ("loss-per-segment", _set(f"{E0}.loss", [1.0, 2.0]), 422, "wire_error", ("events[0].loss",)),
    ("empty-batch", _set(f"{E0}.targets", {"genus": [], "species": [], "family": []}), 422, "wire_error",
     ("events[0].targets",)),
    # reserved subset family
    ("null-family", _set(f"{E0}.subsets", {"null": ["a"] * 5}), 422, "invalid_input", ("events[0].subsets", "null")),
]


@pytest.mark.parametrize(("mutate", "status", "type_", "needles"), [c[1:] for c in DAMAGED],
                         ids=[c[0] for c in DAMAGED])
async def test_damaged_json_deliveries(service: Service, mutate: Mutation, status: int, type_: str,
                                       needles: tuple[str, ...]) -> None:
    body = service.base()
    mutate(body)
    before = await service.state()
    assert_refused(await service.post(body), status, type_, *needles)
    assert await service.state() == before


def _raw_array(body: dict[str, Any], key: str, task: str, values: Any, dtype: str = "<i8") -> None:
    array = np.asarray(values, dtype=np.dtype(dtype))
    _batch(body)[key][task] = encode_array(array, binary=True) | {"dtype": np.dtype(dtype).str}


BINARY: list[tuple[str, Mutation, str, tuple[str, ...]]] = [
    ("target-at-num-classes", lambda b: _raw_array(b, "targets", "genus", [6, 0, 0, 0, 0]), "invalid_input",
     ("events[0].targets.genus", "6")),
    ("topk-negative", lambda b: _raw_array(b, "topk", "family", [[-1, 0, 1]] * 5), "invalid_input",
     ("events[0].topk.family", "-1")),
    ("uint64-out-of-range", lambda b: _raw_array(b, "targets", "genus", [2**64 - 1] * 5, "<u8"),
     "wire_error", ("events[0].targets.genus", str(2**64 - 1))),
    ("k-2", lambda b: _raw_array(b, "topk", "genus", [[0, 1]] * 5), "invalid_input", ("events[0].topk.genus",)),
    ("float-targets", lambda b: _raw_array(b, "targets", "genus", [0.0] * 5, "<f8"), "wire_error",
     ("events[0].targets.genus",)),
    ("bool-dtype", lambda b: _raw_array(b, "targets", "genus", [0] * 5, "|b1"), "wire_error",
     ("events[0].targets.genus",)),
    ("nan-sample-losses", lambda b: _set(f"{E0}.sample_losses",
                                         encode_array(np.array([math.nan] * 5), binary=True))(b), "wire_error",
     ("events[0].sample_losses", "finite")),
    ("short-data", _set(f"{E0}.targets.genus", {"dtype": "<i8", "shape": [5], "data": b"\0" * 39}), "wire_error",
     ("events[0].targets.genus", "bytes")),
    ("negative-shape", _set(f"{E0}.targets.genus", {"dtype": "<i8", "shape": [-5], "data": b""}), "wire_error",
     ("events[0].targets.genus",)),
    ("missing-dtype", _set(f"{E0}.targets.genus", {"shape": [5], "data": b"\0" * 40}), "wire_error",
     ("events[0].targets.genus", "dtype")),
    ("data-as-text", _set(f"{E0}.targets.genus", {"dtype": "<i8", "shape": [1], "data": "00000000"}), "wire_error",
     ("events[0].targets.genus",)),
    ("nan-loss", _set(f"{E0}.loss", math.nan), "wire_error", ("events[0].loss",)),
    ("inf-value", _set("events.1.values.head", math.inf), "wire_error", ("events[1].values.head",)),
    ("huge-step", _set(f"{E0}.step", 2**64 - 1), "wire_error", ("events[0].step",)),
    ("bytes-kind", _set(f"{E0}.kind", b"batch"), "wire_error", ("events[0].kind",)),
]


@pytest.mark.parametrize(("mutate", "type_", "needles"), [c[1:] for c in BINARY], ids=[c[0] for c in BINARY])
async def test_damaged_msgpack_deliveries(service: Service, mutate: Mutation, type_: str,
                                          needles: tuple[str, ...]) -> None:
    body = service.base(binary=True)
    mutate(body)
    before = await service.state()
    assert_refused(await service.post(body, binary=True), 422, type_, *needles)
    assert await service.state() == before


async def test_wrong_seq_is_409_naming_the_expected_seq(service: Service) -> None:
    body = service.base()
    body["seq"] = service.seq + 3
    before = await service.state()
    reply = await service.post(body)
    assert_refused(reply, 409, "sequence_gap", "seq", str(service.seq))
    assert reply.json()["expected_seq"] == service.seq
    assert await service.state() == before


async def test_one_bad_event_refuses_the_whole_delivery(service: Service) -> None:
    body = service.base()
    body["events"][1]["values"]["head"] = "0.1"  # the batch before it is valid
    before = await service.state()
    assert_refused(await service.post(body), 422, "wire_error", "events[1].values.head")
    assert await service.state() == before


# ---------------------------------------------------------------- sessions and runs


@pytest.mark.parametrize(("rank", "type_"), [
    (2, "invalid_input"), (3, "invalid_input"), (2**40, "invalid_input"),  # beyond world_size (2)
    (-1, "invalid_body"), ("0", "invalid_body"), (1.5, "invalid_body"), (True, "invalid_body"), (None, "invalid_body"),
])
async def test_rank_outside_world_size(service: Service, rank: Any, type_: str) -> None:
    before = await service.state()
    reply = await service.api.post(f"/v1/runs/{RUN}/sessions", json={"rank": rank})
    assert_refused(reply, 422, type_, "rank")
    assert await service.state() == before


@pytest.mark.parametrize("patch", [{"world_size": 3}, {"total_steps": 99},
                                   {"tasks": [{"name": "genus", "num_classes": 7}]},
                                   {"config": {"METRICS": {"STEP_INTERVAL": 3}}}])
async def test_conflicting_spec_is_409(service: Service, patch: dict[str, Any]) -> None:
    before = await service.state()
    reply = await service.api.post("/v1/runs", json={**DATA.spec(RUN, METRICS), **patch})
    assert_refused(reply, 409, "run_conflict", "run_id", RUN)
    assert await service.state() == before


RUN_ROUTES = [("GET", ""), ("GET", "/metrics"), ("GET", "/history"), ("GET", "/summary"), ("GET", "/snapshot"),
              ("GET", "/checkpoints/c1"), ("POST", "/events"), ("POST", "/sessions"), ("POST", "/finish"),
              ("POST", "/restore"), ("DELETE", "")]
BODIES = {"/events": {"session": "s", "seq": 0, "events": []}, "/sessions": {"rank": 0},
          "/restore": {"session": "s", "snapshot": {}}}


@pytest.mark.parametrize(("method", "suffix"), RUN_ROUTES, ids=[f"{m} {s or '/'}" for m, s in RUN_ROUTES])
async def test_unknown_run_is_404(service: Service, method: str, suffix: str) -> None:
    before = await service.state()
    reply = await service.api.request(method, f"/v1/runs/ghost{suffix}", json=BODIES.get(suffix))
    assert_refused(reply, 404, "unknown_run", "ghost")
    assert await service.state() == before


TRICKS = ["..", ".", "%2e%2e", "%2E%2E", "a%2Fb", "a/b", "x" * 129, "%C3%A9", "r%00", "r%20x", "%2e%2e%2f%2e%2e",
          "..%2Fr", "~r", "r%0A"]


async def _asgi(app: Any, method: str, raw_path: bytes, body: bytes = b"", headers: list[tuple[bytes, bytes]]
                | None = None, chunks: int | None = None) -> tuple[int, dict[str, Any], int]:
    """A request straight through ASGI (no client-side path normalisation); returns status, JSON, reads."""
    reads = 0
    sent: dict[str, Any] = {}

    async def receive() -> dict[str, Any]:
        nonlocal reads
        reads += 1
        if chunks is None:
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.request", "body": b"x" * 1024, "more_body": reads < chunks}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            sent["status"] = message["status"]
        elif message["type"] == "http.response.body":
            sent["body"] = sent.get("body", b"") + message.get("body", b"")

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": unquote(raw_path.decode()), "raw_path": raw_path, "query_string": b"",
             "root_path": "", "headers": [(b"host", b"t"), *(headers or [])], "client": ("127.0.0.1", 1),
             "server": ("t", 80)}
    await app(scope, receive, send)
    return sent["status"], json.loads(sent["body"]), reads


@pytest.mark.parametrize("trick", TRICKS)
@pytest.mark.parametrize(("method", "suffix"), [("GET", "/history"), ("POST", "/events"), ("DELETE", "")])
async def test_path_tricks_in_run_ids(service: Service, trick: str, method: str, suffix: str) -> None:
    before = await service.state()
    body = json.dumps(BODIES.get(suffix, {})).encode()
    status, reply, _ = await _asgi(service.app, method, f"/v1/runs/{trick}{suffix}".encode(), body,
                                   [(b"content-type", b"application/json")])
    assert status in (404, 405, 422), (status, reply)
    assert reply["type"] in {"invalid_input", "not_found", "unknown_run", "method_not_allowed"}, reply
    if status == 422:
        assert "run_id" in reply["detail"], reply
    assert await service.state() == before


async def test_run_id_of_128_chars_is_fine_and_129_is_not(service: Service) -> None:
    ok = await service.api.post("/v1/runs", json=DATA.spec("x" * 128, METRICS))
    assert ok.status_code == 201, ok.text
    before = await service.state()
    assert_refused(await service.api.post("/v1/runs", json=DATA.spec("x" * 129, METRICS)), 422, "invalid_body",
                   "run_id")
    assert_refused(await service.api.get(f"/v1/runs/{'x' * 129}"), 422, "invalid_input", "run_id")
    assert await service.state() == before


# ---------------------------------------------------------------- limits


async def test_declared_body_over_the_limit_is_413_before_reading_it(service: Service) -> None:
    before = await service.state()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(MAX_BODY * 1000).encode())]
    status, reply, reads = await _asgi(service.app, "POST", f"/v1/runs/{RUN}/events".encode(), headers=headers,
                                       chunks=MAX_BODY * 1000 // 1024)
    assert status == 413 and reply["type"] == "body_too_large", reply
    assert "max_body_bytes" in reply["detail"] and str(MAX_BODY) in reply["detail"]
    assert reads <= 1, f"read {reads} chunks of a body it had to refuse"
    assert await service.state() == before


async def test_streamed_body_over_the_limit_stops_reading_at_the_limit(service: Service) -> None:
    before = await service.state()
    status, reply, reads = await _asgi(service.app, "POST", f"/v1/runs/{RUN}/events".encode(),
                                       headers=[(b"content-type", b"application/json")], chunks=10_000)
    assert status == 413 and reply["type"] == "body_too_large" and "max_body_bytes" in reply["detail"], reply
    assert reads <= MAX_BODY // 1024 + 2, f"read {reads} chunks of 1 KiB for a {MAX_BODY} byte limit"
    assert await service.state() == before


async def test_real_body_over_the_limit_is_413(service: Service) -> None:
    body = service.base()
    body["events"][1]["values"] = {f"v{i}": 1.0 for i in range(MAX_BODY // 8)}
    before = await service.state()
    assert_refused(await service.post(body), 413, "body_too_large", "max_body_bytes")
    assert await service.state() == before


@pytest.mark.parametrize("binary", [False, True])
async def test_too_many_events_is_413(service: Service, binary: bool) -> None:
    body = service.base(binary)
    lr = body["events"][1]
    body["events"] = [copy.deepcopy(lr) for _ in range(MAX_EVENTS + 1)]
    before = await service.state()
    assert_refused(await service.post(body, binary), 413, "body_too_large", "events", str(MAX_EVENTS + 1),
                   "max_events_per_request")
    assert await service.state() == before
    body["events"] = body["events"][:MAX_EVENTS]  # exactly at the limit is fine
    assert (await service.post(body, binary)).status_code == 200


@pytest.mark.parametrize("coalesced", [False, True])
@pytest.mark.parametrize("binary", [False, True])
async def test_too_many_samples_in_a_record_is_413(service: Service, binary: bool, coalesced: bool) -> None:
    body = service.base()
    batch = _batch(body)
    size = MAX_SAMPLES + 1
    for key in ("targets", "topk"):
        batch[key] = {t: (v * size)[:size] for t, v in batch[key].items()}
    for family in batch["subsets"]:
        batch["subsets"][family] = (batch["subsets"][family] * size)[:size]
    if coalesced:  # several segments, each under the limit, over it together
        batch["sizes"], batch["loss"] = [size - 4, 4], [1.0, 2.0]
        batch["task_losses"] = {t: [v, v] for t, v in batch["task_losses"].items()}
    if binary:
        mut.binarize(body)
    before = await service.state()
    assert_refused(await service.post(body, binary), 413, "body_too_large", "events[0]", str(size),
                   "max_samples_per_record")
    assert await service.state() == before


@pytest.mark.parametrize("binary", [False, True])
async def test_a_block_counts_its_records_and_its_rows_against_the_limits(service: Service, binary: bool) -> None:
    """A columnar block is one event of the sequence, but the limits count what it carries."""
    rest = STREAMS[0][SEEDED[0]:]
    batch = next(e for e in rest if isinstance(e, BatchEvent) and e.phase == "train")
    assert batch.batch_size <= MAX_SAMPLES
    before = await service.state()
    too_many = delivery(service.session, service.seq, [block_of([batch] * (MAX_EVENTS + 1))], binary)
    assert_refused(await service.post(too_many, binary), 413, "body_too_large", str(MAX_EVENTS + 1), "records",
                   "max_events_per_request")
    big = copy.deepcopy(batch)
    size = MAX_SAMPLES + 1
    big.targets = {t: np.resize(v, size) for t, v in big.targets.items()}
    big.topk = {t: np.resize(v, (size, v.shape[1])) for t, v in big.topk.items()}
    big.subsets = {f: (labels, np.resize(codes, size)) for f, (labels, codes) in big.subsets.items()}
    big.sizes = [size]
    if big.sample_losses is not None:
        big.sample_losses = np.resize(big.sample_losses, size)
    large_row = delivery(service.session, service.seq, [block_of([batch, big])], binary)
    assert_refused(await service.post(large_row, binary), 413, "body_too_large", "events[0]", str(size),
                   "max_samples_per_record")
    assert await service.state() == before
    # at the records limit, and more samples in all than one record may hold: rows are records
    fits = delivery(service.session, service.seq, [block_of([batch] * MAX_EVENTS)], binary)
    assert MAX_EVENTS * batch.batch_size > MAX_SAMPLES
    reply = await service.post(fits, binary)
    assert reply.status_code == 200 and reply.json()["acked_seq"] == service.seq + 1, reply.text
