"""Issue 13, items 1, 2, 3, 7 and 9 against a real uvicorn: every bad body is a 4xx naming the
field or limit, and changes nothing (the service's whole visible state is compared)."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import msgpack
import numpy as np
import pytest

from client._wire import MSGPACK_TYPE, BatchEvent, encode_event, pack_body
from service.settings import Settings
from tests.api.fuzz._live import fingerprint, live_service
from tests.conftest import make_run, stream_events

pytestmark = pytest.mark.e2e
METRICS = {"STEP_INTERVAL": 2, "WANDB_INTERVAL": 4}
LIMIT = 256 * 1024
DATA = make_run(13, world_size=1, steps_per_epoch=4, epochs=1)


@dataclass
class Service:
    """The live service with one run of its own for the test (``run``), 3 events in."""

    url: str
    http: httpx.Client
    run: str = ""
    session: str = ""

    def events(self, body: bytes, binary: bool) -> httpx.Response:
        ctype = MSGPACK_TYPE if binary else "application/json"
        return self.http.post(f"/v1/runs/{self.run}/events", content=body, headers={"content-type": ctype})

    def state(self) -> Any:
        return fingerprint(self.http, [self.run], listing=False), self.http.get("/v1/runs").json()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("bad-input") / "data", wandb_enabled=False,
                        console_enabled=False, max_body_bytes=LIMIT, max_decoded_bytes=4 * LIMIT)
    with live_service(settings) as served, httpx.Client(base_url=served.url, timeout=30) as http:
        yield Service(served.url, http)


@pytest.fixture
def service(live: Service, request: pytest.FixtureRequest) -> Service:
    """A run of the test's own, so that a request wrongly accepted cannot spoil another test."""
    run = f"r{abs(hash(request.node.nodeid)) % 10**12}"
    http = live.http
    assert http.post("/v1/runs", json=DATA.spec(run, METRICS)).status_code == 201
    session = http.post(f"/v1/runs/{run}/sessions", json={"rank": 0}).json()["session"]
    first = [encode_event(e, False) for e in stream_events(DATA, 0)[:3]]
    assert http.post(f"/v1/runs/{run}/events", json={"session": session, "seq": 0, "events": first}).status_code == 200
    return Service(live.url, http, run, session)


def _refused(reply: httpx.Response, status: int, *needles: str) -> None:
    assert reply.status_code == status, reply.text
    body = reply.json()
    assert set(body) >= {"type", "detail"}
    for needle in needles:
        assert needle in body["detail"], body


def _delivery(service: Service, mutate: Any, binary: bool = False) -> bytes:
    events = [encode_event(e, binary) for e in stream_events(DATA, 0)[3:5]]
    mutate(events)
    return pack_body({"session": service.session, "seq": 3, "events": events}, binary)


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def mutate(events: list[dict[str, Any]]) -> None:
        target: Any = events
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return mutate


def _json_with_raw(service: Service, path: tuple[Any, ...], raw_number: str) -> bytes:
    """A JSON delivery whose field at ``path`` is the literal ``raw_number`` (json.dumps refuses NaN)."""
    marker = 987654321.125
    text = _delivery(service, _set(path, marker)).decode()
    assert text.count(repr(marker)) == 1
    return text.replace(repr(marker), raw_number).encode()


# ---------------------------------------------------------------- item 2: numbers that broke serialisation

HUGE = str(10**400)


@pytest.mark.parametrize(("path", "raw", "needle"), [
    ((0, "time"), HUGE, "events[0].time"),
    ((0, "loss"), HUGE, "events[0].loss"),
    ((0, "loss"), "-" + HUGE, "events[0].loss"),
    ((0, "task_losses", DATA.tasks[0][0]), HUGE, "task_losses"),
    ((0, "loss"), "1e999", "events[0].loss"),
    ((0, "loss"), "NaN", "NaN"),
    ((0, "time"), "Infinity", "Infinity"),
    ((0, "step"), HUGE, "events[0].step"),
])
def test_out_of_range_numbers_in_events_are_422(service: Service, path: tuple[Any, ...], raw: str,
                                                 needle: str) -> None:
    before = service.state()
    _refused(service.events(_json_with_raw(service, path, raw), binary=False), 422, needle)
    assert service.state() == before


