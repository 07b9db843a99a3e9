"""RunRegistry: every run of the service, one lock per run, the journal and the sinks.

Each mutation: check (no change) → journal (durable) → apply → hand emissions to sinks.
Writing the journal under the run lock is deliberate: the journal's order must be the
order of application, or a replay would compute another state. Sinks' ``emit`` only
queues, so calling it under the lock keeps emissions in order without blocking on I/O.
Reads copy under the lock and format outside it.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from client._wire import Event, decode_event, decode_events, encode_event, unpack_body
from service.core.emission import Sink
from service.core.errors import LimitExceeded, RunConflict, UnknownRun
from service.core.run import RunState
from service.core.runs import Run
from service.core.spec import RunSpec, check_run_id, parse_spec

log = logging.getLogger("linnaeus_metrics.registry")
Payload = Mapping[str, Any] | Callable[[], Mapping[str, Any]]


class Store(Protocol):
    """The durable store as the registry uses it (service/storage implements it)."""

    def append(self, run_id: str, command: str, payload: Mapping[str, Any]) -> int:
        """Make one command durable; returns its id."""

    def write_image(self, run_id: str, command_id: int, image: Mapping[str, Any]) -> None:
        """Replace the run's journal up to ``command_id`` by ``image``."""

    def put_blob(self, run_id: str, kind: str, key: str, value: Mapping[str, Any]) -> None:
        """Store a document."""

    def get_blob(self, run_id: str, kind: str, key: str) -> dict[str, Any] | None:
        """A stored document."""

    def delete_run(self, run_id: str) -> None:
        """Remove everything of a run."""


