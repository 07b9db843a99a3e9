"""Test doubles for the client: a fake service (via httpx.MockTransport), a clock, data.

``FakeService`` keeps runs, sessions and applied events in memory with the service's
sequence semantics (DESIGN §3b) and lets a test inject failures per events request.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np

from client._wire import (
    BatchEvent,
    CheckpointEvent,
    CompleteEvent,
    EndEpochEvent,
    Event,
    ScalarEvent,
    decode_events,
    logical_events,
    unpack_body,
)

TASKS = {"genus": 5, "species": 10}


@dataclass
class Session:
    run_id: str
    rank: int
    next_seq: int = 0


@dataclass
class Position:
    completed: int = -1
    last_step: int = -1

    def advance(self, event: Event) -> None:
        if isinstance(event, ScalarEvent) or (
            isinstance(event, BatchEvent) and event.phase == "train"
        ):
            self.completed = max(self.completed, event.step - 1)
            self.last_step = max(self.last_step, event.step)
        elif isinstance(event, EndEpochEvent) and event.phase == "train":
            self.completed = max(self.completed, self.last_step)
        elif isinstance(event, CompleteEvent):
            self.completed = max(self.completed, event.through_step)


@dataclass
class FakeService:
    """In-memory service. ``failures`` holds actions for the next events requests:
    ``"503"``, ``"connect"``, ``"drop_ack"`` (apply, then answer 503), ``"reject"`` (422),
    ``"fenced"`` (409) and ``"lose_run"`` (forget everything, as a restarted in-memory service).
    """

    down: bool = False
    failures: deque[str] = field(default_factory=deque)
    pending_replies: int = 0
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)
    latest: dict[tuple[str, int], str] = field(default_factory=dict)
    applied: list[tuple[int, Event]] = field(default_factory=list)
    positions: dict[int, Position] = field(default_factory=dict)
    markers: dict[str, dict[int, dict[str, int]]] = field(default_factory=dict)
    restores: list[dict[str, Any]] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    body_sizes: list[int] = field(default_factory=list)
    events_posts: int = 0
    cond: threading.Condition = field(default_factory=threading.Condition)
    _ids: Iterator[int] = field(default_factory=itertools.count)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # ---------------------------------------------------------------- what tests read

    def events(self, kind: type | None = None, rank: int | None = None) -> list[Any]:
        with self.cond:
            return [
                e
                for r, e in self.applied
                if (kind is None or isinstance(e, kind)) and (rank is None or r == rank)
            ]

    def batches(self) -> list[BatchEvent]:
        return self.events(BatchEvent)

    # ---------------------------------------------------------------- routing

    def handle(self, request: httpx.Request) -> httpx.Response:
        if self.down:
            raise httpx.ConnectError("connection refused", request=request)
        parts = request.url.path.strip("/").split("/")
        with self.cond:
            if request.method == "POST" and parts == ["v1", "runs"]:
                return self._create_run(json.loads(request.content))
            run_id, action = parts[2], parts[3]
            if run_id not in self.runs:
                return _error(404, "unknown_run", f"no run {run_id!r}")
            if action == "sessions":
                return self._open_session(run_id, json.loads(request.content)["rank"])
            if action == "events":
                return self._events(request)
            if action == "checkpoints":
                return self._checkpoint(run_id, parts[4], float(request.url.params["wait_s"]))
            if action == "restore":
                return self._restore(json.loads(request.content))
        return _error(404, "not_found", request.url.path)

    def _create_run(self, spec: dict[str, Any]) -> httpx.Response:
        known = self.runs.get(spec["run_id"])
        if known is not None and known != spec:
            return _error(409, "run_conflict", "the run exists with another spec")
        self.runs[spec["run_id"]] = spec
        return httpx.Response(200 if known else 201, json=spec)

    def _open_session(self, run_id: str, rank: int) -> httpx.Response:
        session = f"s{next(self._ids)}"
        self.sessions[session] = Session(run_id, rank)
        self.latest[(run_id, rank)] = session
        return httpx.Response(200, json={"session": session, "rank": rank, "next_seq": 0})

    def _events(self, request: httpx.Request) -> httpx.Response:
        self.events_posts += 1
        content_type = request.headers["content-type"]
        self.content_types.append(content_type)
        self.body_sizes.append(len(request.content))
        action = self.failures.popleft() if self.failures else None
        if action == "connect":
            raise httpx.ConnectError("connection reset", request=request)
        if action in ("503", "reject", "fenced"):
            status, kind = {
                "503": (503, "unavailable"),
                "reject": (422, "invalid_input"),
                "fenced": (409, "session_fenced"),
            }[action]
            return _error(status, kind, f"injected {action}")
        if action == "lose_run":
            self.runs.clear()
            self.sessions.clear()
            return _error(404, "unknown_run", "the service restarted")
        reply = self._apply(unpack_body(request.content, content_type))
        return _error(503, "unavailable", "ack dropped") if action == "drop_ack" else reply

    def _apply(self, body: dict[str, Any]) -> httpx.Response:
        session = self.sessions.get(body["session"])
        if session is None:
            return _error(404, "unknown_session", "no such session")
        if self.latest[(session.run_id, session.rank)] != body["session"]:
            return _error(409, "session_fenced", "a newer session exists")
        if body["seq"] > session.next_seq:
            return _error(409, "sequence_gap", "gap", expected_seq=session.next_seq)
        fresh = decode_events(body["events"])[session.next_seq - body["seq"] :]
        for event in logical_events(fresh):  # a block stands for its records
            self._apply_one(session.rank, event)
        session.next_seq += len(fresh)
        self.cond.notify_all()
        return httpx.Response(200, json={"acked_seq": session.next_seq})

    def _apply_one(self, rank: int, event: Event) -> None:
        position = self.positions.setdefault(rank, Position())
        position.advance(event)
        self.applied.append((rank, event))
        if isinstance(event, CheckpointEvent):
            marks = self.markers.setdefault(event.id, {})
            marks[rank] = {
                "rank": rank,
                "completed": position.completed,
                "last_step": position.last_step,
            }

    # ---------------------------------------------------------------- checkpoints

    def _checkpoint(self, run_id: str, ckpt: str, wait_s: float) -> httpx.Response:
        world = self.runs[run_id]["world_size"]

        def missing() -> list[int]:
            return sorted(set(range(world)) - set(self.markers.get(ckpt, {})))

        if self.pending_replies > 0:
            self.pending_replies -= 1
        else:
            self.cond.wait_for(lambda: not missing(), timeout=wait_s)
        if missing() or self.pending_replies:
            return _error(408, "checkpoint_pending", "waiting for ranks", missing_ranks=missing())
        ranks = [self.markers[ckpt][r] for r in range(world)]
        return httpx.Response(
            200, json={"version": 1, "run_id": run_id, "checkpoint": ckpt, "cut": {"ranks": ranks}}
        )

    def _restore(self, body: dict[str, Any]) -> httpx.Response:
        if body["session"] not in self.sessions:
            return _error(404, "unknown_session", "no such session")
        self.restores.append(body)
        return httpx.Response(200, json={"restored": True, "cut": body["snapshot"]["cut"]})


def _error(status: int, kind: str, detail: str, **extra: Any) -> httpx.Response:
    return httpx.Response(status, json={"type": kind, "detail": detail, **extra})


class FakeClock:
    """A wall clock that advances one second per reading."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def random_batch(
    rng: np.random.Generator, size: int, tasks: dict[str, int] = TASKS
) -> dict[str, Any]:
    """Targets and top-3 predictions for a batch."""
    targets = {t: rng.integers(0, n, size) for t, n in tasks.items()}
    topk = {t: np.stack([rng.permutation(n)[:3] for _ in range(size)]) for t, n in tasks.items()}
    return {"targets": targets, "topk": topk}
