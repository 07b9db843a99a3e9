"""RunRegistry: every run of the service, one lock per run.

Each mutation follows the same order: check (no change) → journal (durable) → apply →
hand emissions to sinks. The journal is optional (``None`` keeps state in memory only);
sinks' ``emit`` only queues, so calling it under the run lock keeps emissions in order
without doing I/O there. Reads copy under the lock and format outside it.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from client._wire import BatchEvent, Event
from service.core.emission import Sink
from service.core.errors import InvalidInput, LimitExceeded, RunConflict, UnknownRun
from service.core.run import RunState
from service.core.sessions import SessionTable
from service.core.spec import RunSpec, check_run_id, parse_spec


class Journal(Protocol):
    """Where accepted commands become durable before they are applied."""

    def append(self, run_id: str, command: str, payload: Mapping[str, Any]) -> None:
        """Make one command durable (raises on failure; then nothing is applied)."""


@dataclass
class Run:
    """A run and its lock."""

    spec: RunSpec
    state: RunState
    sessions: SessionTable = field(default_factory=SessionTable)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counters: dict[str, int] = field(default_factory=lambda: {"events": 0, "deliveries": 0, "duplicates": 0, "samples": 0})


class RunRegistry:
    """All runs of one service process."""

    def __init__(self, sinks: Sequence[Sink] = (), journal: Journal | None = None, max_runs: int = 1000,
                 history_max_points: int = 10_000, new_id: Callable[[], str] = lambda: uuid.uuid4().hex) -> None:
        self.sinks = list(sinks)
        self.journal = journal
        self.max_runs = max_runs
        self.history_max_points = history_max_points
        self._new_id = new_id
        self._runs: dict[str, Run] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------ runs

    def create_run(self, raw: Mapping[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create a run, or return the existing one with the same spec.

        Returns:
            The run's info and whether it was created now.

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
            self._runs[spec.run_id] = self._new_run(spec)
        for sink in self.sinks:
            sink.open_run(spec.run_id, spec.to_dict())
        return self.info(spec.run_id), True

    def _new_run(self, spec: RunSpec) -> Run:
        state = RunState(spec)
        state.book.max_points = self.history_max_points
        return Run(spec, state)

    def get(self, run_id: str) -> Run:
        """The run ``run_id``; raises UnknownRun."""
        check_run_id(run_id)
        run = self._runs.get(run_id)
        if run is None:
            raise UnknownRun(f"run: no run {run_id!r}")
        return run

    def list_runs(self) -> list[dict[str, Any]]:
        """Short info of every run."""
        with self._lock:
            ids = sorted(self._runs)
        return [self._short_info(self.get(r)) for r in ids if r in self._runs]

    def delete_run(self, run_id: str) -> None:
        """Remove a run and its data."""
        with self._lock:
            run = self.get(run_id)
            with run.lock:
                self._journal(run_id, "delete", {})
                del self._runs[run_id]
        for sink in self.sinks:
            sink.delete_run(run_id)

    def info(self, run_id: str) -> dict[str, Any]:
        """A run's spec, status, per-rank watermarks, counters and sink status."""
        run = self.get(run_id)
        with run.lock:
            info = self._short_info(run)
            info.update(run.spec.to_dict())
            info["schedule"] = dict(run.state.schedule.intervals)
            info["ranks"] = self._rank_info(run)
            info["counters"] = dict(run.counters)
        info["sinks"] = {s.name: s.status(run_id) for s in self.sinks}
        return info

    def _short_info(self, run: Run) -> dict[str, Any]:
        return {"run_id": run.spec.run_id, "status": "finished" if run.state.finished else "active",
                "watermark": run.state.watermark, "world_size": run.spec.world_size}

    def _rank_info(self, run: Run) -> list[dict[str, Any]]:
        live = run.sessions.live()
        return [{"rank": i, "completed": r.completed, "last_step": r.last_step,
                 "session": live[i].id if i in live else None, "next_seq": live[i].next_seq if i in live else 0}
                for i, r in enumerate(run.state.ranks)]

    # ------------------------------------------------------------ sessions and events

    def open_session(self, run_id: str, rank: int) -> dict[str, Any]:
        """Open a session for ``rank``, fencing older ones; returns ``{session, rank, next_seq}``."""
        run = self.get(run_id)
        _check_rank(run, rank)
        session_id = self._new_id()
        with run.lock:
            self._journal(run_id, "session", {"rank": rank, "session": session_id})
            run.sessions.open(rank, session_id)
        return {"session": session_id, "rank": rank, "next_seq": 0}

    def ingest(self, run_id: str, session_id: str, seq: int, events: Sequence[Event]) -> dict[str, int]:
        """Apply a delivery exactly once; returns ``{"acked_seq": n, "applied": k}``."""
        run = self.get(run_id)
        with run.lock:
            session = run.sessions.get(session_id)
            offset = run.sessions.fresh_offset(session, seq, len(events))
            fresh = events[offset:]
            if fresh:
                run.state.check(session.rank, fresh)
                self._journal(run_id, "events", {"session": session_id, "seq": seq + offset, "count": len(fresh)})
                run.state.apply(session.rank, fresh)
                session.next_seq += len(fresh)
                run.counters["events"] += len(fresh)
                run.counters["samples"] += sum(e.batch_size for e in fresh if isinstance(e, BatchEvent))
                self._emit(run)
            run.counters["deliveries"] += 1
            run.counters["duplicates"] += offset
            return {"acked_seq": session.next_seq, "applied": len(fresh)}

    def finish(self, run_id: str) -> dict[str, float]:
        """Close windows and epochs, write the final summary; returns it."""
        run = self.get(run_id)
        with run.lock:
            if not run.state.finished:
                self._journal(run_id, "finish", {})
                run.state.finish()
                self._emit(run)
            return run.state.book.best_values()

    def finish_sinks(self, run_id: str, summary: Mapping[str, float], timeout_s: float) -> dict[str, str]:
        """Finish the run in every sink (bounded); returns how each ended."""
        return {sink.name: sink.finish_run(run_id, summary, timeout_s) for sink in self.sinks}

    def _emit(self, run: Run) -> None:
        emissions = run.state.drain()
        if emissions:
            for sink in self.sinks:
                sink.emit(emissions)

    def _journal(self, run_id: str, command: str, payload: Mapping[str, Any]) -> None:
        if self.journal is not None:
            self.journal.append(run_id, command, payload)

    # ------------------------------------------------------------ reads

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


def _check_rank(run: Run, rank: int) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < run.spec.world_size:
        raise InvalidInput(f"rank: expected an integer in [0, {run.spec.world_size}), got {rank!r}")


def _series(steps: list[int], values: list[float], since_step: int | None, max_points: int | None) -> dict[str, list[Any]]:
    if since_step is not None:
        keep = [i for i, s in enumerate(steps) if s >= since_step]
        steps, values = [steps[i] for i in keep], [values[i] for i in keep]
    if max_points is not None and len(steps) > max_points:
        stride = -(-len(steps) // max_points)
        last = len(steps) - 1
        picks = sorted({*range(last, -1, -stride)})[-max_points:]
        steps, values = [steps[i] for i in picks], [values[i] for i in picks]
    return {"steps": steps, "values": values}