class RunRegistry:
    """All runs of one service process."""

    def __init__(self, sinks: Sequence[Sink] = (), store: Store | None = None, max_runs: int = 1000,
                 history_max_points: int = 10_000, image_every_events: int = 5_000,
                 new_id: Callable[[], str] = lambda: uuid.uuid4().hex) -> None:
        self.sinks = list(sinks)
        self.store = store
        self.max_runs = max_runs
        self.history_max_points = history_max_points
        self.image_every_events = image_every_events
        self._new_id = new_id
        self._runs: dict[str, Run] = {}
        self._last_command: dict[str, int] = {}
        self._stored: set[tuple[str, str]] = set()
        self.image_writes = 0
        self.image_seconds = 0.0
        self._lock = threading.Lock()

    # ------------------------------------------------------------ runs

    def create_run(self, raw: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create a run, or return the existing one with the same spec.

        Raises:
            InvalidInput: the spec is invalid.
            RunConflict: a run with the same id has a different spec.
            LimitExceeded: the service holds ``max_runs`` runs.
        """
        spec = parse_spec(raw)
        with self._lock:
            existing = self._runs.get(spec.run_id)
            if existing is not None:
                if existing.spec.to_dict() != spec.to_dict():
                    raise RunConflict(f"run_id: run {spec.run_id!r} exists with a different spec")
                return self.info(spec.run_id), False
            if len(self._runs) >= self.max_runs:
                raise LimitExceeded(f"runs: the service already holds {self.max_runs} runs (max_runs)")
            self._journal(spec.run_id, "create", {"spec": spec.to_dict()})
            self._add(spec)
        return self.info(spec.run_id), True

    def _add(self, spec: RunSpec, open_sinks: bool = True) -> Run:
        state = RunState(spec)
        state.book.max_points = self.history_max_points
        run = self._runs[spec.run_id] = Run(spec, state)
        if open_sinks:
            self._open_sinks(run)
        return run

    def _open_sinks(self, run: Run) -> None:
        for sink in self.sinks:
            sink.open_run(run.spec.run_id, run.spec.to_dict())

    def get(self, run_id: str) -> Run:
        """The run ``run_id``; raises UnknownRun (InvalidInput for a malformed id)."""
        check_run_id(run_id)
        run = self._runs.get(run_id)
        if run is None:
            raise UnknownRun(f"run: no run {run_id!r}")
        return run

    def run_ids(self) -> list[str]:
        """Ids of every run, sorted."""
        with self._lock:
            return sorted(self._runs)

    def list_runs(self) -> list[dict[str, Any]]:
        """Short info of every run."""
        out = []
        for run_id in self.run_ids():
            run = self._runs.get(run_id)
            if run is not None:
                with run.lock:
                    out.append(_short_info(run))
        return out

    def delete_run(self, run_id: str) -> None:
        """Remove a run and its data."""
        with self._lock:
            run = self.get(run_id)
            with run.lock:
                if self.store is not None:
                    self.store.delete_run(run_id)
                del self._runs[run_id]
        for sink in self.sinks:
            sink.delete_run(run_id)

    def info(self, run_id: str) -> dict[str, Any]:
        """A run's spec, status, per-rank watermarks, counters and sink status."""
        run = self.get(run_id)
        with run.lock:
            info = _short_info(run)
            info.update(run.spec.to_dict())
            info["schedule"] = dict(run.state.schedule.intervals)
            info["ranks"] = _rank_info(run)
            info["counters"] = dict(run.counters)
            info["generation"] = run.generation
            info["checkpoints"] = list(run.checkpoints)
        info["sinks"] = {s.name: s.status(run_id) for s in self.sinks}
        return info

    # ------------------------------------------------------------ commands

    def open_session(self, run_id: str, rank: int) -> dict[str, Any]:
        """Open a session for ``rank``, fencing older ones; returns ``{session, rank, next_seq}``."""
        run = self.get(run_id)
        session_id = self._new_id()
        with run.lock:
            run.open_session(rank, session_id, self._commit(run, "session", {"rank": rank, "session": session_id}))
            self._after(run)
        return {"session": session_id, "rank": rank, "next_seq": 0}

    def ingest(self, run_id: str, session_id: str, seq: int, events: Sequence[Event],
               body: tuple[bytes, str] | None = None) -> dict[str, int]:
        """Apply a delivery exactly once; returns ``{"acked_seq", "applied", "ignored"}``.

        ``body`` is the request as received (bytes, content type): the journal keeps it as
        it is rather than encoding the decoded events again.
        """
        run = self.get(run_id)
        with run.lock:
            commit = self._commit(run, "events", lambda: _journal_events(session_id, seq, events, body))
            reply = run.deliver(session_id, seq, events, commit)
            self._after(run)
            return reply

    def restore(self, run_id: str, session_id: str, snapshot: Mapping[str, Any]) -> dict[str, Any]:
        """Roll the run back to a snapshot's cut (DESIGN §3b)."""
        run = self.get(run_id)
        with run.lock:
            previous = run.generation
            reply = run.restore(session_id, snapshot, self._commit(run, "restore", {
                "session": session_id, "snapshot": dict(snapshot)}))
            if self.store is not None and run.generation != previous and run.base is not None:
                self.store.put_blob(run_id, "base", str(run.generation), run.base)
            self._after(run)
            return reply

    def finish(self, run_id: str) -> dict[str, float]:
        """Close windows and epochs, write the final summary; returns it."""
        run = self.get(run_id)
        with run.lock:
            summary = run.finish(self._commit(run, "finish", {}))
            self._after(run)
            return summary

    def finish_sinks(self, run_id: str, summary: Mapping[str, float], timeout_s: float) -> dict[str, str]:
        """Finish the run in every sink (bounded); returns how each ended."""
        return {sink.name: sink.finish_run(run_id, summary, timeout_s) for sink in self.sinks}

    def _commit(self, run: Run, kind: str, payload: Payload) -> Callable[[], None]:
        def commit() -> None:
            body = payload() if callable(payload) else payload
            self._journal(run.spec.run_id, kind, body)
        return commit

    def _journal(self, run_id: str, kind: str, payload: Mapping[str, Any]) -> None:
        if self.store is not None:
            self._last_command[run_id] = self.store.append(run_id, kind, payload)

    def _after(self, run: Run) -> None:
        """Hand emissions to sinks, persist new checkpoints, write an image when due."""
        emissions = run.state.drain()
        if emissions:
            for sink in self.sinks:
                sink.emit(emissions)
        if self.store is None:
            return
        for checkpoint_id, snapshot in run.checkpoints.items():
            if (run.spec.run_id, checkpoint_id) not in self._stored:
                self.store.put_blob(run.spec.run_id, "checkpoint", checkpoint_id, snapshot)
                self._stored.add((run.spec.run_id, checkpoint_id))
        if run.events_since_image >= self.image_every_events:
            self.write_image(run)

    def write_image(self, run: Run) -> None:
        """Compact: one image replaces the run's journal so far (caller holds the lock)."""
        if self.store is None or run.spec.run_id not in self._last_command:
            return
        started = time.perf_counter()
        self.store.write_image(run.spec.run_id, self._last_command[run.spec.run_id], run.image())
        run.events_since_image = 0
        self.image_writes += 1
        self.image_seconds += time.perf_counter() - started

    # ------------------------------------------------------------ snapshots

    def checkpoint(self, run_id: str, checkpoint_id: str) -> dict[str, Any]:
        """The checkpoint's snapshot; CheckpointPending names the missing ranks."""
        run = self.get(run_id)
        with run.lock:
            found = run.checkpoints.get(checkpoint_id)
            if found is None and self.store is not None:
                found = self.store.get_blob(run_id, "checkpoint", checkpoint_id)
            if found is None:
                found = run.checkpoint(checkpoint_id)
        return found

    def snapshot(self, run_id: str) -> dict[str, Any]:
        """A snapshot cut at every rank's current position."""
        run = self.get(run_id)
        with run.lock:
            return run.snapshot()

    # ------------------------------------------------------------ recovery

    def recover(self, stored_runs: Any) -> int:
        """Rebuild runs from the store (image + replay of later commands); returns the count."""
        count = 0
        for stored in stored_runs:
            run = self._recover_image(stored) if stored.image is not None else None
            for command_id, kind, payload in stored.commands:
                run = self._replay(run, kind, payload)
                self._last_command[stored.run_id] = command_id
            if run is None:
                continue
            # replayed emissions were handed to sinks before the restart; finished runs stay closed
            run.state.drain()
            if not run.state.finished:
                self._open_sinks(run)
            count += 1
        return count

    def _recover_image(self, stored: Any) -> Run:
        image = stored.image
        spec = parse_spec(image["spec"])
        base = None if image["generation"] is None else self._blob(spec.run_id, "base", image["generation"])
        checkpoints = {c: b for c in image["checkpoint_ids"] if (b := self._blob(spec.run_id, "checkpoint", c))}
        run = self._runs[spec.run_id] = Run.from_image(spec, image, base, checkpoints)
        run.state.book.max_points = self.history_max_points
        return run

    def _blob(self, run_id: str, kind: str, key: str) -> dict[str, Any] | None:
        blob = None if self.store is None else self.store.get_blob(run_id, kind, key)
        if blob is not None and kind == "checkpoint":
            self._stored.add((run_id, key))
        return blob

    def _replay(self, run: Run | None, kind: str, payload: Mapping[str, Any]) -> Run | None:
        if kind == "create":
            return self._add(parse_spec(payload["spec"]), open_sinks=False)
        assert run is not None, f"journal: {kind} before create"
        if kind == "session":
            run.open_session(int(payload["rank"]), str(payload["session"]))
        elif kind == "events":
            if "body" in payload:
                events = decode_events(unpack_body(payload["body"], payload["content_type"])["events"])
            else:
                events = [decode_event(e) for e in payload["events"]]
            run.deliver(str(payload["session"]), int(payload["seq"]), events)
        elif kind == "restore":
            run.restore(str(payload["session"]), payload["snapshot"])
        elif kind == "finish":
            run.finish()
        return run

    # ------------------------------------------------------------ reads

    def telemetry_figures(self) -> dict[str, Any]:
        """Totals for the service's own metrics (read at scrape time)."""
        runs: dict[str, int] = {"active": 0, "finished": 0}
        counters: dict[str, int] = {}
        held = 0
        sinks: dict[tuple[str, str], float] = {}
        for run_id in self.run_ids():
            run = self._runs.get(run_id)
            if run is None:
                continue
            with run.lock:
                runs["finished" if run.state.finished else "active"] += 1
                for key, value in run.counters.items():
                    counters[key] = counters.get(key, 0) + value
                held += len(run.state.cuts.held)
            for sink in self.sinks:
                for figure, value in sink.status(run_id).items():
                    if isinstance(value, int | float) and not isinstance(value, bool):
                        sinks[(sink.name, figure)] = sinks.get((sink.name, figure), 0) + value
        return {"runs": runs, "counters": counters, "held": held, "sinks": sinks,
                "images": {"writes": self.image_writes, "seconds": self.image_seconds}}

    def metrics(self, run_id: str) -> dict[str, Any]:
        """Latest value of every key."""
        run = self.get(run_id)
        with run.lock:
            latest = dict(run.state.book.latest)
            step = run.state.watermark
        return {"run_id": run_id, "step": step,
                "metrics": {k: {"value": v, "step": s} for k, (v, s) in sorted(latest.items())}}

    def history(self, run_id: str, keys: Sequence[str] | None, since_step: int | None,
                max_points: int | None) -> dict[str, Any]:
        """Series of the requested keys (all when ``keys`` is None)."""
        run = self.get(run_id)
        with run.lock:
            book = run.state.book.history
            wanted = sorted(book) if keys is None else [k for k in keys if k in book]
            copied = {k: (list(book[k][0]), list(book[k][1])) for k in wanted}
        return {"run_id": run_id, "series": {k: _series(s, v, since_step, max_points) for k, (s, v) in copied.items()}}

    def summary(self, run_id: str) -> dict[str, Any]:
        """Best values so far (final ones once finished)."""
        run = self.get(run_id)
        with run.lock:
            return {"run_id": run_id, "finished": run.state.finished, "summary": run.state.book.best_values()}


def _journal_events(session_id: str, seq: int, events: Sequence[Event],
                    body: tuple[bytes, str] | None) -> dict[str, Any]:
    if body is not None:
        return {"session": session_id, "seq": seq, "body": body[0], "content_type": body[1]}
    return {"session": session_id, "seq": seq, "events": [encode_event(e, binary=True) for e in events]}


def _short_info(run: Run) -> dict[str, Any]:
    return {"run_id": run.spec.run_id, "status": "finished" if run.state.finished else "active",
            "watermark": run.state.watermark, "world_size": run.spec.world_size}


def _rank_info(run: Run) -> list[dict[str, Any]]:
    live = run.sessions.live()
    return [{"rank": i, "completed": r.completed, "last_step": r.last_step,
             "session": live[i].id if i in live else None, "next_seq": live[i].next_seq if i in live else 0}
            for i, r in enumerate(run.state.ranks)]


def _series(steps: list[int], values: list[float], since_step: int | None,
            max_points: int | None) -> dict[str, list[Any]]:
    if since_step is not None:
        keep = [i for i, s in enumerate(steps) if s >= since_step]
        steps, values = [steps[i] for i in keep], [values[i] for i in keep]
    if max_points is not None and len(steps) > max_points:
        stride = -(-len(steps) // max_points)
        picks = sorted(range(len(steps) - 1, -1, -stride))[-max_points:]
        steps, values = [steps[i] for i in picks], [values[i] for i in picks]
    return {"steps": steps, "values": values}