def test_out_of_range_scalar_value_is_422(service: Service) -> None:
    body = {"session": service.session, "seq": 3, "events": [
        {"kind": "custom", "step": 1, "time": 1.0, "values": {"score": 987654321.125}}]}
    before = service.state()
    raw = pack_body(body, False).replace(b"987654321.125", HUGE.encode())
    _refused(service.events(raw, binary=False), 422, "values.score")
    assert service.state() == before


@pytest.mark.parametrize("shape", [[0, 2**63], [2**63, 0], [2**40, 2**40, 0], [-1, 0]])
def test_binary_shape_overflow_is_422(service: Service, shape: list[int]) -> None:
    task = DATA.tasks[0][0]

    def overflow(events: list[dict[str, Any]]) -> None:
        events[0]["topk"][task] = {"dtype": "<i4", "shape": shape, "data": b""}

    before = service.state()
    _refused(service.events(_delivery(service, overflow, binary=True), binary=True), 422, f"topk.{task}")
    assert service.state() == before


# ---------------------------------------------------------------- item 1: non-finite and huge numbers in a run config

@pytest.mark.parametrize("raw", ["NaN", "Infinity", "-Infinity", "1e999", str(2**63), str(-(2**63) - 1), HUGE])
def test_non_finite_or_out_of_int64_config_is_422_and_creates_nothing(service: Service, raw: str) -> None:
    spec = make_run(14, world_size=1, steps_per_epoch=2, epochs=1).spec(f"{service.run}-config", METRICS)
    spec["config"]["EXPERIMENT"] = {"NOTES": "x", "LR_SCALE": 987654321.125}
    text = pack_body(spec, False).replace(b"987654321.125", raw.encode())
    before = service.state()
    reply = service.http.post("/v1/runs", content=text, headers={"content-type": "application/json"})
    _refused(reply, 422, "config")
    assert service.state() == before
    assert service.http.get(f"/v1/runs/{service.run}-config").status_code == 404


# ---------------------------------------------------------------- item 3: names ending in a newline

NEWLINE_NAMES = {
    "phase": _set((0, "phase"), "train\n"),
    "family": lambda events: events[0].update(subsets={"evil\n": ["a"] * len(events[0]["targets"][DATA.tasks[0][0]])}),
    "label": lambda events: events[0].update(subsets={"fam": ["evil\n"] * len(events[0]["targets"][DATA.tasks[0][0]])}),
    "scalar": lambda events: events.append({"kind": "custom", "step": 2, "time": 1.0, "values": {"evil\n": 1.0}}),
    "checkpoint": lambda events: events.append({"kind": "checkpoint", "id": "ckpt\n"}),
}


@pytest.mark.parametrize("what", sorted(NEWLINE_NAMES))
def test_names_with_a_trailing_newline_are_422(service: Service, what: str) -> None:
    before = service.state()
    reply = service.events(_delivery(service, NEWLINE_NAMES[what]), binary=False)
    _refused(reply, 422, "\\n")
    assert service.state() == before


def test_task_name_with_a_trailing_newline_is_422(service: Service) -> None:
    spec = make_run(15, world_size=1, steps_per_epoch=2, epochs=1).spec(f"{service.run}-task", METRICS)
    spec["tasks"][0]["name"] += "\n"
    reply = service.http.post("/v1/runs", json=spec)
    _refused(reply, 422, "tasks")
    assert service.http.get(f"/v1/runs/{service.run}-task").status_code == 404


# ---------------------------------------------------------------- item 7: the body limit on every route

ROUTES = ["", "/sessions", "/events", "/restore", "/finish"]


@pytest.mark.parametrize("path", ROUTES)
def test_declared_body_over_the_limit_is_413_on_every_route(service: Service, path: str) -> None:
    before = service.state()
    body = b'{"padding": "' + b"x" * LIMIT + b'"}'
    path = f"/v1/runs/{service.run}{path}" if path else "/v1/runs"
    _refused(service.http.post(path, content=body, headers={"content-type": "application/json"}), 413,
             "max_body_bytes")
    assert service.state() == before


@pytest.mark.parametrize("path", ROUTES[:-1])  # /finish takes no body: it never reads one, let alone in full
def test_streamed_body_is_refused_before_it_is_read_in_full(service: Service, path: str) -> None:
    """Chunked, no Content-Length: the 413 arrives while the rest of the body is still unsent."""
    path = f"/v1/runs/{service.run}{path}" if path else "/v1/runs"
    port = int(service.url.rsplit(":", 1)[1])
    before = service.state()
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
                     "transfer-encoding: chunked\r\n\r\n".encode())
        chunk = b"x" * (64 * 1024)
        # the service answers once the limit is passed and closes the connection; chunks still in flight
        # then meet a reset, which ends the sending (the answer is already in this socket's receive buffer)
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            for _ in range(LIMIT // len(chunk) + 2):  # just past the limit, and never the terminating chunk
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        reply = _read_reply(sock)
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"max_body_bytes" in reply
    assert service.state() == before


def _read_reply(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        part = sock.recv(65536)
        if not part:
            break
        data += part
    return data


# ---------------------------------------------------------------- item 9: labels per family capped

def test_too_many_labels_in_one_family_is_refused(service: Service) -> None:
    size = 5000  # more than the 4,096 labels a family may have (DESIGN §6)
    zeros = np.zeros(size, dtype=np.int64)
    batch = BatchEvent(step=1, epoch=0, phase="train", time=1.0, sizes=[size],
                       targets={name: zeros for name, _ in DATA.tasks},
                       topk={name: np.zeros((size, 3), dtype=np.int64) for name, _ in DATA.tasks},
                       subsets={"fam": ([f"label{i}" for i in range(size)], np.arange(size))})
    narrow = {name: np.dtype("<u1") for name, _ in DATA.tasks}
    body = pack_body({"session": service.session, "seq": 3, "events": [encode_event(batch, True, narrow)]}, True)
    assert len(body) <= LIMIT
    before = service.state()
    reply = service.events(body, binary=True)
    assert reply.status_code in (422, 429), reply.text
    assert "4096" in reply.json()["detail"] or "label" in reply.json()["detail"]
    assert service.state() == before


def test_more_than_256_tasks_is_422(service: Service) -> None:
    spec = DATA.spec(f"{service.run}-tasks", METRICS)
    spec["tasks"] = [{"name": f"t{i}", "num_classes": 3, "null_index": 0} for i in range(257)]
    _refused(service.http.post("/v1/runs", json=spec), 422, "tasks")
    assert service.http.get(f"/v1/runs/{service.run}-tasks").status_code == 404


def test_more_than_64_subset_families_is_refused(service: Service) -> None:
    spec = DATA.spec(f"{service.run}-families", METRICS)
    spec["subsets"] = {f"family{i}": ["a", "b"] for i in range(65)}
    reply = service.http.post("/v1/runs", json=spec)
    assert reply.status_code in (422, 429), reply.text
    assert "64" in reply.json()["detail"]
    assert service.http.get(f"/v1/runs/{service.run}-families").status_code == 404


# ---------------------------------------------------------------- item 8 at the HTTP level

def test_dense_json_is_refused_before_it_is_parsed(service: Service) -> None:
    """A JSON body of small numbers decodes to ~10x its size: refused while it streams in."""
    dense = b'{"session": "s", "seq": 0, "events": [' + b"1," * (LIMIT // 2 - 40) + b"1]}"
    assert len(dense) <= LIMIT
    before = service.state()
    _refused(service.events(dense, binary=False), 413, "max_decoded_bytes")
    _refused(service.http.post("/v1/runs", content=dense, headers={"content-type": "application/json"}), 413,
             "max_decoded_bytes")
    assert service.state() == before


def test_msgpack_list_bomb_is_refused(service: Service) -> None:
    bomb = msgpack.packb({"session": service.session, "seq": 3, "events": [[1000] * 1000] * 50})
    assert len(bomb) <= LIMIT
    before = service.state()
    _refused(service.events(bomb, binary=True), 413, "max_decoded_bytes")
    assert service.state() == before


def test_good_requests_still_work_after_all_that(service: Service) -> None:
    body = _delivery(service, lambda events: None, binary=True)
    assert service.events(body, binary=True).json()["acked_seq"] == 5
